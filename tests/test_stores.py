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
def silent_server() -> Iterator[str]:
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
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


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
