"""Whole runs through the real entry point, read back from MLflow.

The runs go through ``kdsweep.main.main`` (``@hydra.main``) in this process: the successful
ones all into one SQLite database, once per module; bad command lines with their exit
codes and stderr captured (tests/test_bad_inputs.py runs some as ``python -m kdsweep``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import db_path, job_log, mlflow_runs, run_cli_in_process, run_main_in_process

RUNS: dict[str, tuple[str, ...]] = {
    # name: overrides (each run also gets tracking.run_name=<name>, its own hydra.run.dir)
    "kd-1": ("loss=kd", "loss.temperature=3.0"),
    "kd-2": ("loss=kd", "loss.temperature=3.0"),  # same settings: the teacher is reused
    "cosine": ("loss=cosine", "model=modified", "optimizer=sgd_nesterov", "optimizer.lr=0.02"),
    "ce": ("loss=ce", "trainer.epochs=2", "optimizer.lr=0.002"),
    "multimargin": ("loss=multimargin", "loss.p=2"),
    "narrow": ("loss=ce", "+model.width=0.5"),  # the student at half its width
}
TERMS = {
    "kd-1": {"train_soft_target", "train_ce"},
    "kd-2": {"train_soft_target", "train_ce"},
    "cosine": {"train_hidden_cosine", "train_ce"},
    "ce": {"train_ce"},
    "multimargin": {"train_multimargin"},
    "narrow": {"train_ce"},
}


class Done:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db = db_path(workdir)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{self.db}")
        self.codes: dict[str, int] = {}
        self.teacher_mtime: dict[str, int] = {}

    def run_dir(self, name: str) -> Path:
        return self.workdir / "out" / name

    def run(self, name: str) -> Any:
        found = [r for r in mlflow_runs(self.db) if r.info.run_name == name]
        assert len(found) == 1, f"{len(found)} MLflow runs named {name}"
        return found[0]

    def teachers(self) -> list[Path]:
        return sorted((self.workdir / "cache" / "teachers").glob("*.pt"))


@pytest.fixture(scope="module")
def done(tmp_path_factory, empty_mlflow_db: Path) -> Done:
    result = Done(tmp_path_factory.mktemp("runs"))
    shutil.copyfile(empty_mlflow_db, result.db)  # MLflow's schema, without its migrations
    for name, overrides in RUNS.items():
        result.codes[name] = run_main_in_process(
            result.workdir,
            f"hydra.run.dir={result.run_dir(name)}",
            f"tracking.run_name={name}",
            *overrides,
        )
        result.teacher_mtime[name] = {p.name: p.stat().st_mtime_ns for p in result.teachers()}
    return result


def test_every_run_exits_zero_and_finishes(done: Done) -> None:
    assert done.codes == dict.fromkeys(RUNS, 0)
    # (other tests add failing runs to the same database: look at these only)
    runs = [r for r in mlflow_runs(done.db) if r.info.run_name in RUNS]
    assert sorted(r.info.run_name for r in runs) == sorted(RUNS)
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags.get("kdsweep.state") == "COMPLETE"
        assert "error" not in run.data.tags


@pytest.mark.parametrize("name", list(RUNS))
def test_tags_and_params(done: Done, name: str) -> None:
    run = done.run(name)
    overrides = dict(o.split("=", 1) for o in RUNS[name])
    tags, params = run.data.tags, run.data.params
    assert tags["loss"] == overrides["loss"]
    assert tags["model"] == overrides.get("model", "light")
    assert tags["optimizer"] == overrides.get("optimizer", "adam")
    assert tags["data"] == "digits"
    # the whole config, flattened
    assert params["loss.name"] == overrides["loss"]
    assert params["model.name"] == tags["model"]
    assert params["optimizer.name"] == tags["optimizer"]
    assert float(params["optimizer.lr"]) == float(overrides.get("optimizer.lr", 0.001))
    assert params["trainer.epochs"] == overrides.get("trainer.epochs", "1")
    assert params["data.name"] == "digits"
    assert params["teacher.epochs"] == "1"
    assert params["trainer.seed"] == params["teacher.seed"] == "0"  # resolved interpolation
    if name.startswith("kd"):
        assert float(params["loss.temperature"]) == 3.0
    if name == "multimargin":
        assert params["loss.p"] == "2"
    if name == "cosine":
        assert float(params["optimizer.momentum"]) == 0.9


@pytest.mark.parametrize("name", list(RUNS))
def test_per_epoch_and_final_metrics(done: Done, name: str) -> None:
    run = done.run(name)
    epochs = int(run.data.params["trainer.epochs"])
    for key in ("train_loss", "val_loss", "val_acc", *TERMS[name]):
        history = done.client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
        assert all(torch.isfinite(torch.tensor(m.value)) for m in history), key
    metrics = run.data.metrics
    for key in ("test_acc", "best_val_acc", "objective", "train_images_per_s", "wall_seconds"):
        assert key in metrics, key
    for key in ("test_acc", "best_val_acc", "objective"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["train_images_per_s"] > 0 and metrics["wall_seconds"] > 0
    val_accs = [m.value for m in done.client.get_metric_history(run.info.run_id, "val_acc")]
    assert metrics["best_val_acc"] == pytest.approx(max(val_accs))
    assert metrics["objective"] == pytest.approx(metrics["best_val_acc"])
    if name in ("kd-1", "kd-2", "cosine"):
        assert "teacher_val_acc" in metrics and "teacher_test_acc" in metrics
    else:
        assert not any(k.startswith("teacher_") for k in metrics)
    # the loss is the weighted sum of its terms (kd: 0.25 soft + 0.75 ce)
    if name.startswith("kd"):
        last = {k: metrics[k] for k in ("train_loss", "train_soft_target", "train_ce")}
        expected = 0.25 * last["train_soft_target"] + 0.75 * last["train_ce"]
        assert last["train_loss"] == pytest.approx(expected, rel=1e-4)
    if name == "multimargin":
        assert metrics["train_loss"] == pytest.approx(metrics["train_multimargin"], rel=1e-5)


def test_final_throughput_is_the_mean_of_the_epochs(done: Done) -> None:
    """The run's train_images_per_s is the average over epochs, and what MLflow shows as
    the run's value (no per-epoch series under the same key hides it)."""
    run = done.run("ce")  # 2 epochs
    per_epoch = done.client.get_metric_history(run.info.run_id, "epoch_images_per_s")
    assert sorted(m.step for m in per_epoch) == [1, 2]
    final = done.client.get_metric_history(run.info.run_id, "train_images_per_s")
    assert len(final) == 1
    mean = sum(m.value for m in per_epoch) / len(per_epoch)
    assert run.data.metrics["train_images_per_s"] == pytest.approx(mean)


@pytest.mark.parametrize("name", ["kd-1", "cosine"])
def test_config_artifact_and_local_record(done: Done, name: str, tmp_path: Path) -> None:
    run = done.run(name)
    names = [a.path for a in done.client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in names
    local = done.client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    config = yaml.safe_load(Path(local).read_text())
    assert config["loss"]["name"] == RUNS[name][0].split("=")[1]
    assert config["tracking"]["run_name"] == name
    assert config["teacher"]["seed"] == 0  # resolved
    record = yaml.safe_load((done.run_dir(name) / "results.json").read_text())
    assert record["status"] == "FINISHED" and record["run_id"] == run.info.run_id
    assert record["metrics"]["test_acc"] == pytest.approx(run.data.metrics["test_acc"])


# LightNN at digits (1x8x8, 10 classes), counted by hand: params 160 + 2,320 (convs) +
# 16,640 + 2,570 (classifier); MACs 16x8x8x9 + 16x4x4x144 + 64x256 + 256x10. At width
# 0.5: 8 channels, 128 hidden units.
STUDENT_SIZE = {"kd-1": (21_690, 65_024), "cosine": (21_690, 65_024), "narrow": (6_178, 19_200)}


@pytest.mark.parametrize("name", list(STUDENT_SIZE))
def test_the_students_size_is_logged_before_it_trains(done: Done, name: str) -> None:
    run = done.run(name)
    record = yaml.safe_load((done.run_dir(name) / "results.json").read_text())
    for metrics in (run.data.metrics, record["metrics"]):  # MLflow's and the local record
        assert (metrics["student_params"], metrics["student_macs"]) == STUDENT_SIZE[name]
    logged = done.client.get_metric_history(run.info.run_id, "student_params")[0].timestamp
    first_epoch = done.client.get_metric_history(run.info.run_id, "train_loss")[0].timestamp
    assert logged <= first_epoch
    if name == "narrow":
        assert run.data.params["model.width"] == "0.5"


def test_teacher_is_trained_once_and_reused(done: Done) -> None:
    assert len(done.teachers()) == 1
    (checkpoint,) = done.teachers()
    first = job_log(done.run_dir("kd-1"))
    second = job_log(done.run_dir("kd-2"))
    assert "teacher: training" in first
    assert "teacher: reusing" in second and "teacher: training" not in second
    assert "teacher: reusing" in job_log(done.run_dir("cosine"))
    assert "teacher:" not in job_log(done.run_dir("ce"))  # ce needs no teacher
    # the checkpoint file was written once
    mtimes = [done.teacher_mtime[name][checkpoint.name] for name in RUNS]
    assert len(set(mtimes)) == 1
    assert checkpoint.stat().st_mtime_ns == mtimes[0]
    # its metrics come with every run that uses it
    kd1, kd2 = done.run("kd-1").data.metrics, done.run("kd-2").data.metrics
    assert kd1["teacher_val_acc"] == kd2["teacher_val_acc"]


def test_same_settings_give_the_same_run_whether_or_not_the_teacher_was_cached(
    done: Done,
) -> None:
    """kd-1 trained the teacher, kd-2 loaded it: the student must not notice."""
    a, b = done.run("kd-1"), done.run("kd-2")
    for key in ("train_loss", "val_loss", "val_acc", "train_soft_target"):
        assert a.data.metrics[key] == b.data.metrics[key], key
    assert a.data.metrics["test_acc"] == b.data.metrics["test_acc"]


# --- runs that fail -----------------------------------------------------------------------


def test_divergence_mid_training_ends_failed_with_error_tag(
    done: Done, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The objective turns NaN at the third batch: fit raises NonFiniteLossError, the CLI
    exits 1 and the MLflow run is FAILED with the error."""
    from kdsweep.losses import CrossEntropy

    real = CrossEntropy.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = real(self, batch)
        calls["n"] += 1
        if calls["n"] >= 3:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(CrossEntropy, "forward", poisoned)
    code = run_main_in_process(
        done.workdir,
        f"hydra.run.dir={done.workdir / 'out' / 'nan'}",
        "tracking.run_name=nan",
        "loss=ce",
    )
    assert code == 1
    run = [r for r in mlflow_runs(done.db) if r.info.run_name == "nan"]
    assert len(run) == 1
    assert run[0].info.status == "FAILED"
    assert "NonFiniteLossError" in run[0].data.tags["error"]
    assert "optimizer.lr" in run[0].data.tags["error"]
    assert run[0].data.tags["kdsweep.state"] == "FAIL"
    assert "test_acc" not in run[0].data.metrics


def test_unexpected_exception_ends_failed(done: Done, monkeypatch: pytest.MonkeyPatch) -> None:
    import kdsweep.run.experiment as run_module
    from conftest import compose_config

    def broken_fit(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run_module, "fit", broken_fit)
    monkeypatch.chdir(done.workdir)
    cfg = compose_config(
        f"tracking.uri=sqlite:///{done.db}",
        f"cache_dir={done.workdir / 'cache'}",
        "tracking.run_name=fire",
        "loss=ce",
        "trainer.epochs=1",
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_module.run(cfg, output_dir=done.workdir / "out" / "fire")
    (run,) = [r for r in mlflow_runs(done.db) if r.info.run_name == "fire"]
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk on fire"


# --- bad command lines -------------------------------------------------------------------

BAD = {
    "negative-temperature": ("loss=kd", "loss.temperature=-1"),
    "unknown-model": ("model=nonexistent",),
    "cosine-light": ("loss=cosine", "model=light"),
    "zero-lr": ("optimizer.lr=0",),
}


@pytest.fixture(scope="module")
def bad_cli(tmp_path_factory) -> dict[str, tuple[Any, Path]]:
    """Every BAD command line: name -> (CompletedProcess, workdir)."""
    base = tmp_path_factory.mktemp("bad-cli")
    return {
        name: (run_cli_in_process(base / name, *overrides), base / name)
        for name, overrides in BAD.items()
    }


@pytest.mark.parametrize("name", list(BAD))
def test_bad_overrides_fail_fast_with_a_short_message(bad_cli, name: str) -> None:
    proc, workdir = bad_cli[name]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 20, proc.stderr
    # nothing was tracked, nothing trained
    assert not db_path(workdir).exists()
    assert mlflow_runs(db_path(workdir)) == []
    assert not (workdir / "cache" / "teachers").exists()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("negative-temperature", ["loss.temperature"]),
        ("cosine-light", ["model=modified"]),
        ("zero-lr", ["optimizer.lr"]),
    ],
)
def test_kdsweep_errors_are_one_line_exit_2(bad_cli, name: str, words: list[str]) -> None:
    proc, _ = bad_cli[name]
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kdsweep: error:")]
    assert len(errors) == 1
    for word in words:
        assert word in errors[0]


def test_unknown_option_names_the_group(bad_cli) -> None:
    proc, _ = bad_cli["unknown-model"]
    assert "nonexistent" in proc.stderr and "model" in proc.stderr


def test_per_epoch_metrics_are_written_as_they_come_and_all_by_finish(
    tmp_path, empty_mlflow_db: Path
) -> None:
    import threading

    from mlflow.tracking import MlflowClient

    from kdsweep.config.schema import TrackingConf
    from kdsweep.run import tracking

    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    tracker = tracking.RunTracker(TrackingConf(uri=uri), "epochs", local_dir=tmp_path)
    tracker.start()
    for epoch in (1, 2, 3):
        tracker.log_metrics({"val_acc": 90.0 + epoch}, step=epoch)
        # A long run streams its curve: each epoch's metrics are there without finish().
        history = client.get_metric_history(tracker.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, epoch + 1))
        # Not MLflow's async logging: ending a run joins its queue's thread, which polls
        # with a 1-s timeout (every run paid up to 1 s: the main job took 2.9x as long).
        assert not any(t.name == "MLflowAsyncLoggingLoop" for t in threading.enumerate())
    tracker.finish("KILLED")  # an interrupted run keeps its curve too
    history = client.get_metric_history(tracker.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, 91.0), (2, 92.0), (3, 93.0)]


def _tracker(tmp_path: Path, empty_mlflow_db: Path) -> Any:
    from kdsweep.config.schema import TrackingConf
    from kdsweep.run.tracking import RunTracker

    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    conf = TrackingConf(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = RunTracker(conf, "run", local_dir=tmp_path)
    tracker.start()
    return tracker


def test_a_run_whose_tracking_broke_is_ended_failed_not_left_running(
    tmp_path: Path, empty_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once an MLflow call fails mid-run the run logs no more, but it is still ended:
    FAILED (its MLflow record is incomplete), tagged with where the whole record is."""
    tracker = _tracker(tmp_path, empty_mlflow_db)
    real_log_batch = MlflowClient.log_batch

    def store_gone(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the store went away")

    monkeypatch.setattr(MlflowClient, "log_batch", store_gone)
    tracker.log_metrics({"val_acc": 50.0}, step=1)
    monkeypatch.setattr(MlflowClient, "log_batch", real_log_batch)
    tracker.log_metrics({"val_acc": 60.0}, step=2)  # not sent: tracking stopped at the failure
    tracker.finish()
    run = MlflowClient(tracker.conf.uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert "the store went away" in run.data.tags["error"]
    assert str((tmp_path / "results.json").resolve()) in run.data.tags["error"]
    assert "val_acc" not in run.data.metrics
    record = yaml.safe_load((tmp_path / "results.json").read_text())
    assert record["status"] == "FINISHED" and len(record["history"]) == 2


def test_two_runs_adding_the_same_dataset_at_once_both_log_it(
    tmp_path: Path, empty_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers started together race to add one dataset to MLflow (it looks for the row,
    then inserts it: the loser fails on the unique key). The loser tries again and links
    the winner's row, instead of giving up tracking for the whole run (which left its run
    RUNNING in the PostgreSQL workers test)."""
    from types import SimpleNamespace

    from kdsweep.run.tracking import RunTracker

    tracker: RunTracker = _tracker(tmp_path, empty_mlflow_db)
    real_log_inputs = MlflowClient.log_inputs
    calls: list[int] = []

    def lost_the_race(self: MlflowClient, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            other = MlflowClient(tracker.conf.uri).create_run("0").info.run_id
            real_log_inputs(self, other, *args[1:], **kwargs)  # the winner adds the row first
            raise RuntimeError("UNIQUE constraint failed: datasets.experiment_id, ...")
        real_log_inputs(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_inputs", lost_the_race)
    splits = SimpleNamespace(
        train_y=[0] * 8, val_y=[0] * 2, test_y=[0] * 2, num_classes=2, input_shape=(1, 8, 8)
    )
    tracker.log_dataset("digits", SimpleNamespace(fingerprint="abc123", **vars(splits)))
    assert tracker.broken is None and len(calls) == 2
    (dataset_input,) = MlflowClient(tracker.conf.uri).get_run(tracker.run_id).inputs.dataset_inputs
    assert dataset_input.dataset.digest == "abc123"
