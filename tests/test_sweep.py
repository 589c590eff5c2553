"""Optuna sweeps through Hydra: persistent studies, MLflow parent/child runs, the report,
failed and pruned trials, the joblib launcher, and the tutorial multirun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import db_path, mlflow_runs, run_cli, run_cli_in_process

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sweep_args(workdir: Path, study: str, n_trials: int, *extra: str) -> list[str]:
    """A kd sweep on digits whose every output stays in ``workdir``."""
    return [
        "-m",
        "hparams_search=kd",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage=sqlite:///{workdir / 'optuna.db'}",
        f"hydra.sweeper.report_dir={workdir / 'reports'}",
        f"hydra.sweep.dir={workdir / 'multirun'}",
        "hydra.sweeper.confirm.enabled=false",  # tests/test_confirm.py covers that stage
        *extra,
    ]


def load(workdir: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{workdir / 'optuna.db'}")


def children_of(runs: list, parent_id: str) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, empty_mlflow_db: Path) -> Path:
    """One 3-trial, 1-epoch kd sweep with the CE baseline, shared by the tests below: the
    plain sweep end to end, as a user's process runs it."""
    workdir = tmp_path_factory.mktemp("sweep")
    shutil.copyfile(empty_mlflow_db, db_path(workdir))
    proc = run_cli(workdir, *sweep_args(workdir, "s3", 3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_sweep_records_three_finished_trials(swept: Path) -> None:
    study = load(swept, "s3")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    # The tutorial's setting is the first trial, so the report can show the gain over it.
    first = study.trials[0].params
    assert first == pytest.approx(
        {
            "loss.temperature": 2.0,
            "loss.soft_target_weight": 0.25,
            "loss.ce_weight": 0.75,
            "optimizer.lr": 0.001,
        }
    )
    assert study.user_attrs["tutorial_trial_number"] == 0
    for trial in study.trials:
        assert len(trial.user_attrs["history"]) == 1
        assert trial.user_attrs["metrics"]["objective"] == pytest.approx(trial.value)
    baselines = study.user_attrs["baselines"]
    assert set(baselines) == {"teacher", "student_ce"}


def test_mlflow_has_one_parent_and_a_child_per_trial(swept: Path) -> None:
    study = load(swept, "s3")
    runs = mlflow_runs(db_path(swept))
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    (parent,) = [r for r in runs if r.info.run_id == parent_id]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["study_name"] == "s3"
    assert parent.data.params["n_trials"] == "3"
    assert parent.data.params["sampler"] == "TPESampler"
    assert "search_space.loss.temperature" in parent.data.params
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.loss.temperature"] == str(study.best_params["loss.temperature"])

    children = children_of(runs, parent_id)
    trials = [c for c in children if c.data.tags.get("kdsweep.role") == "trial"]
    baseline = [c for c in children if c.data.tags.get("kdsweep.role") == "baseline"]
    assert len(trials) == 3 and len(baseline) == 1
    assert baseline[0].data.params["loss.name"] == "ce"
    by_number = {int(c.data.params["sweep.trial_number"]): c for c in trials}
    for trial in study.trials:
        child = by_number[trial.number]
        assert child.info.status == "FINISHED"
        assert child.data.tags["kdsweep.state"] == "COMPLETE"
        assert child.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert float(child.data.params["loss.temperature"]) == pytest.approx(
            trial.params["loss.temperature"]
        )
        assert child.data.metrics["objective"] == pytest.approx(trial.value)


def test_report_names_the_best_trial(swept: Path) -> None:
    study = load(swept, "s3")
    report = swept / "reports" / "s3"
    index = (report / "index.html").read_text()
    assert f"#{study.best_trial.number}" in index or f"trial {study.best_trial.number}" in index
    assert (report / "trials.csv").read_text().count("\n") >= 4  # header + 3 trials
    assert any(report.glob("*.png"))


def test_rerun_continues_the_same_study(swept: Path) -> None:
    before = {t.number: t.value for t in load(swept, "s3").trials}
    proc = run_cli_in_process(swept, *sweep_args(swept, "s3", 4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = optuna.storages.RDBStorage(f"sqlite:///{swept / 'optuna.db'}")
    # One search study; its companion holds the CE baseline's trial (kdsweep.sweep.confirm).
    assert [s.study_name for s in storage.get_all_studies()] == ["s3", "s3:confirm"]
    study = load(swept, "s3")
    assert len(study.trials) == 4
    assert {t.number: t.value for t in study.trials[:3]} == before  # nothing redone
    # Still one parent, now with four trial children (the baseline ran once).
    runs = mlflow_runs(db_path(swept))
    parents = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert len(parents) == 1
    children = children_of(runs, parents[0].info.run_id)
    assert sum(c.data.tags.get("kdsweep.role") == "trial" for c in children) == 4
    assert sum(c.data.tags.get("kdsweep.role") == "baseline" for c in children) == 1


def test_report_command_rebuilds_from_the_stored_study(swept: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "rebuilt"
    proc = subprocess.run(
        [
            sys.executable, "-m", "kdsweep.report_cli",
            "--storage", f"sqlite:///{swept / 'optuna.db'}", "--study", "s3", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "index.html").is_file() and (out / "trials.csv").is_file()


@pytest.mark.filterwarnings("ignore:Fixed parameter loss.temperature")  # on purpose
def test_failing_trial_is_recorded_and_the_sweep_goes_on(
    tracked_workdir: Path, teacher_cache: Path
) -> None:
    # An enqueued trial with an invalid temperature fails inside its job.
    proc = run_cli_in_process(
        tracked_workdir,
        *sweep_args(tracked_workdir, "fail", 2, "hydra.sweeper.baselines=false"),
        f"cache_dir={teacher_cache}",
        "hydra.sweeper.max_failure_rate=0.5",
        "hydra.sweeper.enqueue_trials=[{loss.temperature: -1.0}]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tracked_workdir, "fail")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert "temperature" in failed.user_attrs["error"]


@pytest.mark.filterwarnings("ignore:Fixed parameter loss.temperature")  # on purpose
def test_too_many_failures_stop_the_sweep(tracked_workdir: Path, teacher_cache: Path) -> None:
    proc = run_cli_in_process(
        tracked_workdir,
        *sweep_args(tracked_workdir, "fail0", 2, "hydra.sweeper.baselines=false"),
        f"cache_dir={teacher_cache}",
        "hydra.sweeper.max_failure_rate=0",
        "hydra.sweeper.enqueue_trials=[{loss.temperature: -1.0}]",
    )
    assert proc.returncode != 0
    assert "max_failure_rate" in proc.stderr and "Traceback" not in proc.stderr
    assert [t.state for t in load(tracked_workdir, "fail0").trials] == [TrialState.FAIL]


@pytest.mark.slow  # a pruned sweep: ~5 s
def test_pruned_trials_agree_between_optuna_and_mlflow(
    tracked_workdir: Path, teacher_cache: Path
) -> None:
    # An aggressive pruner: after 1 trial, anything below the median at epoch 1 stops.
    proc = run_cli_in_process(
        tracked_workdir,
        *sweep_args(tracked_workdir, "prune", 6, "hydra.sweeper.baselines=false"),
        f"cache_dir={teacher_cache}",
        "trainer.epochs=4",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "loss.temperature=interval(1.0, 2.0)",
        "optimizer.lr=tag(log, interval(0.00001, 0.01))",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tracked_workdir, "prune")
    states = {t.number: t.state for t in study.trials}
    assert TrialState.PRUNED in states.values()
    finished = [s for s in states.values() if s in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    runs = {r.info.run_id: r for r in mlflow_runs(db_path(tracked_workdir))}
    expected_status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}
    for trial in study.trials:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["kdsweep.state"] == trial.state.name
        assert run.info.status == expected_status[trial.state]
        if trial.state == TrialState.PRUNED:
            assert len(trial.intermediate_values) < 4
            # Stopped on purpose, not an error: no error tag, the reason in its own tag.
            assert "error" not in run.data.tags
            assert run.data.tags["kdsweep.pruned"].startswith("pruned after epoch")
        # Each run names its data set as an MLflow dataset input (the UI's Dataset column).
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "digits"
        assert json.loads(dataset_input.dataset.profile)["val"] == 259
    # The experiment opens on its runs in MLflow 3's UI: a model-training experiment.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db_path(tracked_workdir)}")
    tags = client.get_experiment_by_name("kdsweep").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow  # joblib's processes each import torch: ~22 s
def test_joblib_launcher_runs_trials_in_other_processes(tracked_workdir: Path) -> None:
    proc = run_cli(
        tracked_workdir,
        *sweep_args(tracked_workdir, "jl", 2, "hydra.sweeper.baselines=false"),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tracked_workdir, "jl")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    runs = mlflow_runs(db_path(tracked_workdir))
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    assert len(children_of(runs, parent_id)) == 2
    # One teacher for the sweep: trained at most once, never once per trial.
    assert len(list((tracked_workdir / "cache" / "teachers").glob("*.pt"))) == 1


def test_tutorial_multirun_ends_with_the_comparison_table(tracked_workdir: Path) -> None:
    proc = run_cli_in_process(
        tracked_workdir,
        "-m",
        "experiment=glob(tutorial_*)",
        f"hydra.sweep.dir={tracked_workdir / 'multirun'}",
        "trainer.epochs=1",
        "teacher.epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tracked_workdir / "multirun" / "tutorial_comparison.md").read_text()
    for row in ("Teacher", "without teacher", "CE + KD", "CE + cosine"):
        line = next(line for line in table.splitlines() if row in line)
        assert "FINISHED" in line
    assert "75.10" in table  # the tutorial's published teacher figure, beside ours
    assert "Tutorial comparison" in proc.stdout
