"""Helpers for the reliability and scale-out tests (test_resume, test_workers,
test_mlflow_server, test_bad_inputs, test_security, test_atomic).

Everything a sweep or run writes stays under the test's own directory; processes are
started in their own session so a test can kill a whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST, run_cli_in_process, start_cli

POSTGRES_URL = os.environ.get("KDSWEEP_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def unique(prefix: str) -> str:
    """A study name no other test run (or earlier run on a shared server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sweep_args(
    workdir: Path,
    study: str,
    n_trials: int,
    *extra: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    cache_dir: Path | None = None,
) -> list[str]:
    """A kd sweep on digits (1 epoch, no baseline) whose outputs stay in ``workdir``;
    later ``extra`` overrides win."""
    workdir = Path(workdir)
    storage = storage or f"sqlite:///{workdir / 'optuna.db'}"
    tracking_uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    return [
        "-m",
        "hparams_search=kd",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.report_dir={workdir / 'reports'}",
        "hydra.sweeper.baselines=false",
        "hydra.sweeper.confirm.enabled=false",  # tests/test_confirm.py covers that stage
        f"hydra.sweep.dir={workdir / 'multirun'}",
        f"tracking.uri={tracking_uri}",
        f"cache_dir={cache_dir or workdir / 'cache'}",
        *FAST,
        *extra,
    ]


def start(workdir: Path, args: list[str], **popen: Any) -> subprocess.Popen:
    """``python -m kdsweep ARGS`` in ``workdir``, in a new session (its own process
    group), stdout and stderr piped as text: conftest.start_cli without its isolation."""
    return start_cli(workdir, *args, isolate=False, start_new_session=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s; stderr:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(workdir: Path, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return finish(start(workdir, args), timeout)


def run_in_process(workdir: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``run`` without the subprocess (conftest.run_cli_in_process): the same exit code,
    stdout and stderr, without ~2-5 s of interpreter, torch and Hydra start-up. For tests
    of what a command does, not of the process (signals, process groups, timeouts)."""
    return run_cli_in_process(workdir, *args, isolate=False)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group ``start`` created (the sweeper and every child)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def group_alive(pgid: int) -> bool:
    """Any process left in process group ``pgid`` (a sweeper's, with its workers or
    launcher children; Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s or
    when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"process exited ({proc.returncode}) before {what}:\n{err[-3000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def load_trials(storage: str, study: str) -> list[Any]:
    """The study's trials (FrozenTrial) read from its storage; [] if it does not exist yet."""
    from kdsweep.sweep.studies import open_storage

    backend = open_storage(storage)
    try:
        study_id = backend.get_study_id_from_name(study)
    except KeyError:
        return []
    return backend.get_all_trials(study_id, deepcopy=False)


def load_study(storage: str, study: str) -> Any:
    import optuna

    from kdsweep.sweep.studies import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(storage))


def states(trials: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_runs(uri: str) -> list[Any]:
    """Every run (any experiment, any state) behind ``uri``; [] when a SQLite file does
    not exist (it is not created)."""
    from mlflow.entities import ViewType

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return []
    client = mlflow_client(uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    if not experiments:
        return []
    return client.search_runs(
        [e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=5000
    )


def children_of(runs: list[Any], parent_id: str) -> list[Any]:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_available(url: str = POSTGRES_URL) -> str | None:
    """None if the server answers, else why not."""
    try:
        import psycopg2

        conn = psycopg2.connect(url, connect_timeout=5)
        conn.close()
        return None
    except Exception as exc:  # no driver, no server, refused login
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


@pytest.fixture(name="postgres_url")
def postgres_url_fixture() -> str:
    """The PostgreSQL URL for tests marked ``postgres``. Skips when no server answers,
    unless KDSWEEP_REQUIRE_POSTGRES is set (CI): then a missing server fails the test."""
    problem = postgres_available()
    if problem is not None:
        if os.environ.get("KDSWEEP_REQUIRE_POSTGRES"):
            pytest.fail(
                f"KDSWEEP_REQUIRE_POSTGRES is set but {POSTGRES_URL} is unusable: {problem}"
            )
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {problem}")
    return POSTGRES_URL


@pytest.fixture(name="fresh_postgres_db")
def fresh_postgres_db_fixture(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database (dropped afterwards): what N workers
    meet when they are started together on a new study server."""
    import psycopg2

    name = f"kdsweep_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_url, connect_timeout=5)
    admin.autocommit = True
    try:
        admin.cursor().execute(f"CREATE DATABASE {name}")
    except Exception as exc:
        admin.close()
        problem = f"cannot create a database on {postgres_url}: {exc}".strip()
        if os.environ.get("KDSWEEP_REQUIRE_POSTGRES"):
            pytest.fail(problem)
        pytest.skip(problem)
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(Exception):
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def drop_study(storage: str, study: str) -> None:
    """Remove a study from a shared server so test runs do not pile up."""
    import optuna

    from kdsweep.sweep.studies import open_storage

    with contextlib.suppress(Exception):
        optuna.delete_study(study_name=study, storage=open_storage(storage))


@pytest.fixture(scope="session", name="teacher_cache")
def teacher_cache_fixture(teacher_cache: Path) -> Path:
    """conftest's ``teacher_cache``, for modules that still import this name: a fixture
    imported into a module is set up once per module, so the teacher is not trained here."""
    return teacher_cache


def compose(*overrides: str) -> Any:
    """kdsweep's config.yaml composed with Hydra's compose API (no hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdsweep.config.folder import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), job_name="test"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
