"""MLflow runs through the client API (no global "active run"), so in-process sweep trials,
their parent and other processes never trip over each other's state.

A run must never hide a training result: if the tracking server fails mid-run, the tracker
says so in one line, stops calling MLflow, and the run goes on; everything it would have
logged is kept in ``results.json`` beside the job's outputs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from kdsweep.config.schema import TrackingConf
from kdsweep.core.errors import KdsweepError, first_line
from kdsweep.core.files import atomic_write_text, directory_problem
from kdsweep.core.secrets import mask_secrets
from kdsweep.core.signals import check_interrupt
from kdsweep.core.stores import (
    CONNECT_TIMEOUT_S,
    WHOSE,
    attempt,
    existing_store_kind,
    half_created_sqlite,
    storage_file,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=8)
def client_for(uri: str) -> Any:
    from kdsweep.core.masked_client import tracking_client  # imports MLflow

    return tracking_client(uri)


# MLflow 3 opens an experiment on its runs, not on the GenAI overview, when its kind says
# it holds model training (the tag MLflow's UI reads).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: Any, name: str) -> str:
    """Get or create (as a model-training experiment); two workers creating the same
    experiment at once is expected."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        if "mlflow.experimentKind" not in existing.tags:  # a kind the user chose stays
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(existing.experiment_id, key, value)
        return existing.experiment_id
    created, error = attempt(lambda: client.create_experiment(name, tags=EXPERIMENT_KIND))
    if created is not None:
        return created
    existing = client.get_experiment_by_name(name)  # another worker's, made just before
    if existing is None:
        raise KdsweepError(
            f"cannot create the MLflow experiment {name!r} ({first_line(error)}): fix"
            " tracking.experiment"
        ) from error
    return existing.experiment_id


# -- the failure policy of every MLflow call ---------------------------------------------
# Before any work starts, a failed MLflow call is one line naming tracking.uri and the
# command stops (exit 2): nothing was trained, nothing is left half-done. Once work has
# begun, it is one line in the log; the work goes on, its records kept locally, and the
# caller leaves MLflow alone for the rest of that work: a result is never lost to MLflow.
UNTRACKED = "(tracking.enabled=false runs untracked)"


def mlflow_required(uri: str, what: str, call: Callable[[], T]) -> T:
    """``call()`` before any work: its failure is the command's one-line error."""
    result, error = attempt(call)
    if error is not None:
        raise KdsweepError(
            f"cannot {what} at tracking.uri={uri} ({first_line(error)}): start the server or"
            f" fix tracking.uri {UNTRACKED}"
        ) from error
    return result  # type: ignore[return-value]  (None only as call()'s own result)


def mlflow_best_effort(uri: str, consequence: str, call: Callable[[], object]) -> str | None:
    """``call()`` once work has begun: its failure is one line in the log, saying what it
    costs (``consequence``); returned so that the caller stops calling MLflow."""
    _, error = attempt(call)
    if error is None:
        return None
    line = first_line(error)
    log.error("MLflow tracking at %s failed (%s): %s", uri, line[:200], consequence)
    return line


class RunTracker:
    """One MLflow run. ``start`` fails loudly (nothing was trained yet); later calls
    degrade to local records if MLflow breaks."""

    def __init__(
        self,
        conf: TrackingConf,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        local_dir: str | Path = ".",
    ) -> None:
        self.conf = conf
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id
        self.local_path = Path(local_dir) / "results.json"
        self.run_id: str | None = None
        self.broken: str | None = None
        # The run name is kept whether or not MLflow tracks the run: the multirun tables
        # (kdsweep.callbacks) group the jobs' results.json records by it.
        self.record: dict[str, Any] = {
            "run_name": run_name,
            "params": {},
            "metrics": {},
            "tags": {},
            "history": [],
        }

    # -- lifecycle -----------------------------------------------------------------------
    def check(self) -> None:
        """Fail now if the tracking store cannot be used: before the data, the teacher
        and the student cost minutes (check_store)."""
        if self.conf.enabled:
            check_store(self.conf.uri)

    def start(self) -> None:
        if not self.conf.enabled:
            return
        tags = dict(self.tags)
        tags["mlflow.runName"] = self.run_name
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit

        def create() -> Any:
            client = client_for(self.conf.uri)
            return client.create_run(experiment_id(client, self.conf.experiment), tags=tags)

        run = mlflow_required(self.conf.uri, "start an MLflow run", create)
        self.run_id = run.info.run_id
        self.record["run_id"] = self.run_id
        self.record["tags"].update(tags)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run in MLflow (never left RUNNING if MLflow answers) and write the
        local record."""
        self.record["status"] = status
        if error:
            self.set_tags({"error": error})
        if self.broken:
            self._end_untracked(status, error)
        else:
            self._call(lambda c: c.set_terminated(self.run_id, status=status))
        try:
            # The local record's boundary, as MaskedClient is MLflow's.
            text = mask_secrets(json.dumps(self.record, indent=2, default=str))
            atomic_write_text(self.local_path, text)
        except OSError as exc:
            log.warning("could not write %s: %s", self.local_path, exc)

    def _end_untracked(self, status: str, error: str | None) -> None:
        """A run whose tracking broke midway is not left RUNNING: one last call ends it
        (FAILED where the work finished: its MLflow record is incomplete), tagged with
        where its whole record is. If MLflow still does not answer, a warning says so."""
        run_id = self.run_id
        why = (
            f"MLflow tracking failed during the run ({self.broken}): its params and metrics"
            f" are in {self.local_path.resolve()}"
        )

        def end(client: Any) -> None:
            client.set_tag(run_id, "error", f"{error}; {why}" if error else why)
            client.set_terminated(run_id, status="FAILED" if status == "FINISHED" else status)

        _, failed = attempt(lambda: end(client_for(self.conf.uri)))
        if failed is not None:
            log.warning(
                "the MLflow run %s stays RUNNING: ending it failed too (%s)",
                run_id,
                first_line(failed),
            )

    # -- logging -------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = {k: str(v) for k, v in params.items()}
        self.record["params"].update(items)
        # MLflow's client sends them in batches of the 100 its stores take at most.
        entries = [Param(k, v) for k, v in items.items()]
        self._call(lambda c: c.log_batch(self.run_id, params=entries))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}
        if step is None:
            self.record["metrics"].update(values)
        else:
            self.record["history"].append({"step": step, **values})
        batch = [Metric(k, v, now, step or 0) for k, v in values.items()]
        # One synchronous write an epoch (a SQLite commit, ~10 ms). Not MLflow's
        # log_batch(synchronous=False): its queue's thread polls with a 1-s timeout, and
        # ending a run (set_terminated) joins it, which cost every run up to 1 s, 2.9x the
        # main job's time (84 s against 29 s, measured 2026-12-07).
        self._call(lambda c: c.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = {k: str(v) for k, v in tags.items()}
        self.record["tags"].update(items)
        self._call(
            lambda c: c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in items.items()])
        )

    def log_dataset(self, name: str, data: Any) -> None:
        """The run's data set as an MLflow dataset input (the UI's Dataset column): its
        name, its fingerprint as digest, and the split sizes as its profile."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        sizes = {"train": len(data.train_y), "val": len(data.val_y), "test": len(data.test_y)}
        profile = {**sizes, "num_classes": data.num_classes, "input_shape": data.input_shape}
        dataset = Dataset(
            name=name,
            digest=data.fingerprint,
            source_type="kdsweep",
            source=json.dumps({"data": name}),
            profile=json.dumps(profile),
        )
        context = InputTag(key="mlflow.data.context", value="training")
        self.record["dataset"] = {"name": name, "digest": data.fingerprint, **sizes}
        inputs = [DatasetInput(dataset, [context])]

        def log_inputs(client: Any) -> None:
            # Runs started together race to add the same dataset: MLflow's SQL store looks
            # for it, then inserts it, and the loser's write fails on the unique key and is
            # rolled back whole. Tried again, it finds the winner's dataset and links it.
            if attempt(lambda: client.log_inputs(self.run_id, datasets=inputs))[1] is not None:
                client.log_inputs(self.run_id, datasets=inputs)

        self._call(log_inputs)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(lambda c: c.log_text(self.run_id, text, artifact_file))

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder one file at a time, checking for a signal between two uploads
        (a whole folder to a remote server would otherwise hold it through all of them)."""
        root = Path(directory)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            check_interrupt()
            folder = path.parent.relative_to(root).as_posix()
            where = "/".join(part for part in (artifact_path, folder) if part and part != ".")
            self._call(lambda c, f=path, w=where: c.log_artifact(self.run_id, str(f), w or None))

    def _call(self, action: Any) -> None:
        """One MLflow call of the run, by the failure policy: after the first failure,
        none."""
        if self.run_id is None or self.broken:
            return
        consequence = (
            "training goes on untracked; this run's params and metrics are kept in"
            f" {self.local_path.resolve()}"
        )
        error = mlflow_best_effort(
            self.conf.uri, consequence, lambda: action(client_for(self.conf.uri))
        )
        if error is not None:
            self.broken = self.record["tracking_error"] = error


PROBE_TIMEOUT_S = CONNECT_TIMEOUT_S


def check_store(uri: str, reading: bool = False) -> None:
    """Raise one line if the tracking store at ``uri`` cannot be used, asked once with a
    short timeout (MLflow's own client retries a refused login, an unanswered server or
    an uncreatable SQLite file for minutes). Read-only: nothing is created. ``reading``:
    the store must exist already (kdsweep-eval loads from it, and never makes one)."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        problem = _sqlite_problem(uri, reading)
        if problem:
            raise KdsweepError(problem)
        return
    if scheme in ("", "file"):
        return
    problem = _probe(uri, scheme)
    if problem is None and not reading:
        # It answers; whether it is MLflow (and lets us in) only MLflow's request says.
        _, error = attempt(lambda: client_for(uri).search_experiments(max_results=1))
        problem = None if error is None else first_line(error)
    if problem:
        raise KdsweepError(
            f"MLflow does not answer at tracking.uri={uri} ({problem}): start the server or"
            f" fix tracking.uri {UNTRACKED}"
        )


def _sqlite_problem(uri: str, reading: bool) -> str | None:
    """Why a SQLite tracking store cannot be used: half-created, an Optuna storage, or
    missing where it cannot be created (MLflow retried creating it for 100 s)."""
    path = storage_file(uri)
    if path is None:
        return None
    if path.is_file():
        return half_created_sqlite(uri) or _optuna_storage(uri)
    if reading:
        return f"tracking.uri={uri}: no such file {path}: point tracking.uri at the runs' store"
    problem = directory_problem(path.parent)
    if problem:
        return (
            f"tracking.uri={uri}: cannot create {path} ({problem}): point tracking.uri at a"
            f" writable folder {UNTRACKED}"
        )
    return None


def _probe(uri: str, scheme: str) -> str | None:
    """Why a tracking server or database cannot be reached, asked once with a short
    timeout; None if it answers (or for a scheme this does not know how to ask)."""
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
                return None
        except urllib.error.HTTPError:
            return None  # it answers: MLflow's own request says whether it is MLflow
        except (OSError, ValueError) as exc:
            return first_line(exc)
    if scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        kind, error = attempt(lambda: existing_store_kind(uri))
        if error is not None:
            return first_line(error)  # the driver's own: a refused login, an unknown database
        if kind == "optuna":
            return f"it is {WHOSE[kind]}, not MLflow's"
    return None


def _optuna_storage(uri: str) -> str | None:
    """The one line for a tracking.uri that names an Optuna storage: MLflow would add its
    tables beside the study's."""
    kind, _ = attempt(lambda: existing_store_kind(uri))  # not a database: said before
    if kind != "optuna":
        return None
    return (
        f"tracking.uri={uri} is {WHOSE[kind]}, not an MLflow database: point tracking.uri"
        " at another file, e.g. sqlite:///mlflow.db"
    )
