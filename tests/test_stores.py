"""Stores that cannot be used fail fast, in one line naming the key: a tracking database
that refuses the login or does not exist, a tracking server that accepts a connection and
never answers. MLflow's own client retried these for 100-250 s. Processes started
together on a new store create it once: none fails, and the store is whole."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _helpers import postgres_url_fixture  # noqa: F401  (the postgres_url fixture)
from kdsweep.config.schema import TrackingConf
from kdsweep.core.errors import KdsweepError
from kdsweep.run.tracking import PROBE_TIMEOUT_S, RunTracker

# Far below the minutes MLflow's retries took, far above one probe's timeout.
FAST_ENOUGH_S = 6 * PROBE_TIMEOUT_S


def _check_fails(uri: str) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(KdsweepError) as caught:
        RunTracker(TrackingConf(uri=uri), "run").check()
    return str(caught.value), time.monotonic() - started


@pytest.mark.postgres
@pytest.mark.parametrize(
    "change", ["role", "database"], ids=["a role that does not exist", "a missing database"]
)
def test_a_tracking_database_that_refuses_fails_at_once(postgres_url: str, change: str) -> None:
    head, _, database = postgres_url.rpartition("/")
    if change == "role":
        scheme, _, rest = head.partition("://")
        uri = f"{scheme}://nobody:s3cret@{rest.partition('@')[2]}/{database}"
    else:
        uri = f"{head}/kdsweep_no_such_database"
    message, seconds = _check_fails(uri)
    assert seconds < FAST_ENOUGH_S
    assert message.startswith("MLflow does not answer at tracking.uri=") and "\n" not in message
    assert "s3cret" not in message and ("nobody" in message or "no_such_database" in message)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.fixture
def silent_server(silent_port: int) -> str:
    return f"http://127.0.0.1:{silent_port}"


@pytest.mark.slow  # waits out the store's timeout: ~5 s
def test_a_tracking_server_that_never_answers_fails_within_seconds(silent_server: str) -> None:
    message, seconds = _check_fails(silent_server)
    assert seconds < FAST_ENOUGH_S
    assert "timed out" in message and "tracking.uri" in message and "\n" not in message


def _first_client(uri: str, barrier: Any, results: Any) -> None:
    """One job's first touch of a new store: its client, an experiment and a run."""
    from kdsweep.run.tracking import client_for

    barrier.wait()
    try:
        client = client_for(uri)
        client.create_run(client.create_experiment(f"job-{multiprocessing.current_process().pid}"))
        results.put("ok")
    except Exception as exc:  # the test reports what each process met
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


@pytest.mark.slow  # MLflow's migrations of a new database alone take seconds
def test_processes_started_together_on_a_new_mlflow_db_all_succeed(tmp_path: Path) -> None:
    """Four jobs of a parallel launcher (or two sweeps) touching a new mlflow.db at once:
    without the creation lock, MLflow's migrations ran in each and all but one failed
    ("table metrics already exists", "Online migration expected to match one row"),
    leaving the store half-migrated for every later run."""
    from kdsweep.core.stores import sqlite_tables
    from kdsweep.run.tracking import client_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # fork: the children start with MLflow imported, so they reach the store together.
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_first_client, args=(uri, barrier, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert sorted(results.get(timeout=5) for _ in workers) == ["ok"] * 4
    assert not [t for t in sqlite_tables(tmp_path / "mlflow.db") if t.startswith("_alembic_tmp")]
    assert len(client_for(uri).search_experiments()) == 5  # Default and the four jobs'


# What every command that meets a store that does not answer must do: one line, exit 2,
# within seconds (the goal is under 10 s; the bound leaves room for a loaded machine). A
# silent HTTP server meets the same probe as in the test above.
COMMAND_BOUND_S = 20.0
STORES_THAT_DO_NOT_ANSWER = {
    "a closed port": "http://127.0.0.1:1",
    "a closed PostgreSQL port": "postgresql://postgres@127.0.0.1:1/test",
    "a silent PostgreSQL server": "postgresql://postgres@127.0.0.1:{port}/test",
}


def _one_line_exit_2(command: Any, capsys: pytest.CaptureFixture[str]) -> str:
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        code = command()
        raise SystemExit(code)
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and seconds < COMMAND_BOUND_S, (seconds, err)
    assert "\n" not in err and "Traceback" not in err, err
    return err


# A silent server costs the whole connect timeout (5 s): the slow run covers it; the
# closed ports answer at once and stay in the default run.
@pytest.mark.parametrize(
    "store",
    [
        pytest.param(url, id=name, marks=[pytest.mark.slow] if "{port}" in url else [])
        for name, url in STORES_THAT_DO_NOT_ANSWER.items()
    ],
)
def test_kdsweep_eval_fails_fast_on_a_tracking_store_that_does_not_answer(
    store: str, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """kdsweep-eval answered after 253 s (a closed port), not within 150 s (a silent
    server), with a traceback after 110 s (a closed PostgreSQL port)."""
    from kdsweep.evaluate import main

    uri = store.format(port=silent_port)
    err = _one_line_exit_2(lambda: main(["runs:/0123/student", f"tracking.uri={uri}"]), capsys)
    assert err.startswith("kdsweep-eval: error: MLflow does not answer at tracking.uri="), err


@pytest.mark.slow  # the whole connect timeout (5 s)
def test_kdsweep_report_fails_fast_on_a_storage_that_does_not_answer(
    silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdsweep.report_cli import main

    url = f"postgresql://postgres@127.0.0.1:{silent_port}/test"
    err = _one_line_exit_2(lambda: main(["--storage", url, "--list"]), capsys)
    assert err.startswith("kdsweep-report: error:") and "timeout" in err, err


def test_kdsweep_report_list_writes_nothing_beside_the_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--list left optuna.db.lock.init beside the database (and failed where the folder
    was read-only: it could not make that file)."""
    import optuna

    from kdsweep.report_cli import main

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=url, study_name="listed").enqueue_trial({"x": 1.0})
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(["--storage", url, "--list"]) == 0
    assert "listed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_tracking_file_that_cannot_be_created_fails_at_the_check(tmp_path: Path) -> None:
    """A new mlflow.db where no file can be made (a read-only folder; here, under a file)
    is one line before the run's data and teacher, not MLflow's retries at its start."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    message, seconds = _check_fails(f"sqlite:///{blocker / 'mlflow.db'}")
    assert seconds < FAST_ENOUGH_S and "\n" not in message
    assert message.startswith(f"tracking.uri=sqlite:///{blocker / 'mlflow.db'}: cannot create")
