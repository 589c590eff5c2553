"""What a sweep leaves behind when it dies, made whole: trials of a dead sweeper (found at
the next start) and this sweeper's own work in flight when SIGINT/SIGTERM arrives."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from kdsweep.core.errors import interrupt_name
from kdsweep.sweep.liveness import fail_dead_trials
from kdsweep.sweep.parent_run import ParentRun, close_trial_run
from kdsweep.sweep.studies import count_states, fail_trial

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from optuna.storages import BaseStorage

    from kdsweep.sweep.jobs import Lock

log = logging.getLogger("kdsweep.sweep")

#: role -> (what the console says, with the trial's number; what its MLflow run is told).
INTERRUPTED = {
    "trial": (
        "trial %d was interrupted (its sweeper died): marking it FAIL",
        "interrupted: the sweep process died during this trial",
    ),
    "baseline": (
        "baseline: the previous attempt (trial %d) was interrupted; training it again",
        "interrupted: the sweep process died during the baseline",
    ),
    "confirm": (
        "confirmation run %d was interrupted: it will run again",
        "interrupted: the sweep process died during this confirmation run",
    ),
}


def recover(
    storage: BaseStorage, lock: Lock, config: DictConfig, study: optuna.Study, retry: bool = False
) -> list[FrozenTrial]:
    """Trials whose sweeper died (kdsweep.sweep.liveness) become FAIL and their MLflow
    runs (tracked as ``config`` says) are closed: a rerun runs them again. With ``retry``
    (a worker of the command died mid-sweep), each search trial is queued again at once
    with the same parameters, under the same lock, for the next worker that asks (Optuna's
    RetryHeartbeatStaleTrialCallback, once per trial); the failed trials are returned."""
    with warnings.catch_warnings():  # Optuna marks it experimental; it is the retry we want
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        again = RetryHeartbeatStaleTrialCallback(max_retry=1)
    with lock():
        failed = fail_dead_trials(storage, study)
        for trial in failed:
            role = trial.user_attrs.get("role", "trial")
            said, reason = INTERRUPTED[role]
            log.warning(said, trial.number)
            close_trial_run(config, trial.user_attrs.get("mlflow_run_id"), "FAIL", reason)
            if retry and role == "trial":
                again(study, trial)
    return failed


def clean_up_interrupted(
    storage: BaseStorage,
    lock: Lock,
    config: DictConfig,
    in_flight: Iterable[int],
    study: optuna.Study,
    parent: ParentRun,
    exc: BaseException,
) -> None:
    """SIGINT/SIGTERM: this sweeper's trials in flight (search, baseline, confirmation)
    become FAIL (a rerun runs them again), their MLflow runs end KILLED, and the parent
    run ends KILLED unless other workers still run trials."""
    reason = f"interrupted by {interrupt_name(exc)}"
    with contextlib.suppress(Exception), lock():
        for tid in in_flight:
            trial = storage.get_trial(tid)
            if trial.state != TrialState.RUNNING:
                continue
            fail_trial(storage, tid, reason)
            close_trial_run(config, trial.user_attrs.get("mlflow_run_id"), "FAIL", reason, "KILLED")
        if not count_states(study)[TrialState.RUNNING]:
            parent.end("KILLED")
