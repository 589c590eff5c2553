"""Stores that cannot be used fail fast, in one line naming the key: a tracking database
that refuses the login or does not exist, a tracking server that accepts a connection and
never answers. MLflow's own client retried these for 100-250 s."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

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
