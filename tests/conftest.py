"""Shared fixtures and helpers for kdsweep's tests.

Helpers (plain functions, import them with ``from conftest import ...`` or use the
fixtures that wrap them):

- ``compose_config(*overrides)``: Hydra's compose API over kdsweep's real ``conf/``.
- ``settings_for(*overrides)``: the same, validated into ``kdsweep.validation.Settings``.
- ``isolated_overrides(workdir)``: overrides that keep a run's MLflow database, teacher
  cache and Hydra output directory inside ``workdir`` and make it fast (1 epoch each).
- ``run_cli(workdir, *overrides)``: ``python -m kdsweep`` as a subprocess (exit codes,
  stderr); ``start_cli`` is the non-blocking variant, to run several at once.
- ``run_main_in_process(workdir, *overrides)``: the real ``@hydra.main`` entry point,
  called in this process (no ~2-5 s interpreter, torch and Hydra start-up); returns its
  exit code. ``run_cli_in_process`` is ``run_cli`` that way: same arguments, same result
  (exit code, captured stdout/stderr), for tests where the process itself is not under test.
- ``write_tiny_cifar(root, ...)``: a small data set in the CIFAR-10/100 on-disk format.
- ``mlflow_runs(db_path)``: every run in a SQLite MLflow database ([] if there is none).
- fixture ``empty_mlflow_db``: a schema-only MLflow database to copy where a run tracks;
  ``tracked_workdir``: ``tmp_path`` with that copy where ``isolated_overrides`` track.
- fixture ``teacher_cache``: a cache_dir with the FAST digits teacher, trained once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig

from kdsweep.config.folder import config_dir
from kdsweep.config.validation import Settings, validate

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Overrides that make any run finish in seconds on a CPU (digits is the default data).
#: No saved student (torch.export costs a process 2-4 s the first time): tests/test_student.py
#: sets trainer.save_model=best where the student is what it tests.
FAST = (
    "trainer.epochs=1",
    "teacher.epochs=1",
    "trainer.progress=none",
    "trainer.device=cpu",
    "trainer.save_model=none",
)


def compose_config(*overrides: str) -> DictConfig:
    """Compose kdsweep's ``config.yaml`` with Hydra's compose API, as the CLI would
    (without the ``hydra`` node). Works whether or not a GlobalHydra is already set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), job_name="test"):
        return compose(config_name="config", overrides=list(overrides))


def settings_for(*overrides: str) -> Settings:
    """``compose_config`` then ``kdsweep.validation.validate`` (raises ConfigError)."""
    return validate(compose_config(*overrides))


def db_path(workdir: Path) -> Path:
    """Where ``isolated_overrides(workdir)`` puts the MLflow SQLite database."""
    return Path(workdir) / "mlflow.db"


def isolated_overrides(workdir: Path, run_dir: str = "out", fast: bool = True) -> list[str]:
    """Overrides that keep everything a run writes under ``workdir``: tracking.uri (SQLite
    file ``db_path(workdir)``), cache_dir (``workdir/cache``) and hydra.run.dir
    (``workdir/<run_dir>``); plus ``FAST`` unless ``fast=False``."""
    workdir = Path(workdir)
    out = [
        f"tracking.uri=sqlite:///{db_path(workdir)}",
        f"cache_dir={workdir / 'cache'}",
        f"hydra.run.dir={workdir / run_dir}",
    ]
    return out + (list(FAST) if fast else [])


# Hydra's command-line options that take a value (the next argument).
_OPTIONS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}


def cli_args(workdir: Path | None, overrides: tuple[str, ...] | list[str]) -> list[str]:
    """Hydra's flags (``-m``, ``--cfg job``, ...) from ``overrides`` first, then
    ``isolated_overrides(workdir)`` (unless ``workdir`` is None), then the other overrides,
    which win over the isolated ones. Hydra's parser refuses overrides on both sides of
    a flag."""
    flags: list[str] = []
    rest: list[str] = []
    items = list(overrides)
    while items:
        arg = items.pop(0)
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _OPTIONS_WITH_VALUE and items:
                flags.append(items.pop(0))
        else:
            rest.append(arg)
    isolated = isolated_overrides(workdir) if workdir is not None else []
    return flags + isolated + rest


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)  # Hydra would print full tracebacks
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_cli(
    workdir: Path, *overrides: str, isolate: bool = True, **popen: Any
) -> subprocess.Popen:
    """Start ``python -m kdsweep <overrides>`` with cwd ``workdir`` (so MLflow's default
    ``./mlruns`` artifact folder lands there too) and pipes for stdout/stderr (unless
    ``popen`` sends them elsewhere). With ``isolate`` the ``isolated_overrides(workdir)``
    are added (see ``cli_args``): the given overrides win over them; flags such as ``-m``
    may be given anywhere."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args = cli_args(workdir if isolate else None, overrides)
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(
        [sys.executable, "-m", "kdsweep", *args], cwd=workdir, env=cli_env(), **options
    )


def finish_cli(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    """Wait for a ``start_cli`` process; its (returncode, stdout, stderr)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(
    workdir: Path, *overrides: str, isolate: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess:
    """Run ``python -m kdsweep`` to completion (see ``start_cli``); returns the
    CompletedProcess with text ``stdout``/``stderr`` and ``returncode``."""
    return finish_cli(start_cli(workdir, *overrides, isolate=isolate), timeout)


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """Hydra's entry point reconfigures the root logger (console + job-file handlers);
    put the handlers and levels back afterwards so later tests log normally."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {name: (lg.level, lg.propagate, list(lg.handlers)) for name, lg in _loggers()}
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                with contextlib.suppress(Exception):
                    handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lg in _loggers():
            if name in named:
                lg.level, lg.propagate, lg.handlers[:] = named[name]
            else:
                lg.disabled = False


def _loggers() -> list[tuple[str, logging.Logger]]:
    manager = logging.Logger.manager
    return [(n, lg) for n, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)]


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """What a command changes for its whole process, put back for the tests that follow:
    kdsweep's SIGINT/SIGTERM handlers and unraisable hook, and torch's thread count
    (trainer.threads)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    unraisablehook = sys.unraisablehook
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisablehook
        if threads is not None:
            sys.modules["torch"].set_num_threads(threads)


def run_main_in_process(workdir: Path, *overrides: str, isolate: bool = True) -> int:
    """Call the real CLI entry (``kdsweep.main.main``, i.e. ``@hydra.main``) in this
    process with cwd ``workdir``; returns the exit code (0 on success). Logging, signal
    handlers and torch's thread count are restored afterwards; Hydra's job log is
    ``<hydra.run.dir>/*.log``. ``overrides`` as for ``run_cli`` (see ``cli_args``)."""
    from hydra.core.global_hydra import GlobalHydra

    from kdsweep.main import main

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args = cli_args(workdir if isolate else None, overrides)
    GlobalHydra.instance().clear()
    with pytest.MonkeyPatch.context() as mp, restored_logging(), restored_process_state():
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["kdsweep", *args])
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        try:
            main()
        except SystemExit as exc:
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            GlobalHydra.instance().clear()
    return 0


def run_cli_in_process(
    workdir: Path, *overrides: str, isolate: bool = True
) -> subprocess.CompletedProcess:
    """``run_cli`` without the subprocess: ``run_main_in_process`` with stdout and stderr
    captured, returned as the same CompletedProcess. An exception that escapes the entry
    point is written to stderr as its traceback, with exit code 1, as the interpreter
    would; the (console) logging Hydra sets up writes into the captured streams."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = run_main_in_process(workdir, *overrides, isolate=isolate)
        except Exception:
            traceback.print_exc()
            code = 1
    args = ["kdsweep", *cli_args(Path(workdir) if isolate else None, overrides)]
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def job_log(run_dir: Path) -> str:
    """The text of Hydra's job log file(s) in a run directory."""
    return "".join(p.read_text() for p in sorted(Path(run_dir).glob("*.log")))


def mlflow_runs(db: Path) -> list[Any]:
    """All runs (any experiment, any state) in the SQLite MLflow database ``db``; [] when
    the file does not exist. Does not create the file."""
    db = Path(db)
    if not db.exists():
        return []
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = client.search_experiments(view_type=ViewType.ALL)
    if not experiments:
        return []
    return client.search_runs(
        [e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=1000
    )


def _pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def write_tiny_cifar(
    root: Path,
    kind: str = "cifar10",
    per_batch: int = 8,
    test_size: int = 10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a small data set in torchvision's CIFAR on-disk format under ``root``.

    cifar10: ``cifar-10-batches-py/data_batch_1..5`` (``per_batch`` images each),
    ``test_batch`` and ``batches.meta`` (key ``label_names``). cifar100:
    ``cifar-100-python/train`` (``5 * per_batch`` images), ``test`` and ``meta`` (key
    ``fine_label_names``; entries carry ``fine_labels``). Entries are dicts with str keys
    (torchvision unpickles the official Python-2 files with latin1, giving str keys) and
    ``data`` as uint8 rows of 3072 (1024 R, 1024 G, 1024 B, row-major).
    The checksums do not match the official ones: load with ``data.verify_checksum=false``.

    Returns the raw arrays: ``train_x``/``test_x`` uint8 N x 3 x 32 x 32 and
    ``train_y``/``test_y``, in file order.
    """
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    n_train = 5 * per_batch
    train_x = rng.integers(0, 256, size=(n_train, 3, 32, 32), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(test_size, 3, 32, 32), dtype=np.uint8)
    train_y = rng.integers(0, classes, size=n_train)
    test_y = rng.integers(0, classes, size=test_size)
    rows = lambda x: x.reshape(len(x), 3072)  # noqa: E731 - CHW row-major is the format
    if kind == "cifar10":
        base = Path(root) / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        for i in range(5):
            part = slice(i * per_batch, (i + 1) * per_batch)
            _pickle(
                base / f"data_batch_{i + 1}",
                {"data": rows(train_x[part]), "labels": train_y[part].tolist()},
            )
        _pickle(base / "test_batch", {"data": rows(test_x), "labels": test_y.tolist()})
        _pickle(base / "batches.meta", {"label_names": [f"class{i}" for i in range(classes)]})
    elif kind == "cifar100":
        base = Path(root) / "cifar-100-python"
        base.mkdir(parents=True, exist_ok=True)
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _pickle(
                base / name,
                {"data": rows(x), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()},
            )
        _pickle(base / "meta", {"fine_label_names": [f"class{i}" for i in range(classes)]})
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def compose() -> Any:
    """``compose(*overrides) -> DictConfig`` (see ``compose_config``)."""
    return compose_config


@pytest.fixture
def settings() -> Any:
    """``settings(*overrides) -> Settings`` (see ``settings_for``)."""
    return settings_for


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with MLflow's schema and nothing else (its Default
    experiment), made once per session. A test copies it (``shutil.copyfile``) to where its
    run will track: MLflow's schema migrations cost a new database 2-4 s each time."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracked_workdir(tmp_path: Path, empty_mlflow_db: Path) -> Path:
    """``tmp_path`` with a copy of ``empty_mlflow_db`` at ``db_path(tmp_path)``, where
    ``isolated_overrides(tmp_path)`` track: a run there skips MLflow's migrations."""
    shutil.copyfile(empty_mlflow_db, db_path(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def cached_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint of the 1-epoch digits teacher every FAST kd run uses, trained once
    per test session (in this process) so runs and sweeps in many tests do not each train
    it. Defined here, not imported into test modules: an imported fixture is set up once
    per module that imports it."""
    import torch

    from kdsweep.data import load_splits
    from kdsweep.training.teacher import prepare_teacher

    cache = tmp_path_factory.mktemp("teacher_cache")
    settings = settings_for("teacher.epochs=1", f"cache_dir={cache}")
    return prepare_teacher(settings, load_splits(settings.data), torch.device("cpu")).path


@pytest.fixture(scope="session")
def teacher_cache(cached_teacher: Path) -> Path:
    """The cache_dir holding ``cached_teacher`` (tests that share it may add other
    teachers there: name ``cached_teacher`` for that one's file)."""
    return cached_teacher.parents[1]


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Any:
    """``tiny_cifar(kind="cifar10", **kw) -> (root, raw arrays)``: ``write_tiny_cifar``
    into a fresh folder under ``tmp_path``."""

    def make(kind: str = "cifar10", **kwargs: Any) -> tuple[Path, dict[str, np.ndarray]]:
        root = tmp_path / f"data-{kind}"
        return root, write_tiny_cifar(root, kind, **kwargs)

    return make


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    """``cli(*overrides) -> CompletedProcess``: ``run_cli`` in ``tmp_path``."""

    def call(*overrides: str, **kwargs: Any) -> subprocess.CompletedProcess:
        return run_cli(tmp_path, *overrides, **kwargs)

    return call


@pytest.fixture(autouse=True)
def _process_state_restored() -> Iterator[None]:
    """A command called in this process (report_cli.main, evaluate.main) installs kdsweep's
    signal handlers from its boundary: pytest's are put back after every test."""
    with restored_process_state():
        yield
