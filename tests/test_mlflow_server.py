"""kdsweep against a real MLflow tracking server (``mlflow server`` on 127.0.0.1): runs
are read back over HTTP; a server that dies mid-run costs the run its tracking, not its
result, which is kept in the job's results.json."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import (
    FAST,
    finish,
    kill_group,
    mlflow_client,
    mlflow_runs,
    run_in_process,
    start,
    wait_for,
)
from conftest import cli_env

FAILURE_LINE = "MLflow tracking at"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A tracking server with a SQLite backend and proxied artifacts, bound to 127.0.0.1
    only; killed (its whole process group) however the test ends."""
    from _helpers import free_port

    port = free_port()
    home = tmp_path / "server"
    home.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{home / 'srv.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
        ],
        cwd=home,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=(home / "server.log").open("w"),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), 120, f"the MLflow server at {url}", proc)
        yield url, proc
    finally:
        kill_group(proc)
        proc.wait(timeout=30)


def _run_args(tmp_path: Path, url: str, cache: Path, *extra: str) -> list[str]:
    return [
        f"tracking.uri={url}",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *FAST,
        *extra,
    ]


@pytest.mark.slow  # starts an MLflow server: ~12 s
def test_run_is_read_back_from_the_server(
    tmp_path: Path, mlflow_server: tuple[str, subprocess.Popen], teacher_cache: Path
) -> None:
    url, _ = mlflow_server
    args = _run_args(tmp_path, url, teacher_cache, "tracking.run_name=on-server")
    proc = run_in_process(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert FAILURE_LINE not in proc.stdout + proc.stderr

    (record,) = mlflow_runs(url)
    run_ = mlflow_client(url).get_run(record.info.run_id)
    assert run_.info.status == "FINISHED"
    assert run_.info.run_name == "on-server"
    assert run_.data.params["loss.name"] == "kd"
    assert run_.data.params["trainer.epochs"] == "1"
    for name in ("objective", "best_val_acc", "test_acc", "teacher_val_acc"):
        assert 0.0 <= run_.data.metrics[name] <= 100.0, name
    # The local record agrees with the server.
    local = json.loads((tmp_path / "out" / "results.json").read_text())
    assert local["run_id"] == run_.info.run_id
    assert local["metrics"]["test_acc"] == pytest.approx(run_.data.metrics["test_acc"])
    # Artifacts go through the server too.
    names = [a.path for a in mlflow_client(url).list_artifacts(run_.info.run_id)]
    assert "config.yaml" in names


@pytest.mark.slow
def test_server_dying_mid_run_keeps_the_result_locally(
    tmp_path: Path, mlflow_server: tuple[str, subprocess.Popen], teacher_cache: Path
) -> None:
    url, server = mlflow_server
    job = start(tmp_path, _run_args(tmp_path, url, teacher_cache, "trainer.epochs=15"))
    try:
        (started,) = wait_for(lambda: mlflow_runs(url), 300, "the run on the server", job)
        assert job.poll() is None, "the run ended before the server could be stopped"
        kill_group(server)
        server.wait(timeout=30)
        assert not _healthy(url)
        done = finish(job, timeout=600)
    finally:
        kill_group(job)

    # Training finished: exit 0, and the result is on disk.
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    failure_lines = [line for line in output.splitlines() if FAILURE_LINE in line]
    assert len(failure_lines) == 1, output[-3000:]  # said once, not per epoch
    assert url in failure_lines[0]
    assert "Traceback" not in output

    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["run_id"] == started.info.run_id  # which MLflow run the record belongs to
    assert record["status"] == "FINISHED"
    assert record["tracking_error"]
    assert 0.0 <= record["metrics"]["test_acc"] <= 100.0
    assert 0.0 <= record["metrics"]["objective"] <= 100.0
    assert len(record["history"]) == 15  # every epoch, including those after the failure
    assert record["params"]["trainer.epochs"] == "15"
    # The job's log file says it too.
    logs = "".join(p.read_text() for p in (tmp_path / "out").glob("*.log"))
    assert sum(FAILURE_LINE in line for line in logs.splitlines()) == 1
