"""What a sweep leaves behind when it dies, made whole: trials of a dead sweeper (found at
the next start) and this sweeper's own work in flight when SIGINT/SIGTERM arrives."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from kdsweep.core.errors import interrupt_name
from kdsweep.sweep.baseline import BASELINE_CLAIM
from kdsweep.sweep.liveness import OWNER_ATTR, owner_tag, release_study_task, stale_trials
from kdsweep.sweep.parent_run import ParentRun, close_role_runs, close_trial_run
from kdsweep.sweep.studies import count_states, trial_id

if TYPE_CHECKING:
    from kdsweep.sweep.jobs import Sweep

log = logging.getLogger("kdsweep.sweep")


def fail_stale(sweep: Sweep, study: optuna.Study) -> None:
    """Trials whose sweeper died (its pid gone, or its heartbeat silent for grace_period)
    become FAIL and their MLflow runs are closed: a rerun runs them again."""
    with sweep.lock():
        for trial in stale_trials(study, sweep.settings.grace_period):
            log.warning(
                "trial %d was interrupted (its sweeper died): marking it FAIL", trial.number
            )
            tid = trial_id(sweep.storage, sweep.study_id, trial.number)
            sweep.storage.set_trial_user_attr(tid, "error", "interrupted")
            # Not study.tell: this sweeper's sampler never sampled the dead trial.
            sweep.storage.set_trial_state_values(tid, TrialState.FAIL)
            close_trial_run(
                sweep.config,
                trial.user_attrs.get("mlflow_run_id"),
                "FAIL",
                "interrupted: the sweep process died during this trial",
            )


def clean_up_interrupted(
    sweep: Sweep, study: optuna.Study, parent: ParentRun, exc: BaseException
) -> None:
    """SIGINT/SIGTERM: this process's trials in flight become FAIL (a rerun runs them
    again), their MLflow runs and the baseline's end KILLED, the baseline claim is
    freed, and the parent run ends KILLED unless other workers still run trials."""
    reason = f"interrupted by {interrupt_name(exc)}"
    me = owner_tag()
    with contextlib.suppress(Exception), sweep.lock():
        for current in (study, sweep.confirm_study):
            if current is None:
                continue
            current_id = sweep.storage.get_study_id_from_name(current.study_name)
            for trial in current.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.system_attrs.get(OWNER_ATTR) != me:
                    continue
                tid = trial_id(sweep.storage, current_id, trial.number)
                sweep.storage.set_trial_user_attr(tid, "error", reason)
                sweep.storage.set_trial_state_values(tid, TrialState.FAIL)
                close_trial_run(
                    sweep.config, trial.user_attrs.get("mlflow_run_id"), "FAIL", reason, "KILLED"
                )
        claim = study.user_attrs.get(BASELINE_CLAIM)
        if isinstance(claim, dict) and claim.get("owner") == me:
            release_study_task(sweep.storage, sweep.study_id, BASELINE_CLAIM)
            close_role_runs(sweep.config, parent.run_id, "baseline", reason, "KILLED")
        if not count_states(study)[TrialState.RUNNING]:
            parent.end("KILLED")
