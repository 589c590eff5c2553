"""The logged student through MLflow's own paths, raw pixels in, without kdsweep: pyfunc and
plain torch loading (in a process that cannot import kdsweep), ``kdsweep-eval``, and (slow)
``mlflow models predict`` and ``mlflow models serve`` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _helpers import mlflow_client, mlflow_runs
from conftest import cli_env, run_main_in_process

SERVE_START_SECONDS = 120  # the server imports torch and loads the model before /ping answers


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 1-epoch KD run on digits that keeps its student, and the raw test digits
    (integer pixels 0..16, as a user holds them) with their labels."""
    from kdsweep.data import DigitsData, load_splits
    from kdsweep.run.serving import raw_pixels

    workdir = tmp_path_factory.mktemp("served_student")
    assert run_main_in_process(workdir, "trainer.save_model=best") == 0
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    (record,) = mlflow_runs(uri)
    data = load_splits(DigitsData())
    raw = raw_pixels(data.test_x, data.input_mean, data.input_std).round().numpy()
    np.save(workdir / "raw.npy", raw)
    return {
        "workdir": workdir,
        "uri": uri,
        "run": record,
        "model": f"runs:/{record.info.run_id}/student",
        "raw": raw,
        "labels": data.test_y.numpy(),
        "env": {**cli_env(), "MLFLOW_TRACKING_URI": uri},
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((np.asarray(logits).argmax(1) == labels).sum()) / len(labels)


def pyfunc_logits(student: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """pyfunc's answer, from the run's output folder (the files it logged)."""
    import mlflow.pyfunc

    folder = student["workdir"] / "out" / "student"
    return mlflow.pyfunc.load_model(str(folder)).predict(images)


def test_signature_and_example_are_raw_pixels(student: dict[str, Any]) -> None:
    from mlflow.models import Model

    folder = student["workdir"] / "out" / "student"
    model = Model.load(str(folder / "MLmodel"))
    (images,) = model.signature.inputs.inputs
    assert images.name is None  # unnamed: pyfunc hands the array itself to the module
    assert list(images.shape) == [-1, 1, 8, 8] and images.type == np.dtype(np.float32)
    assert list(model.signature.outputs.inputs[0].shape) == [-1, 10]
    example = np.asarray(json.loads((folder / "serving_input_example.json").read_text())["inputs"])
    assert example.shape == (2, 1, 8, 8)
    assert example.min() >= 0 and example.max() <= 16 and example.max() > 1  # digits' scale
    assert json.loads((folder / "kdsweep.json").read_text())["format"] == "kdsweep-student/2"


def test_pyfunc_and_torch_agree_on_raw_digits_without_kdsweep(student: dict[str, Any]) -> None:
    """Both loaders in a process where kdsweep cannot be imported; the torch module takes
    .eval() and .to(device); the same logits, and the run's logged test accuracy."""
    script = """
import sys
sys.modules["kdsweep"] = None  # the model must load with MLflow and torch alone
import numpy as np, torch, mlflow.pyfunc, mlflow.pytorch
uri, raw_path, out = sys.argv[1:]
raw = np.load(raw_path)
served = mlflow.pyfunc.load_model(uri).predict(raw)
module = mlflow.pytorch.load_model(uri)
assert isinstance(module, torch.nn.Module)
module = module.eval().to("cpu")
with torch.no_grad():
    plain = module(torch.from_numpy(raw)).numpy()
np.savez(out, pyfunc=served, torch=plain)
"""
    workdir = student["workdir"]
    out = workdir / "predictions.npz"
    proc = subprocess.run(
        [sys.executable, "-c", script, student["model"], str(workdir / "raw.npy"), str(out)],
        cwd=workdir,
        env=student["env"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = np.load(out)
    served, plain = predictions["pyfunc"], predictions["torch"]
    assert served.shape == (len(student["labels"]), 10)
    assert np.array_equal(served.argmax(1), plain.argmax(1))
    np.testing.assert_allclose(served, plain, atol=1e-6)
    logged = student["run"].data.metrics["test_acc"]
    assert accuracy(served, student["labels"]) == pytest.approx(logged, abs=1e-6)


def test_kdsweep_eval_scores_the_logged_model_on_raw_pixels(
    student: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kdsweep-eval and its --export take raw pixels too, and agree with pyfunc."""
    import torch

    from kdsweep.evaluate import main

    exported = tmp_path / "student.pt2"
    main([student["model"], f"tracking.uri={student['uri']}", "--export", str(exported), "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["test_acc"] == pytest.approx(student["run"].data.metrics["test_acc"], abs=1e-6)
    assert figures["export_max_abs_diff"] < 1e-5
    raw = student["raw"][:50]
    with torch.no_grad():
        program = torch.export.load(str(exported)).module()(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(program, pyfunc_logits(student, raw), atol=1e-5)
    # MLflow's global URIs are left as found: a later client naming another store
    # registers there (a pinned registry once sent it to the evaluated store).
    from mlflow.tracking import MlflowClient

    other = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(tracking_uri=other).create_registered_model("elsewhere")
    registered = MlflowClient(tracking_uri=other, registry_uri=other).search_registered_models()
    assert [model.name for model in registered] == ["elsewhere"]


def test_export_never_replaces_a_file_silently_nor_blames_the_model(
    student: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing file is kept without --overwrite, a folder or a path under a file is
    one line naming --export (not the model), before any work; --overwrite replaces."""
    from kdsweep.evaluate import main

    existing = tmp_path / "kept.pt2"
    existing.write_bytes(b"mine")
    folder = tmp_path / "folder"
    folder.mkdir()
    under_a_file = existing / "student.pt2"
    base = [student["model"], f"tracking.uri={student['uri']}"]
    for path, says in [
        (existing, "exists: pass --overwrite"),
        (folder, "is a folder, not a file"),
        (under_a_file, "is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--export", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kdsweep-eval: error: --export {path}") and says in err, err
        assert err.count("\n") == 1 and "cannot export this model" not in err
    assert existing.read_bytes() == b"mine" and list(folder.iterdir()) == []
    main([*base, "--export", str(existing), "--overwrite"])
    assert existing.read_bytes() != b"mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.slow  # `mlflow models predict` starts a Python that imports MLflow and torch
def test_mlflow_models_predict_on_its_serving_example(student: dict[str, Any]) -> None:
    folder = student["workdir"] / "out" / "student"
    example = folder / "serving_input_example.json"
    out = student["workdir"] / "predict.json"
    command = ["mlflow", "models", "predict", "-m", student["model"], "-i", str(example)]
    proc = subprocess.run(
        [*command, "-t", "json", "-o", str(out), "--env-manager", "local"],
        cwd=student["workdir"],
        env=student["env"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = np.asarray(json.loads(out.read_text())["predictions"])
    images = np.asarray(json.loads(example.read_text())["inputs"], dtype=np.float32)
    np.testing.assert_allclose(predicted, pyfunc_logits(student, images), atol=1e-6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(url: str, payload: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a JSON POST when ``payload`` is given."""
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=payload, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVE_START_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow models serve exited: {log.read_text()[-3000:]}"
        try:
            if http(f"{url}/ping")[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"no /ping answer in {SERVE_START_SECONDS} s: {log.read_text()[-3000:]}")


@pytest.mark.slow  # starts `mlflow models serve`: about 15 s on 2 shared cores
def test_mlflow_models_serve_answers_raw_digits(student: dict[str, Any]) -> None:
    """The student registered as a champion, served by MLflow's scoring server: raw digits
    get the run's accuracy, the same predictions as pyfunc, and the model's own serving
    example is answered."""
    client = mlflow_client(student["uri"])
    name = "served-student"
    client.create_registered_model(name)
    version = client.create_model_version(name, student["model"], student["run"].info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = student["workdir"] / "serve.log"
    command = ["mlflow", "models", "serve", "-m", f"models:/{name}@champion"]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*command, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=student["workdir"],
            env=student["env"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers go with it
        )
    try:
        wait_until_serving(proc, url, log)
        raw, labels = student["raw"], student["labels"]
        status, body = http(f"{url}/invocations", json.dumps({"inputs": raw.tolist()}).encode())
        assert status == 200, body[:500]
        served = np.asarray(json.loads(body)["predictions"])
        assert served.shape == (len(labels), 10)
        assert np.array_equal(served.argmax(1), pyfunc_logits(student, raw).argmax(1))
        logged = student["run"].data.metrics["test_acc"]
        assert accuracy(served, labels) == pytest.approx(logged, abs=1e-6)

        example = student["workdir"] / "out" / "student" / "serving_input_example.json"
        status, body = http(f"{url}/invocations", example.read_bytes())
        assert status == 200, body[:500]
        assert np.asarray(json.loads(body)["predictions"]).shape == (2, 10)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (MLflow's CLI and its uvicorn workers), then,
    after a bounded wait, SIGKILL to whatever is left of it."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        proc.poll()  # reap the CLI, or the group never looks empty
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)
