"""Resuming a sweep: n_trials counts the study's finished trials, one MLflow parent run
spans every invocation, and a sweep killed mid-trial resumes without repeating or losing
a completed trial."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _helpers import (
    children_of,
    finish,
    kill_group,
    load_study,
    load_trials,
    mlflow_client,
    mlflow_runs,
    run,
    start,
    states,
    sweep_args,
    teacher_cache_fixture,  # noqa: F401  (the teacher_cache fixture)
    unique,
    wait_for,
)


def _storage(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'optuna.db'}"


def _tracking(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.mark.slow  # three sweeps, ~30 s; test_sweep's rerun test keeps resume in the default suite
def test_n_trials_counts_finished_trials_and_a_finished_sweep_trains_nothing(
    tmp_path: Path, teacher_cache: Path
) -> None:
    study_name = unique("resume")

    def sweep(n_trials: int):
        return run(tmp_path, sweep_args(tmp_path, study_name, n_trials, cache_dir=teacher_cache))

    first = sweep(2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert states(load_trials(_storage(tmp_path), study_name)) == {"COMPLETE": 2}
    before = {t.number: t.value for t in load_trials(_storage(tmp_path), study_name)}

    second = sweep(4)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = load_trials(_storage(tmp_path), study_name)
    # Only the 2 missing trials ran: 4 in all, and the first two are untouched.
    assert states(trials) == {"COMPLETE": 4}
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.number: t.value for t in trials if t.number in before} == before
    # The console's line for each trial this invocation ran (trial 2 ran in the second).
    assert re.search(r"trial 2 \(.*\): COMPLETE", second.stdout + second.stderr)

    study = load_study(_storage(tmp_path), study_name)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    runs = mlflow_runs(_tracking(tmp_path))
    parents = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [p.info.run_id for p in parents] == [parent_id]  # ONE parent for both invocations
    children = children_of(runs, parent_id)
    assert len(children) == 4 == len(runs) - 1
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == [0, 1, 2, 3]
    assert {c.info.status for c in children} == {"FINISHED"}
    # Each trial points at its own child run.
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    assert mlflow_client(_tracking(tmp_path)).get_run(parent_id).info.status == "FINISHED"

    jobs_before = sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir())
    third = sweep(4)
    assert third.returncode == 0, third.stderr[-3000:]
    output = third.stdout + third.stderr
    # Nothing was launched or trained, and nothing new was recorded.
    assert not re.search(r"trial \d+ \(", output)  # no trial line: none ran
    assert "nothing to train" in output
    assert "Launching" not in output
    assert "epoch 1/" not in output
    assert states(load_trials(_storage(tmp_path), study_name)) == {"COMPLETE": 4}
    assert len(mlflow_runs(_tracking(tmp_path))) == len(runs)
    assert sorted(p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()) == jobs_before


@pytest.mark.slow
def test_killed_sweep_resumes_without_repeating_or_losing_a_trial(
    tmp_path: Path, teacher_cache: Path
) -> None:
    study_name = unique("kill")
    storage = _storage(tmp_path)
    # Several epochs per trial, so the kill lands in the middle of one.
    args = sweep_args(tmp_path, study_name, 4, "trainer.epochs=8", cache_dir=teacher_cache)
    proc = start(tmp_path, args)
    try:

        def one_done_one_running():
            trials = load_trials(storage, study_name)
            done = [t for t in trials if t.state.name == "COMPLETE"]
            running = [
                t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("history")
            ]
            return (done, running[0]) if done and running else None

        done, _ = wait_for(one_done_one_running, 400, "one complete and one running trial", proc)
    finally:
        kill_group(proc)
        proc.wait(timeout=60)
    assert proc.returncode != 0

    killed = load_trials(storage, study_name)
    running = [t for t in killed if t.state.name == "RUNNING"]
    assert len(running) == 1, states(killed)
    interrupted = running[0]
    completed_before = {t.number: t.value for t in killed if t.state.name == "COMPLETE"}
    assert completed_before
    run_id = interrupted.user_attrs["mlflow_run_id"]
    client = mlflow_client(_tracking(tmp_path))
    assert client.get_run(run_id).info.status == "RUNNING"  # the kill left it open

    resumed = finish(start(tmp_path, args), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"trial {interrupted.number} was interrupted" in resumed.stdout + resumed.stderr

    trials = load_trials(storage, study_name)
    assert states(trials) == {"COMPLETE": 4, "FAIL": 1}
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no trial was run twice under one number
    by_number = {t.number: t for t in trials}
    assert by_number[interrupted.number].state.name == "FAIL"
    assert by_number[interrupted.number].user_attrs.get("error") == "interrupted"
    for number, value in completed_before.items():  # completed work is kept, not redone
        assert by_number[number].state.name == "COMPLETE"
        assert by_number[number].value == value
    new = [t for t in trials if t.state.name == "COMPLETE" and t.number not in completed_before]
    assert len(new) == 4 - len(completed_before)
    assert all(t.number > interrupted.number for t in new)

    interrupted_run = client.get_run(run_id)
    assert interrupted_run.info.status == "FAILED"
    assert "interrupted" in interrupted_run.data.tags.get("error", "")

    study = load_study(storage, study_name)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    runs = mlflow_runs(_tracking(tmp_path))
    assert [r.info.run_id for r in runs if r.data.tags.get("kdsweep.role") == "sweep"] == [
        parent_id
    ]
    children = children_of(runs, parent_id)
    assert sorted(c.info.status for c in children) == ["FAILED"] + ["FINISHED"] * 4
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert client.get_run(parent_id).info.status == "FINISHED"


def _dead_pid() -> int:
    """The pid of a process that has exited (a claim it holds is a dead claimer's)."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # waits out a heartbeat: ~5 s
def test_trials_expire_with_their_sweeper(tmp_path: Path) -> None:
    import socket
    import time

    import optuna

    from kdsweep.sweep.liveness import (
        WORKER_ATTR,
        Heartbeat,
        ask,
        claim_trial,
        fail_dead_trials,
        heartbeat_options,
        worker_tag,
    )
    from kdsweep.sweep.studies import open_storage, trial_id

    storage = open_storage(_storage(tmp_path), heartbeat_options(1, 3))
    study = optuna.create_study(study_name="claims", storage=storage)

    def claimed(worker: str | None = None) -> int:
        number = ask(study).number
        tid = trial_id(storage, study._study_id, number)
        claim_trial(storage, tid, "trial")
        if worker is not None:
            storage.set_trial_user_attr(tid, WORKER_ATTR, worker)
        return tid

    ours = claimed()
    assert fail_dead_trials(storage, study) == []  # ours, alive
    dead = claimed(f"{socket.gethostname()}:{_dead_pid()}")  # its process is gone
    silent = claimed("another-host:1")  # its heartbeat stops
    with Heartbeat(storage, [ours]):
        time.sleep(5)
    failed = {
        trial_id(storage, study._study_id, t.number) for t in fail_dead_trials(storage, study)
    }
    assert failed == {dead, silent}
    assert storage.get_trial(ours).state.name == "RUNNING"
    assert storage.get_trial(ours).user_attrs[WORKER_ATTR] == worker_tag()


@pytest.mark.slow
def test_a_killed_reference_trial_and_baseline_run_again(
    tmp_path: Path, teacher_cache: Path
) -> None:
    """A sweep killed during the CE baseline and during the reference trial #0 (as a
    SIGKILL leaves them): the rerun takes over the dead claim (closing the baseline's open
    run), fails #0 and asks the reference setting again until it completes."""
    import socket

    import optuna

    from kdsweep.sweep.liveness import WORKER_ATTR
    from kdsweep.sweep.studies import open_storage

    study_name = unique("reference")
    reference = {
        "loss.temperature": 2.0,
        "loss.soft_target_weight": 0.25,
        "loss.ce_weight": 0.75,
        "optimizer.lr": 0.001,
    }
    storage = open_storage(_storage(tmp_path))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    dead = f"{socket.gethostname()}:{_dead_pid()}"
    study.enqueue_trial(reference)
    study.set_user_attr("enqueued", True)
    study.set_user_attr("tutorial_trial_number", 0)
    killed = study.ask()  # trial #0, RUNNING, its sweeper dead
    tid = storage.get_trial_id_from_study_id_trial_number(study._study_id, killed.number)
    storage.set_trial_user_attr(tid, WORKER_ATTR, dead)
    # The baseline, a trial of the companion study, RUNNING, its sweeper dead.
    companion = optuna.create_study(
        study_name=f"{study_name}:confirm", storage=storage, direction="maximize"
    )
    baseline = companion.ask()
    baseline_id = storage.get_trial_id_from_study_id_trial_number(
        companion._study_id, baseline.number
    )
    storage.set_trial_user_attr(baseline_id, "role", "baseline")
    storage.set_trial_user_attr(baseline_id, WORKER_ATTR, dead)

    args = sweep_args(tmp_path, study_name, 2, "hydra.sweeper.baselines=true")
    proc = run(tmp_path, [*args, f"cache_dir={teacher_cache}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "trial 0 was interrupted" in output

    study = load_study(_storage(tmp_path), study_name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[0].state.name == "FAIL"
    assert states(list(trials.values())) == {"FAIL": 1, "COMPLETE": 2}
    number = study.user_attrs["tutorial_trial_number"]
    assert number == 1 and trials[1].state.name == "COMPLETE"
    assert trials[1].params == reference
    assert "student_ce" in study.user_attrs["baselines"]
    assert study.user_attrs.get("baseline_claim") is None  # released
    assert storage.get_trial(baseline_id).state.name == "FAIL"  # the dead claim was taken over
    runs = mlflow_runs(_tracking(tmp_path))
    assert "RUNNING" not in {r.info.status for r in runs}
    assert [r.info.status for r in runs if r.data.tags.get("kdsweep.role") == "baseline"] == [
        "FINISHED"
    ]


@pytest.mark.slow  # two sweeps through the CLI: ~12 s
def test_a_study_whose_parent_run_is_gone_gets_a_new_one(
    tmp_path: Path, teacher_cache: Path
) -> None:
    """The Optuna study is the source of truth: its parent run went with a deleted
    mlflow.db (or another tracking.uri), so the sweep makes a new one and says so."""
    import optuna

    from kdsweep.sweep.studies import open_storage

    study_name = unique("parent")
    storage = open_storage(_storage(tmp_path))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    study.set_user_attr("mlflow_parent_run_id", "0123456789abcdef0123456789abcdef")

    proc = run(tmp_path, sweep_args(tmp_path, study_name, 1, cache_dir=teacher_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    notes = [line for line in output.splitlines() if "a new parent run is created" in line]
    assert len(notes) == 1, output[-3000:]
    parent_id = load_study(_storage(tmp_path), study_name).user_attrs["mlflow_parent_run_id"]
    assert parent_id != "0123456789abcdef0123456789abcdef"
    runs = mlflow_runs(_tracking(tmp_path))
    assert mlflow_client(_tracking(tmp_path)).get_run(parent_id).info.status == "FINISHED"
    assert len(children_of(runs, parent_id)) == 1
