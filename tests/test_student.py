"""The distilled student as the product: saved by every completed run (MLflow model, raw
pixels in, + state_dict), the teacher logged once on a sweep's parent run, the best student
registered as ``<study>-student@champion``, and ``kdsweep-eval`` (evaluate, refuse,
export). MLflow's own serving paths: tests/test_serving.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _helpers import (
    children_of,
    load_study,
    mlflow_client,
    mlflow_runs,
    run_in_process,
    sweep_args,
    unique,
)
from conftest import cli_env, db_path, run_main_in_process
from test_mlflow_server import mlflow_server  # noqa: F401  (the mlflow_server fixture)

SAVE = "trainer.save_model=best"


@pytest.fixture(scope="module")
def logged_run(
    tmp_path_factory: pytest.TempPathFactory, empty_mlflow_db: Path, teacher_cache: Path
) -> dict[str, Any]:
    """One 1-epoch KD run on digits that keeps its student (tracked in a SQLite store)."""
    workdir = tmp_path_factory.mktemp("student_run")
    shutil.copyfile(empty_mlflow_db, db_path(workdir))
    assert run_main_in_process(workdir, SAVE, f"cache_dir={teacher_cache}") == 0
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    (record,) = mlflow_runs(uri)
    return {"workdir": workdir, "uri": uri, "run": record}


def test_run_logs_a_student_that_loads_in_a_fresh_process(logged_run: dict[str, Any]) -> None:
    workdir, uri, record = logged_run["workdir"], logged_run["uri"], logged_run["run"]
    run_id = record.info.run_id
    client = mlflow_client(uri)
    names = {a.path for a in client.list_artifacts(run_id, "student")}
    assert {"student/MLmodel", "student/state_dict.pt", "student/kdsweep.json"} <= names
    assert record.data.tags["kdsweep.student"] == f"runs:/{run_id}/student"
    assert record.data.tags["kdsweep.teacher.key"]
    assert record.data.metrics["student_save_bytes"] > 0
    assert record.data.metrics["student_save_seconds"] > 0
    # The same folder in the job's output directory, tracked or not.
    assert (workdir / "out" / "student" / "state_dict.pt").is_file()
    mlmodel = (workdir / "out" / "student" / "MLmodel").read_text()
    assert "signature" in mlmodel and "loader_module: mlflow.pytorch" in mlmodel
    assert (workdir / "out" / "student" / "data" / "model.pth").is_file()  # torch.fx trace
    assert (workdir / "out" / "student" / "input_example.json").is_file()

    script = """
import json, sys, torch, mlflow.pytorch
from kdsweep.data import DigitsData, load_splits
from kdsweep.nets import light_nn
from kdsweep.run.serving import raw_pixels
data = load_splits(DigitsData())
raw = raw_pixels(data.test_x, data.input_mean, data.input_std).round()  # digits: 0..16
model = mlflow.pytorch.load_model(sys.argv[1]).eval()
with torch.no_grad():
    acc = int((model(raw).argmax(1) == data.test_y).sum()) * 100.0 / len(data.test_y)
state = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
net = light_nn(data.input_shape, data.num_classes)
net.load_state_dict(state)
net.eval()
with torch.no_grad():
    acc2 = int((net(data.test_x).argmax(1) == data.test_y).sum()) * 100.0 / len(data.test_y)
print(json.dumps({"mlflow": acc, "state_dict": acc2}))
"""
    env = {**cli_env(), "MLFLOW_TRACKING_URI": uri}
    state_dict = workdir / "out" / "student" / "state_dict.pt"
    proc = subprocess.run(
        [sys.executable, "-c", script, f"runs:/{run_id}/student", str(state_dict)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    accs = json.loads(proc.stdout.strip().splitlines()[-1])
    logged = record.data.metrics["test_acc"]
    assert accs["mlflow"] == pytest.approx(logged, abs=1e-6)
    assert accs["state_dict"] == pytest.approx(logged, abs=1e-6)


def test_the_saved_student_says_how_to_normalize_new_images(logged_run: dict[str, Any]) -> None:
    """kdsweep.json (and the MLflow model's metadata) carry the per-channel mean and std the
    run normalized with: raw digits (integer pixels 0..16) normalized with them give the
    run's own test inputs, and the same predictions."""
    import mlflow.models
    import torch

    from kdsweep.data import DigitsData, load_splits
    from kdsweep.run.student import StudentSpec

    folder = logged_run["workdir"] / "out" / "student"
    info = json.loads((folder / "kdsweep.json").read_text())
    norm = info["input_normalization"]
    data = load_splits(DigitsData())
    assert norm["mean"] == pytest.approx(list(data.input_mean)) and len(norm["mean"]) == 1
    assert norm["std"] == pytest.approx(list(data.input_std)) and norm["std"][0] > 1
    meta = mlflow.models.Model.load(str(folder / "MLmodel")).metadata
    assert meta["kdsweep"]["input_normalization"]["mean"] == norm["mean"]

    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    raw = (data.test_x * std + mean).round()  # what a user holds: the images as loaded
    assert raw.min() >= 0 and raw.max() <= 16
    assert torch.allclose((raw - mean) / std, data.test_x, atol=1e-4)
    net = StudentSpec.from_dict(info).build()
    net.load_state_dict(torch.load(folder / "state_dict.pt", weights_only=True))
    net.eval()
    with torch.no_grad():
        mine = net.forward_with_hidden((raw - mean) / std)[0].argmax(1)
        runs = net.forward_with_hidden(data.test_x)[0].argmax(1)
    assert torch.equal(mine, runs)


@pytest.mark.usefixtures("tracked_workdir")  # tmp_path/mlflow.db seeded
def test_save_model_none_keeps_nothing(tmp_path: Path) -> None:
    assert run_main_in_process(tmp_path, "trainer.save_model=none", "loss=ce") == 0
    (record,) = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "student_save_bytes" not in record.data.metrics
    assert not mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(
        record.info.run_id, "student"
    )
    assert not (tmp_path / "out" / "student").exists()


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from kdsweep.evaluate import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_state_dict_and_export(
    logged_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from kdsweep.data import DigitsData, load_splits
    from kdsweep.nets import light_nn
    from kdsweep.run.serving import raw_pixels

    record = logged_run["run"]
    state_dict = logged_run["workdir"] / "out" / "student" / "state_dict.pt"
    exported = tmp_path / "student.pt2"
    code, out, err = _eval(capsys, str(state_dict), "--export", str(exported), "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert figures["test_acc"] == pytest.approx(record.data.metrics["test_acc"], abs=1e-6)
    assert figures["parameters"] == 21690  # LightNN on 1x8x8 digits, 10 classes
    assert figures["images_per_s"] > 0 and figures["test_loss"] > 0
    # The export loads on its own and gives the same logits as the state_dict's network;
    # it takes raw pixels, as the logged model does.
    data = load_splits(DigitsData())
    net = light_nn(data.input_shape, data.num_classes)
    net.load_state_dict(torch.load(state_dict, weights_only=True))
    program = torch.export.load(str(exported)).module()
    raw = raw_pixels(data.test_x[:37], data.input_mean, data.input_std)
    with torch.no_grad():
        assert torch.allclose(program(raw), net.eval()(data.test_x[:37]), atol=1e-5)


def test_eval_refuses_bad_inputs_in_one_line(
    logged_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from kdsweep.nets import light_nn

    uri = logged_run["uri"]
    run_id = logged_run["run"].info.run_id
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    hundred = tmp_path / "hundred.pt"
    torch.save(light_nn((1, 8, 8), 100).state_dict(), hundred)
    cases = {
        "models:/no-such-student@champion": ("not found",),
        str(corrupt): ("corrupt",),
        str(hundred): ("100 classes", "has 10"),
        f"runs:/{run_id}/student data=synthetic data.size=40 data.test_size=8": (
            "1x8x8",
            "3x32x32",
        ),
    }
    for argv, words in cases.items():
        code, out, err = _eval(capsys, *argv.split(), f"tracking.uri={uri}")
        assert code == 2, (argv, out, err)
        lines = [line for line in err.splitlines() if line.startswith("kdsweep-eval: error:")]
        assert len(lines) == 1, err
        assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.slow  # a 2-trial sweep: 36 s on 2 shared cores
@pytest.mark.usefixtures("tracked_workdir")  # tmp_path/mlflow.db seeded
def test_sweep_registers_the_champion_and_logs_its_teacher_once(
    tmp_path: Path, teacher_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdsweep.registry import register_champion, registry_client
    from kdsweep.sweep.arms import ranked_trials

    study = unique("reg")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = sweep_args(tmp_path, study, 2, SAVE, cache_dir=teacher_cache)
    proc = run_in_process(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]

    loaded = load_study(f"sqlite:///{tmp_path / 'optuna.db'}", study)
    ranked = ranked_trials(loaded)
    best = ranked[0]
    client = registry_client(uri)
    name = f"{study}-student"
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id == best.user_attrs["mlflow_run_id"]
    assert champion.tags["loss"] == "kd"
    assert champion.tags["teacher"].startswith("deep ")
    assert champion.tags["data_fingerprint"] not in ("", "unknown")
    assert "loss.temperature=" in champion.tags["config"]
    assert f"Best trial #{best.number}" in champion.description

    # The teacher: once, on the parent run; not on the trials.
    runs = mlflow_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    teacher_files = {a.path for a in client.list_artifacts(parent.info.run_id, "teacher")}
    assert "teacher/teacher.json" in teacher_files
    assert any(path.endswith(".pt") for path in teacher_files)
    assert parent.data.tags["kdsweep.teacher.key"] == champion.tags["teacher"].split()[-1]
    for child in children_of(runs, parent.info.run_id):
        assert not client.list_artifacts(child.info.run_id, "teacher")

    # kdsweep-eval on the registered model: the run's own test accuracy.
    code, out, err = _eval(capsys, f"models:/{name}@champion", f"tracking.uri={uri}", "--json")
    assert code == 0, err
    best_run = client.get_run(best.user_attrs["mlflow_run_id"])
    assert json.loads(out)["test_acc"] == pytest.approx(best_run.data.metrics["test_acc"])

    # A rerun whose best is another run adds a version and moves the alias; back again
    # reuses the first version.
    other = ranked[1]
    moved = register_champion(registry_client(uri), study, other)
    assert moved is not None and moved != str(champion.version)
    assert (
        client.get_model_version_by_alias(name, "champion").run_id
        == (other.user_attrs["mlflow_run_id"])
    )
    assert register_champion(registry_client(uri), study, best) == str(champion.version)
    assert client.get_model_version_by_alias(name, "champion").version == champion.version
    assert len(client.search_model_versions(f"name='{name}'")) == 2


@pytest.mark.slow
def test_registry_on_an_mlflow_server(
    tmp_path: Path,
    teacher_cache: Path,
    mlflow_server: tuple[str, Any],  # noqa: F811  (the fixture imported above)
) -> None:
    import torch

    from kdsweep.evaluate import load_uri
    from kdsweep.registry import registry_client

    url, _ = mlflow_server
    study = unique("srv")
    args = sweep_args(tmp_path, study, 2, SAVE, cache_dir=teacher_cache, tracking_uri=url)
    proc = run_in_process(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    champion = registry_client(url).get_model_version_by_alias(f"{study}-student", "champion")
    assert champion.run_id in {r.info.run_id for r in mlflow_runs(url)}
    loaded = load_uri(f"models:/{study}-student@champion", url)
    assert (loaded.input_shape, loaded.num_classes) == ([1, 8, 8], 10)
    assert loaded.model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
