"""Which process owns a trial (or a once-per-study task) and whether it is still alive:
ownership stamps, the heartbeat thread that renews them while jobs run, and the stale
trials a dead sweeper left RUNNING, which a rerun fails and runs again."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

HEARTBEAT_ATTR = "kdsweep:heartbeat"
OWNER_ATTR = "kdsweep:owner"


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
