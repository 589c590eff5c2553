"""Faults the sweeper must handle at every stage (issue 21): a signal during a long
stage of writes ends the sweep within seconds; a rerun runs exactly what its settings
plan; a storage that is MLflow's database, or the tracking store itself, is refused
before anything is written; impossible losses are refused at start-up."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from _helpers import (
    load_study,
    load_trials,
    mlflow_runs,
    run,
    start,
    sweep_args,
    teacher_cache_fixture,  # noqa: F401  (the teacher_cache fixture)
    wait_for,
)
from kdsweep.core.errors import Interrupted, KdsweepError
from kdsweep.sweep.arms import Arm
from kdsweep.sweep.confirm import open_companion, plan
from kdsweep.sweep.studies import check_storage_kind, open_storage

ARMS = [Arm(key, key, (f"loss.temperature={t}",)) for key, t in (("top1", 3), ("ablation", 4))]


@pytest.fixture
def kdsweep_signals(monkeypatch: pytest.MonkeyPatch):
    """kdsweep's SIGINT/SIGTERM handlers in this process, fresh; pytest's back after."""
    from kdsweep.core import signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(signals, "_state", signals._SignalState())
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    signals.install_signal_handlers()
    yield signals
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _companion(tmp_path: Path) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return storage, open_companion(storage, "s")


def test_a_signal_while_runs_are_queued_is_honoured_between_two_writes(
    tmp_path: Path, kdsweep_signals
) -> None:
    """Queueing a large plan under the study lock stops at the check between two writes
    once SIGTERM arrives, not when the whole loop is done."""
    storage, companion = _companion(tmp_path)
    seeds = list(range(5000))  # 10,000 runs: minutes of writes
    timer = threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    timer.start()
    with pytest.raises(Interrupted):
        plan(storage, companion, ARMS, seeds, 0)
    assert time.monotonic() - started < 5
    assert 0 < len(companion.get_trials(deepcopy=False)) < len(ARMS) * len(seeds)


def test_a_rerun_with_fewer_seeds_drops_the_leftover_queue(tmp_path: Path, caplog) -> None:
    """Interrupted with seeds=4, rerun with seeds=2: only the 2 x arms runs asked are queued;
    the others are failed with a reason, said in one line, and a later seeds=4 plans them
    again."""
    storage, companion = _companion(tmp_path)
    assert plan(storage, companion, ARMS, [1000, 1001, 1002, 1003], 0) == 8
    caplog.set_level(logging.INFO, logger="kdsweep")
    assert plan(storage, companion, ARMS, [1000, 1001], 0) == 4
    queued = companion.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert {(t.user_attrs["arm"], t.user_attrs["seed"]) for t in queued} == {
        (arm.key, seed) for arm in ARMS for seed in (1000, 1001)
    }
    dropped = companion.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert len(dropped) == 4
    assert {t.user_attrs["error"] for t in dropped} == {"not in the current plan: not run"}
    said = [r.getMessage() for r in caplog.records if "not in this one" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("confirmation: 4 queued run(s)")
    assert plan(storage, companion, ARMS, [1000, 1001, 1002, 1003], 0) == 8


def test_a_rerun_with_other_enqueued_trials_drops_the_old_ones(tmp_path: Path) -> None:
    """A reference trial queued by an earlier enqueue_trials, not in the current one, is
    failed with a reason, not run; the current one is queued."""

    from optuna.distributions import FloatDistribution

    from kdsweep.sweep.baseline import enqueue_reference
    from kdsweep.sweep.settings import SearchSpace

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    space = SearchSpace({"loss.temperature": FloatDistribution(1, 10)}, [])

    def enqueue(*enqueued: float) -> None:
        given = [{"loss.temperature": t} for t in enqueued]
        enqueue_reference(storage, contextlib.nullcontext, given, study, space)

    enqueue(2.0, 3.0)
    enqueue(3.0, 4.0)
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["enqueued_params"]["loss.temperature"] for t in queued) == [3, 4]
    (dropped,) = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert dropped.user_attrs["enqueued_params"] == {"loss.temperature": 2.0}
    assert dropped.user_attrs["error"] == "not in the current plan: not run"
    enqueue()  # none enqueued now: nothing queued runs
    assert study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) == []


def _mlflow_db(tmp_path: Path, empty_mlflow_db: Path) -> Path:
    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_mlflow_db, path)
    return path


def test_the_study_storage_must_not_be_mlflows_database(
    tmp_path: Path, empty_mlflow_db: Path
) -> None:
    mlflow_db = _mlflow_db(tmp_path, empty_mlflow_db)
    before = mlflow_db.read_bytes()
    with pytest.raises(KdsweepError, match="is an MLflow tracking database, not an Optuna"):
        check_storage_kind(f"sqlite:///{mlflow_db}", f"sqlite:///{tmp_path / 'other.db'}")
    # Crossed stores, even before either exists: each would write its tables in the other.
    with pytest.raises(KdsweepError, match="is the store tracking.uri names"):
        check_storage_kind(f"sqlite:///{tmp_path / 'new.db'}", f"sqlite:///{tmp_path / 'new.db'}")
    with pytest.raises(KdsweepError, match="is the store tracking.uri names"):
        check_storage_kind(f"journal:{mlflow_db}", f"sqlite:///{mlflow_db}")
    other = tmp_path / "other.db"  # another program's file: Optuna's tables would join it
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(KdsweepError, match="is another program's database"):
        check_storage_kind(f"sqlite:///{other}", None)
    assert mlflow_db.read_bytes() == before  # read-only
    assert not (tmp_path / "new.db").exists()
    # An Optuna storage, a new file, a journal, untracked: all fine.
    optuna_db = tmp_path / "optuna.db"
    optuna.create_study(storage=f"sqlite:///{optuna_db}")
    for url in (f"sqlite:///{optuna_db}", f"sqlite:///{tmp_path / 'x.db'}", "journal:j.log"):
        check_storage_kind(url, f"sqlite:///{mlflow_db}")
    check_storage_kind(f"sqlite:///{optuna_db}", None)


def test_a_loss_that_overflows_is_named_before_any_trial() -> None:
    from kdsweep.losses import DIST, KnowledgeDistillation, MultiMargin, dry_run

    def problem(loss: object) -> str:
        with pytest.raises(ValueError) as refused:
            dry_run(loss)
        return str(refused.value)

    dry_run(DIST())
    assert "tau=1e+200, ce_weight=1 overflows (OverflowError)" in problem(DIST(tau=1e200))
    assert "gives a loss of nan" in problem(KnowledgeDistillation(temperature=1e-38))
    assert "overflows (RuntimeError)" in problem(MultiMargin(margin=1e200))


def _confirming(workdir: Path, cache: Path, seeds: int) -> list[str]:
    return sweep_args(
        workdir,
        "faults",
        1,
        "hydra.sweeper.confirm.enabled=true",
        f"hydra.sweeper.confirm.seeds={seeds}",
        "hydra.sweeper.confirm.top_k=1",
        cache_dir=cache,
    )


@pytest.mark.slow
def test_sigterm_while_a_large_confirmation_is_queued_ends_the_sweep_in_seconds(
    tmp_path: Path, teacher_cache: Path
) -> None:
    """The largest plan allowed (4 arms x 2500 seeds = 10,000 runs) takes a while to
    queue: a SIGTERM then ends the sweep within seconds, nothing left RUNNING."""
    proc = start(tmp_path, _confirming(tmp_path, teacher_cache, 2500))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def queueing() -> bool:
        made = (tmp_path / "optuna.db").exists()
        return made and len(load_trials(storage, "faults:confirm")) > 20

    wait_for(queueing, 240, "the confirmation runs being queued", proc)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 143
    trials = load_trials(storage, "faults") + load_trials(storage, "faults:confirm")
    assert TrialState.RUNNING not in {t.state for t in trials}
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "RUNNING" not in {r.info.status for r in runs}


@pytest.mark.slow
def test_a_confirmation_interrupted_at_4_seeds_reruns_exactly_its_2_seed_plan(
    tmp_path: Path, teacher_cache: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def completed() -> set[tuple[str, int]]:
        return {
            (t.user_attrs["arm"], t.user_attrs["seed"])
            for t in load_trials(storage, "faults:confirm")
            if t.state == TrialState.COMPLETE and "arm" in t.user_attrs
        }

    proc = start(tmp_path, _confirming(tmp_path, teacher_cache, 4))
    wait_for(lambda: (tmp_path / "optuna.db").exists() and completed(), 240, "a run", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    before = completed()

    again = run(tmp_path, _confirming(tmp_path, teacher_cache, 2))
    assert again.returncode == 0, again.stderr[-3000:]
    arms = load_study(storage, "faults:confirm").user_attrs["current_arms"]
    planned = {(arm, seed) for arm in arms for seed in (1000, 1001)}
    assert completed() - before == planned - before  # what was asked, nothing more
    assert TrialState.WAITING not in {t.state for t in load_trials(storage, "faults:confirm")}
