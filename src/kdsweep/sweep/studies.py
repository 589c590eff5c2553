"""Optuna studies as kdsweep keeps them, shared by the sweeper and the jobs it launches:
opening a storage, the pruner, a cross-process study lock, trial ids, heartbeats and
stale trials.

Storage URLs: any SQLAlchemy URL Optuna's RDB storage takes (``sqlite:///optuna.db``,
``postgresql://user@host/db``), or ``journal:PATH`` for Optuna's journal file storage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdsweep.errors import KdsweepError, first_line
from kdsweep.files import file_lock
from kdsweep.secrets import mask_secrets
from kdsweep.signals import deferred_signals

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:"
HEARTBEAT_ATTR = "kdsweep:heartbeat"
OWNER_ATTR = "kdsweep:owner"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; one line naming the fix if it cannot be opened."""
    try:
        journal = _journal_file(url)
        if journal is not None:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            journal.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(journal)))
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Parallel trials write to one file: wait for the lock instead of failing.
            engine_kwargs = {"connect_args": {"timeout": 60}}
        elif url.startswith("postgresql"):
            engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
        # N workers started together on a new database race to create Optuna's tables, and
        # the losers fail (duplicate key, table already exists): create them one at a time.
        with _creation_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        raise KdsweepError(
            f"cannot open the Optuna storage {mask_secrets(url)}"
            f" ({mask_secrets(first_line(exc))[:200]}):"
            " check hydra.sweeper.storage (e.g. sqlite:///optuna.db, journal:optuna.journal.log,"
            " postgresql://user@host/db)"
        ) from None


def shared_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage object per URL in a process: the sweeper's, and every job's that runs
    in the sweeper's process (the basic launcher). Opening one costs ~60 ms (an engine and
    Optuna's schema check), once per trial and confirmation run otherwise. A storage file
    deleted and made again is another file (inode): it gets a storage of its own, never
    the pooled connections of the old one."""
    identity = _file_identity(url)
    missing_file = identity is None and storage_file(url) is not None
    if missing_file or (url, identity) not in _SHARED:
        storage = open_storage(url)  # creates a missing file: key it by that file
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


def build_pruner(conf: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """From the sweeper's ``pruner`` node (name + options); none -> NopPruner."""
    if conf is None:
        return optuna.pruners.NopPruner()
    name = conf.get("name", "none")
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=conf.get("n_startup_trials", 5),
            n_warmup_steps=conf.get("n_warmup_steps", 1),
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=conf.get("min_resource", 1),
            reduction_factor=conf.get("reduction_factor", 3),
        )
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=conf.get("min_resource", 1),
            reduction_factor=conf.get("reduction_factor", 3),
        )
    raise KdsweepError(
        f"hydra.sweeper.pruner.name={name!r} is unknown: use none, median, hyperband"
        " or successive_halving"
    )


def _journal_file(url: str) -> Path | None:
    return Path(url[len(JOURNAL_PREFIX) :]).expanduser() if url.startswith(JOURNAL_PREFIX) else None


def storage_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///PATH`` or ``journal:PATH`` storage URL; None for a
    server, an in-memory database or a URL that names no file."""
    journal = _journal_file(url)
    if journal is not None:
        return journal
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        return None
    return Path(database) if database and database != ":memory:" else None


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
def _creation_lock(url: str) -> Iterator[None]:
    """Held while RDBStorage creates (or checks) its tables. Not the study lock: a
    process may open a storage while it holds that one (flock would deadlock)."""
    lock_file = _lock_file_for(url)
    if lock_file is not None:
        with file_lock(lock_file.with_name(lock_file.name + ".init")):
            yield
        return
    if url.startswith("postgresql"):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": 10}
        )
        key = zlib.crc32(b"kdsweep:create-tables")
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    yield


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, url: str, study_name: str) -> Iterator[None]:
    """Serialize "count the trials, then ask for more" across sweep workers, so that N
    workers together create exactly n_trials. A file lock beside SQLite/journal files; a
    PostgreSQL advisory lock for a server; no lock (with a warning) elsewhere. What runs
    under it writes to the storage, so SIGINT / SIGTERM wait until it is released."""
    with deferred_signals():
        yield from _held_lock(storage, url, study_name)


def _held_lock(storage: optuna.storages.BaseStorage, url: str, study_name: str) -> Iterator[None]:
    lock_file = _lock_file_for(url)
    if lock_file is not None:
        with file_lock(lock_file):
            yield
        return
    if url.startswith("postgresql") and isinstance(storage, optuna.storages.RDBStorage):
        from sqlalchemy import text

        key = zlib.crc32(f"kdsweep:{study_name}".encode())
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    yield


def trial_id(storage: optuna.storages.BaseStorage, study_id: int, number: int) -> int:
    """The storage's id of the study's trial ``number``: the key every storage method takes
    and the job's way back to its trial. Asked of the storage (public API) because Optuna
    keeps it private (``_trial_id``) on Trial and FrozenTrial (optuna 5.0)."""
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def owner_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_trial(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Mark a new trial as this process's, alive now (see stale_trials)."""
    storage.set_trial_system_attr(trial_id, OWNER_ATTR, owner_tag())
    storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


def _owner_is_dead(owner: str | None) -> bool:
    """True if the owner ran on this host and its process is gone."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _claim_is_live(claim: Any, grace_seconds: float) -> bool:
    """A study task's claim ({"owner", "beat"}) whose claimer is alive."""
    if not isinstance(claim, dict):
        return False
    beat = claim.get("beat")
    if _owner_is_dead(claim.get("owner")):
        return False
    return isinstance(beat, (int, float)) and time.time() - float(beat) <= grace_seconds


def claim_study_task(
    storage: optuna.storages.BaseStorage, study_id: int, key: str, grace_seconds: float
) -> bool:
    """Claim a once-per-study task (the CE baseline) for this process, under the study
    lock: True if it was free or its claimer died (its process is gone, or its heartbeat
    is older than ``grace_seconds``). A Heartbeat given ``tasks=[(study_id, key)]`` keeps
    the claim alive; release_study_task frees it."""
    claim = storage.get_study_user_attrs(study_id).get(key)
    if _claim_is_live(claim, grace_seconds):
        return False
    storage.set_study_user_attr(study_id, key, {"owner": owner_tag(), "beat": time.time()})
    return True


def release_study_task(storage: optuna.storages.BaseStorage, study_id: int, key: str) -> None:
    storage.set_study_user_attr(study_id, key, None)


class Heartbeat:
    """Stamps the in-flight trials (and claimed study tasks) every ``interval`` seconds
    while their jobs run."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        trial_ids: list[int],
        interval: float,
        tasks: list[tuple[int, str]] | None = None,
    ):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.tasks = list(tasks or [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.trial_ids:
                # A trial that just finished, or a storage hiccup: the next beat retries.
                with contextlib.suppress(Exception):
                    self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            for study_id, key in self.tasks:
                claim = {"owner": owner_tag(), "beat": time.time()}
                with contextlib.suppress(Exception):
                    self.storage.set_study_user_attr(study_id, key, claim)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stale_trials(study: optuna.Study, grace_seconds: float) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose sweeper died: its process is gone (same host), or its
    heartbeat is older than ``grace_seconds`` (any host)."""
    now = time.time()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        if beat is None and trial.datetime_start is not None:
            # Killed between ask() and its first stamp: its start is its last sign of life.
            beat = trial.datetime_start.timestamp()
        owner = trial.system_attrs.get(OWNER_ATTR)
        if _owner_is_dead(owner) or (beat is not None and now - float(beat) > grace_seconds):
            stale.append(trial)
    return stale


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts
