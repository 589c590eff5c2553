"""Whether the sweeper running a trial is still alive, from Optuna's own heartbeat.

On an RDB storage (SQLite, PostgreSQL) the sweeper beats for its trials in flight
(``RDBStorage.record_heartbeat``), and ``optuna.storages.fail_stale_trials`` fails a
RUNNING trial silent for ``grace_period``, on any host. What Optuna does not cover: a
sweeper killed on this host is known dead at once by its pid, so a rerun right after a
SIGKILL need not wait grace_period; and the journal storage, which has no heartbeat in
Optuna, where the pid is the only sign. The sweeper is the trial's public user attribute
``worker`` (host:pid).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from kdsweep.sweep.studies import fail_trial, trial_id

WORKER_ATTR = "worker"


def worker_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat_options(interval: float, grace_period: float) -> dict[str, object]:
    """RDBStorage's heartbeat arguments for the sweeper's storage."""
    return {
        "heartbeat_interval": interval,
        "grace_period": grace_period,
        "heartbeat_stale_trial_callback": StaleTrials(),
    }


def _beating(storage: BaseStorage) -> RDBStorage | None:
    """The storage, if Optuna's heartbeat is on for it (the sweeper's RDB storage)."""
    if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None:
        return storage
    return None


class StaleTrials:
    """Optuna's heartbeat_stale_trial_callback: the trials fail_stale_trials failed, kept
    for the sweeper to record why and close their MLflow runs."""

    def __init__(self) -> None:
        self.failed: list[FrozenTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failed.append(trial)


def claim_trial(storage: BaseStorage, tid: int, role: str) -> None:
    """Mark a trial this sweeper just took as its own (``role``: trial, baseline, confirm),
    alive now: its first beat, before the job starts."""
    storage.set_trial_user_attr(tid, "role", role)
    storage.set_trial_user_attr(tid, WORKER_ATTR, worker_tag())
    if rdb := _beating(storage):
        rdb.record_heartbeat(tid)


def ask(
    study: optuna.Study, fixed_distributions: dict[str, BaseDistribution] | None = None
) -> optuna.trial.Trial:
    """``study.ask``, without Optuna's warning that its heartbeat is meant for
    Study.optimize: here the sweeper is the optimize loop, and beats for what it asks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask(fixed_distributions)


class Heartbeat:
    """Beats for the in-flight trials every ``heartbeat_interval`` while their jobs run
    (nothing on a storage without Optuna's heartbeat)."""

    def __init__(self, storage: BaseStorage, trial_ids: list[int]) -> None:
        self.rdb, self.trial_ids = _beating(storage), trial_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        assert self.rdb is not None
        while not self._stop.wait(self.rdb.get_heartbeat_interval()):
            for tid in self.trial_ids:
                # A trial that just finished, or a storage hiccup: the next beat retries.
                with contextlib.suppress(Exception):
                    self.rdb.record_heartbeat(tid)

    def __enter__(self) -> Heartbeat:
        if self.rdb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.rdb is not None:
            self._stop.set()
            self._thread.join()


def fail_dead_trials(storage: BaseStorage, study: optuna.Study) -> list[FrozenTrial]:
    """The RUNNING trials whose sweeper died become FAIL; returned as they were. Called
    under the study lock. A dead process on this host is known at once, and its trials
    get the error "interrupted"; then Optuna fails those silent for grace_period (it
    fails them before its callback runs, so they carry no error attribute)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        # No worker: its sweeper died between asking for it and claiming it, both done
        # under the study lock that the caller holds.
        if worker is not None and not _worker_is_dead(worker):
            continue
        tid = trial_id(storage, study_id, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if fail_trial(storage, tid, "interrupted"):
                failed.append(trial)
    if rdb := _beating(storage):
        callback = rdb.get_heartbeat_stale_trial_callback()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if isinstance(callback, StaleTrials):
            failed += callback.failed
            callback.failed = []
    return failed


def _worker_is_dead(worker: str | None) -> bool:
    """True if the sweeper ran on this host and its process is gone."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
