"""Optuna studies as kdsweep keeps them, shared by the sweeper and the jobs it launches:
opening a storage, the pruner, the cross-process study lock and trial ids. Whether the
sweeper running a trial is still alive: kdsweep.sweep.liveness.

Storage URLs: any SQLAlchemy URL Optuna's RDB storage takes (``sqlite:///optuna.db``,
``postgresql://user@host/db``), or ``journal:PATH`` for Optuna's journal file storage.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdsweep.config.targets import Target
from kdsweep.core.errors import KdsweepError, first_line
from kdsweep.core.files import file_lock
from kdsweep.core.stores import (
    CONNECT_TIMEOUT_S,
    JOURNAL_PREFIX,
    WHOSE,
    advisory_lock,
    attempt,
    creation_lock,
    existing_store_kind,
    journal_file,
    storage_file,
)

log = logging.getLogger(__name__)

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: The error of a queued trial that the current settings no longer plan.
NOT_PLANNED = "not in the current plan: not run"


def open_storage(
    url: str, heartbeat: Mapping[str, Any] | None = None, read_only: bool = False
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; one line naming the fix if it cannot be opened.
    ``heartbeat``: RDBStorage's heartbeat options, for the sweeper (the journal storage has
    no heartbeat in Optuna: kdsweep.sweep.liveness). ``read_only``: an existing storage
    that a reader (kdsweep-report) opens without writing, a read-only file included."""
    storage, error = attempt(lambda: _open_storage(url, heartbeat, read_only))
    if storage is None:
        raise _cannot_open(url, error) from error
    return storage


def _open_storage(
    url: str, heartbeat: Mapping[str, Any] | None, read_only: bool
) -> optuna.storages.BaseStorage:
    journal = journal_file(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Parallel trials write to one file: wait for the lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
            "pool_pre_ping": True,
        }
    path = storage_file(url)
    if read_only and path is not None:
        # SQLite's own read-only mode: no journal, no lock file, a read-only file works.
        url = f"sqlite:///file:{path.absolute()}?mode=ro&uri=true"
    # N workers started together on a new database race to create Optuna's tables, and
    # the losers fail (duplicate key, table already exists): create them one at a time.
    # A reader creates nothing, and takes no lock.
    lock = contextlib.nullcontext() if read_only else creation_lock(url)
    with lock, warnings.catch_warnings():
        # Optuna marks heartbeat_interval experimental; it is the sweeper's liveness.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **(heartbeat or {}))


def _cannot_open(url: str, error: Exception) -> KdsweepError:
    return KdsweepError(
        f"cannot open the Optuna storage {url}"
        f" ({first_line(error)}):"
        " check hydra.sweeper.storage (e.g. sqlite:///optuna.db, journal:optuna.journal.log,"
        " postgresql://user@host/db)"
    )


def check_storage_kind(url: str, tracking_uri: str | None) -> None:
    """Before anything is written, read-only: ``url`` must hold an Optuna storage or be
    new, never MLflow's database (Optuna would add its tables there) nor the store
    ``tracking_uri`` names (crossed stores: each program's tables in the other's)."""
    path, tracked = storage_file(url), storage_file(tracking_uri) if tracking_uri else None
    same_file = path is not None and tracked is not None and path.resolve() == tracked.resolve()
    if same_file or url == tracking_uri:
        raise KdsweepError(
            f"hydra.sweeper.storage={url} is the store tracking.uri names:"
            " give the study its own database (e.g. sqlite:///optuna.db)"
        )
    kind, error = attempt(lambda: existing_store_kind(url))
    if error is not None:  # sqlite3's or a driver's own error types
        raise _cannot_open(url, error) from error
    # A server's database may hold other programs' tables beside Optuna's; a file may not.
    if kind == "mlflow" or (kind == "other" and path is not None):
        raise KdsweepError(
            f"hydra.sweeper.storage={url} is {WHOSE[kind]}, not an Optuna storage:"
            " give the study its own database (e.g. sqlite:///optuna.db)"
        )


def shared_storage(
    url: str, heartbeat: Mapping[str, Any] | None = None
) -> optuna.storages.BaseStorage:
    """One storage object per URL in a process: the sweeper's, and every job's that runs
    in the sweeper's process (the basic launcher). Opening one costs ~60 ms (an engine and
    Optuna's schema check), once per trial and confirmation run otherwise. A storage file
    deleted and made again is another file (inode): it gets a storage of its own, never
    the pooled connections of the old one. The sweeper opens its own (``heartbeat``), which
    its jobs then share."""
    identity = _file_identity(url)
    missing_file = identity is None and storage_file(url) is not None
    if heartbeat is not None or missing_file or (url, identity) not in _SHARED:
        storage = open_storage(url, heartbeat)  # creates a missing file: key it by that file
        if len(_SHARED) >= 8:
            _SHARED.clear()
        _SHARED[(url, _file_identity(url))] = storage
        return storage
    return _SHARED[(url, identity)]


_SHARED: dict[tuple[str, int | None], optuna.storages.BaseStorage] = {}


def _file_identity(url: str) -> int | None:
    path = storage_file(url)
    try:
        return path.stat().st_ino if path is not None else None
    except OSError:
        return None


def build_pruner(
    node: Mapping[str, Any] | None, allowed: tuple[str, ...] = ()
) -> optuna.pruners.BasePruner:
    """The sweeper's ``pruner`` node (a ``_target_``: hydra/sweeper/pruner=median, or the
    user's own); none -> NopPruner."""
    if not node:
        return optuna.pruners.NopPruner()
    # Target names the key in a refusal (allow-list, import) and its fix.
    target = Target("hydra.sweeper.pruner", dict(node), allowed)
    with warnings.catch_warnings():
        # Optuna's notice that a pruner is experimental (PatientPruner, WilcoxonPruner)
        # would print at start-up and in every job: the user chose it by name.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        pruner = target.build()
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise KdsweepError(
            f"hydra.sweeper.pruner._target_={node.get('_target_')} built a"
            f" {type(pruner).__name__}, not an Optuna pruner: name a subclass of"
            " optuna.pruners.BasePruner"
        )
    return pruner


def _lock_file_for(url: str) -> Path | None:
    path = storage_file(url)
    if path is None:
        return None
    if url.startswith(JOURNAL_PREFIX):
        # Not PATH.lock: that is the symlink lock Optuna's journal backend takes on every
        # write; a file of ours there stalls it 30 s, then it deletes ours as stale.
        return path.with_name(path.name + ".kdsweep-lock")
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, url: str, study_name: str) -> Iterator[None]:
    """Serialize "count the trials, then ask for more" across sweep workers, so that N
    workers together create exactly n_trials. A file lock beside SQLite/journal files; a
    PostgreSQL advisory lock for a server; no lock (with a warning) elsewhere. What runs
    under it writes to the storage; a signal is raised at the next check
    (core.signals.check_interrupt), never inside a write."""
    lock_file = _lock_file_for(url)
    if lock_file is not None:
        with file_lock(lock_file):
            yield
        return
    if url.startswith("postgresql") and isinstance(storage, optuna.storages.RDBStorage):
        with advisory_lock(storage.engine, zlib.crc32(f"kdsweep:{study_name}".encode())):
            yield
        return
    yield


def trial_id(storage: optuna.storages.BaseStorage, study_id: int, number: int) -> int:
    """The storage's id of the study's trial ``number``: the key every storage method takes
    and the job's way back to its trial. Asked of the storage (public API) because Optuna
    keeps it private (``_trial_id``) on Trial and FrozenTrial (optuna 5.0)."""
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def fail_trial(storage: optuna.storages.BaseStorage, tid: int, reason: str) -> bool:
    """Fail a trial with ``reason`` as its error: a queued one the current settings no
    longer plan (a rerun runs exactly what its settings plan), one whose sweeper died or
    was interrupted (a rerun runs it again). False if it had finished meanwhile."""
    storage.set_trial_user_attr(tid, "error", reason)
    return storage.set_trial_state_values(tid, TrialState.FAIL)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts
