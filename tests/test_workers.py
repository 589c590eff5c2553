"""Scale-out: several sweep processes sharing one study (PostgreSQL or Optuna's journal
file) and one MLflow store finish exactly n_trials between them, each trial logged once
under one parent run; and the submitit launcher runs a sweep end to end."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial

from _helpers import (
    children_of,
    drop_study,
    finish,
    fresh_postgres_db_fixture,  # noqa: F401  (the fresh_postgres_db fixture)
    group_alive,
    kill_group,
    load_study,
    load_trials,
    mlflow_client,
    mlflow_runs,
    postgres_url_fixture,  # noqa: F401  (the postgres_url fixture)
    run,
    start,
    states,
    sweep_args,
    unique,
    wait_for,
)

N_TRIALS = 5
WORKERS = 2


def _run_workers(workdir: Path, storage: str, study_name: str, cache: Path) -> None:
    """WORKERS copies of the same sweep command, started together, all to exit 0."""
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    args = sweep_args(
        workdir, study_name, N_TRIALS, storage=storage, tracking_uri=tracking, cache_dir=cache
    )
    procs = [start(workdir, args) for _ in range(WORKERS)]
    done = [finish(proc, timeout=900) for proc in procs]
    for worker, proc in enumerate(done):
        assert proc.returncode == 0, f"worker {worker}:\n{proc.stderr[-3000:]}"
    # Every worker took part: each launched at least one trial.
    for worker, proc in enumerate(done):
        ran = re.search(r"trial \d+ \(.*\): (COMPLETE|PRUNED)", proc.stdout + proc.stderr)
        assert ran, f"worker {worker} idled"


def _check_shared_sweep(workdir: Path, storage: str, study_name: str) -> None:
    trials = load_trials(storage, study_name)
    assert states(trials) == {"COMPLETE": N_TRIALS}
    assert sorted(t.number for t in trials) == list(range(N_TRIALS))
    owners = {t.user_attrs.get("worker") for t in trials}
    assert len(owners) == WORKERS  # the trials were shared out, not run by one worker

    study = load_study(storage, study_name)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = mlflow_runs(tracking)
    parents = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [p.info.run_id for p in parents] == [parent_id]
    children = children_of(runs, parent_id)
    assert len(children) == N_TRIALS == len(runs) - 1  # each trial logged exactly once
    numbers = sorted(int(c.data.tags["optuna.trial_number"]) for c in children)
    assert numbers == list(range(N_TRIALS))
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    # The last worker to finish closes the parent run.
    assert mlflow_client(tracking).get_run(parent_id).info.status == "FINISHED"


@pytest.mark.slow  # two workers' sweeps, ~16 s; creating the storage together stays default
@pytest.mark.postgres
def test_workers_share_a_postgresql_study(
    tmp_path: Path, fresh_postgres_db: str, teacher_cache: Path
) -> None:
    """Started together on a new database: they also race to create Optuna's tables."""
    study_name = unique("pg-workers")
    _run_workers(tmp_path, fresh_postgres_db, study_name, teacher_cache)
    _check_shared_sweep(tmp_path, fresh_postgres_db, study_name)


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_share_a_study_on_a_postgresql_server_in_use(
    tmp_path: Path, postgres_url: str, teacher_cache: Path
) -> None:
    """The configured database, which other studies (earlier test runs) already use."""
    study_name = unique("pg-workers")
    try:
        _run_workers(tmp_path, postgres_url, study_name, teacher_cache)
        _check_shared_sweep(tmp_path, postgres_url, study_name)
    finally:
        drop_study(postgres_url, study_name)


_OPEN_AT = """
import sys, time
from kdsweep.core.errors import KdsweepError
from kdsweep.sweep.studies import open_storage

time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    open_storage(sys.argv[1])
    print("ok")
except KdsweepError as exc:
    print(exc)
"""


def _open_together(url: str, processes: int = 4) -> list[str]:
    """``processes`` processes open the storage at the same instant; what each said."""
    import subprocess
    import sys
    import time

    at = time.time() + 6  # after every interpreter has started
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AT, url, str(at)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    return [p.communicate(timeout=120)[0].strip() for p in procs]


def test_workers_create_a_new_sqlite_storage_together(tmp_path: Path) -> None:
    assert _open_together(f"sqlite:///{tmp_path / 'optuna.db'}") == ["ok"] * 4


@pytest.mark.slow  # four processes each open the store: ~8 s
@pytest.mark.postgres
def test_workers_create_a_new_postgresql_storage_together(fresh_postgres_db: str) -> None:
    assert _open_together(fresh_postgres_db) == ["ok"] * 4


@pytest.mark.slow
def test_workers_share_a_journal_file_study(tmp_path: Path, teacher_cache: Path) -> None:
    storage = f"journal:{tmp_path / 'optuna.journal.log'}"
    study_name = unique("journal-workers")
    _run_workers(tmp_path, storage, study_name, teacher_cache)
    _check_shared_sweep(tmp_path, storage, study_name)


@pytest.mark.slow
def test_workers_share_a_sqlite_study(tmp_path: Path, teacher_cache: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_name = unique("sqlite-workers")
    _run_workers(tmp_path, storage, study_name, teacher_cache)
    _check_shared_sweep(tmp_path, storage, study_name)


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path: Path, teacher_cache: Path) -> None:
    """Each trial in its own submitit job (a separate process, as on SLURM)."""
    study_name = unique("submitit")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = sweep_args(
        tmp_path,
        study_name,
        2,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        cache_dir=teacher_cache,
    )
    proc = finish(start(tmp_path, args), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load_trials(storage, study_name)
    assert states(trials) == {"COMPLETE": 2}
    # The jobs ran under submitit: its per-job logs are in the sweep directory.
    assert list((tmp_path / "multirun").glob(".submitit/*/*_log.out"))
    study = load_study(storage, study_name)
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = children_of(runs, study.user_attrs["mlflow_parent_run_id"])
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]
    assert all(t.user_attrs.get("metrics", {}).get("test_acc") is not None for t in trials)


def test_study_lock_does_not_block_journal_writes(tmp_path: Path) -> None:
    """The study lock is held while the sweeper writes to the study; on a journal file
    it must not be the lock file Optuna's journal backend takes for each write."""
    import time

    import optuna

    from kdsweep.sweep.studies import open_storage, study_lock

    url = f"journal:{tmp_path / 'optuna.journal.log'}"
    storage = open_storage(url)
    started = time.monotonic()
    with study_lock(storage, url, "locked"):
        study = optuna.create_study(study_name="locked", storage=storage)
        study.set_user_attr("written", True)
    assert time.monotonic() - started < 10  # Optuna waits 30 s for a lock it cannot take
    assert load_study(url, "locked").user_attrs == {"written": True}
    assert (tmp_path / "optuna.journal.log").is_file()
    assert not (tmp_path / "optuna.journal.log.lock").exists()  # Optuna's lock was released


def test_auto_plans_workers_per_gpu_each_seeing_one_device() -> None:
    """4 GPUs (a faked count), 2 workers per device: 8 workers, each GPU seen by two,
    the GPUs filled before any doubles up; the cores shared out."""
    from kdsweep.sweep.worker_slots import gpu_ids, plan_workers

    slots = plan_workers("auto", 2, gpu_ids(4, None), cores=16, threads=0)
    assert [s.index for s in slots] == list(range(1, 9))
    visible = [s.environment()["CUDA_VISIBLE_DEVICES"] for s in slots]
    assert visible == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert {s.threads for s in slots} == {2}  # 16 cores / 8 workers
    assert {s.environment()["OMP_NUM_THREADS"] for s in slots} == {"2"}
    assert slots[5].label == "worker 6 (GPU 1)"
    # The command's own CUDA_VISIBLE_DEVICES names the machine's ids the workers get.
    pinned = plan_workers("auto", 1, gpu_ids(2, "4,6"), cores=16, threads=0)
    assert [s.environment()["CUDA_VISIBLE_DEVICES"] for s in pinned] == ["4", "6"]
    # A count round-robins over the GPUs.
    three = plan_workers(3, 2, gpu_ids(2, None), cores=2, threads=0)
    assert [s.gpu for s in three] == ["0", "1", "0"]
    assert {s.threads for s in three} == {1}  # never fewer than one


def test_auto_on_cpu_plans_as_many_workers_as_the_cores_allow() -> None:
    from kdsweep.sweep.worker_slots import plan_workers

    two = plan_workers("auto", 4, [], cores=2, threads=0)  # per device: no GPU, no effect
    assert [(s.gpu, s.threads, s.device) for s in two] == [(None, 1, "cpu"), (None, 1, "cpu")]
    assert "CUDA_VISIBLE_DEVICES" not in two[0].environment()
    assert len(plan_workers("auto", 1, [], cores=8, threads=2)) == 4  # 2 threads each
    assert len(plan_workers("auto", 1, [], cores=1, threads=4)) == 1  # always one
    assert [s.threads for s in plan_workers(2, 1, [], cores=8, threads=0)] == [4, 4]
    assert [s.threads for s in plan_workers(2, 1, [], cores=8, threads=3)] == [3, 3]  # theirs


def _overlap(a, b) -> bool:  # noqa: ANN001  (two FrozenTrials)
    return a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete


@pytest.mark.slow  # a command and its two workers' processes, ~1-2 min on 2 busy cores
def test_one_command_runs_a_sweep_on_two_workers(tmp_path: Path, teacher_cache: Path) -> None:
    """hydra.sweeper.workers=2: both workers train at once (their trials overlap in time),
    the study gets exactly n_trials, the confirmation's runs are shared out and complete,
    and the command alone writes the one report under the one parent run."""
    study_name = unique("cmd-workers")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = sweep_args(
        tmp_path,
        study_name,
        4,
        "hydra.sweeper.workers=2",
        "hydra.sweeper.confirm.enabled=true",
        "hydra.sweeper.confirm.seeds=1",
        "hydra.sweeper.confirm.top_k=1",
        "trainer.epochs=3",
        cache_dir=teacher_cache,
    )
    proc = run(tmp_path, args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    for worker in ("worker 1 (cpu)", "worker 2 (cpu)"):
        assert re.search(rf"{re.escape(worker)}: trial \d+ \(.*\): (COMPLETE|PRUNED)", console)

    trials = load_trials(storage, study_name)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len(trials) == 4  # exactly n_trials, none failed
    by_worker: dict[str, list] = {}
    for trial in trials:
        by_worker.setdefault(trial.user_attrs["worker"], []).append(trial)
    assert len(by_worker) == 2
    first, second = by_worker.values()
    assert any(_overlap(a, b) for a in first for b in second)  # no batch barrier, no idle

    confirm = load_trials(storage, f"{study_name}:confirm")
    assert states(confirm) == {"COMPLETE": 4}  # top1, ablation, reference, CE default
    study = load_study(storage, study_name)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    runs = mlflow_runs(tracking)
    parents = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [p.info.run_id for p in parents] == [parent_id]
    assert len(children_of(runs, parent_id)) == len(runs) - 1 == 4 + 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert list((tmp_path / "reports").iterdir()) == [tmp_path / "reports" / study_name]
    assert (tmp_path / "reports" / study_name / "index.html").is_file()
    assert console.count("report: ") == 1  # written once, by the command
    # Each worker's own lines went to its log file, beside the trials' folders.
    logs = sorted(p.name for p in (tmp_path / "multirun" / "workers").iterdir())
    assert logs == ["worker-1.log", "worker-2.log"]


def _two_workers_training(
    workdir: Path, name: str, cache: Path, empty_mlflow_db: Path
) -> tuple[subprocess.Popen, list[str], str, str, FrozenTrial]:
    """A command of two workers on 4 unpruned trials of 8 epochs (its MLflow store made
    beforehand), started and waited for until a trial is training: (the command's process,
    its arguments, the storage, the study's name, that trial)."""
    shutil.copyfile(empty_mlflow_db, workdir / "mlflow.db")
    study_name = unique(name)
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    args = sweep_args(
        workdir,
        study_name,
        4,
        "hydra.sweeper.workers=2",
        "hydra/sweeper/pruner=none",
        "trainer.epochs=8",
        cache_dir=cache,
    )
    proc = start(workdir, args)

    def training() -> FrozenTrial | None:
        running = [t for t in load_trials(storage, study_name) if t.state.name == "RUNNING"]
        return next((t for t in running if t.user_attrs.get("history")), None)

    try:
        trial = wait_for(training, 600, "a trial in training", proc)
    except BaseException:
        kill_group(proc)
        raise
    return proc, args, storage, study_name, trial


@pytest.mark.slow  # a command, two workers and a third started in place of a killed one
def test_a_killed_worker_is_replaced_and_its_trial_run_again(
    tmp_path: Path, teacher_cache: Path, empty_mlflow_db: Path
) -> None:
    """SIGKILL to one worker mid-trial: the command fails that trial, queues it again with
    the same parameters, starts the worker again and says so; the sweep ends with every
    trial accounted for and nothing RUNNING."""
    proc, _, storage, study_name, victim = _two_workers_training(
        tmp_path, "kill-worker", teacher_cache, empty_mlflow_db
    )
    try:
        os.kill(int(victim.user_attrs["worker"].rpartition(":")[2]), signal.SIGKILL)
        done = finish(proc, timeout=900)
    finally:
        kill_group(proc)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert re.search(r"worker \d \(cpu\) died \(killed by SIGKILL\).*starting it again", console)

    trials = load_trials(storage, study_name)
    assert states(trials) == {"COMPLETE": 4, "FAIL": 1}
    (killed,) = [t for t in trials if t.state.name == "FAIL"]
    assert killed.number == victim.number
    (retried,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retried.state.name == "COMPLETE" and retried.params == victim.params
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "RUNNING" not in {r.info.status for r in runs}
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses[killed.user_attrs["mlflow_run_id"]] == "FAILED"


@pytest.mark.slow  # a command and its two workers, killed, then the same command again
def test_workers_end_with_a_killed_command_and_the_same_command_completes(
    tmp_path: Path, teacher_cache: Path, empty_mlflow_db: Path
) -> None:
    """SIGKILL to the command alone (a signal it cannot pass on): its workers end too,
    failing the trials they were training, rather than training on for a command that is
    gone; the same command then ends the sweep with n_trials and nothing RUNNING."""
    proc, args, storage, study_name, _ = _two_workers_training(
        tmp_path, "kill-command", teacher_cache, empty_mlflow_db
    )
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the command only: its workers get nothing from it
        proc.wait(timeout=30)  # reaped, so its process group holds only its workers
        wait_for(lambda: not group_alive(proc.pid), 90, "the workers to end with their command")
    finally:
        kill_group(proc)
    left = states(load_trials(storage, study_name))
    assert "RUNNING" not in left and left.get("FAIL", 0) >= 1, left  # ended mid-trial
    assert left.get("COMPLETE", 0) < 4, left  # not trained on to the end

    done = run(tmp_path, args, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert states(load_trials(storage, study_name))["COMPLETE"] == 4
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "RUNNING" not in {r.info.status for r in runs}
