"""The sweep's MLflow side: one parent run per study (shared by every invocation and
worker that runs it), and the clean-up of trial runs their job could not close."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from kdsweep.config.schema import TrackingConf
from kdsweep.config.validation import typed
from kdsweep.run.tracking import (
    client_for,
    experiment_id,
    flatten,
    git_commit,
    mlflow_best_effort,
    mlflow_required,
)

log = logging.getLogger("kdsweep.sweep")


def _tracking(config: DictConfig) -> TrackingConf:
    """The sweep's tracking settings (the sweeper validated the whole config already)."""
    return typed(config.tracking, TrackingConf, "tracking")


class ParentRun:
    def __init__(self, conf: TrackingConf, run_id: str | None) -> None:
        self.conf, self.run_id = conf, run_id

    @classmethod
    def for_study(
        cls,
        study: optuna.Study,
        config: DictConfig,
        description: dict[str, Any],
        lock: Callable[[], AbstractContextManager[None]],
    ) -> ParentRun:
        """The study's parent run: created by the first invocation, reopened by later
        ones (resume, other workers). Fails with one line if MLflow is unreachable."""
        conf = _tracking(config)
        with lock():
            for key in ("search_space", "sampler", "n_trials"):
                study.set_user_attr(key, description[key])
            if not conf.enabled:
                return cls(conf, None)
            run_id = mlflow_required(
                conf.uri,
                "start the sweep's MLflow run",
                lambda: _open_parent(study, conf, description),
            )
        return cls(conf, run_id)

    def end(self, status: str) -> None:
        """End the run (KILLED when the sweep was interrupted), without a summary."""
        if self.run_id is None:
            return
        run_id = self.run_id
        mlflow_best_effort(
            self.conf.uri,
            f"the sweep's parent run {run_id} is not ended",
            lambda: client_for(self.conf.uri).set_terminated(run_id, status=status),
        )

    def finish(
        self,
        best: optuna.trial.FrozenTrial | None,
        report_files: list[Path],
        status: str | None,
        description: str | None = None,
    ) -> None:
        """Best value and params, the report's files as artifacts (those files only, never
        the rest of their folder); end the run unless other workers still have trials
        running (the last one ends it)."""
        if self.run_id is None:
            return
        run_id = self.run_id

        def summarize() -> None:
            client = client_for(self.conf.uri)
            if best is not None:
                client.log_metric(run_id, "best_value", float(best.values[0]))
                client.log_metric(run_id, "best_trial", float(best.number))
                for name, value in best.params.items():
                    # +model.width: MLflow takes no "+"
                    client.set_tag(run_id, f"best.{name.lstrip('+')}", str(value))
            if description:
                # MLflow's run description: the report's headline, first thing in the UI.
                client.set_tag(run_id, "mlflow.note.content", description)
            for path in finished_files(report_files):
                client.log_artifact(run_id, str(path), "report")
            if status is not None:
                client.set_terminated(run_id, status=status)

        mlflow_best_effort(
            self.conf.uri, f"the sweep's parent run {run_id} is not finished", summarize
        )


def _open_parent(study: optuna.Study, conf: TrackingConf, description: dict[str, Any]) -> str:
    """The study's parent run id: its recorded run, reopened, or a new one."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    client = client_for(conf.uri)
    if run_id is not None and not _run_exists(client, run_id):
        # The Optuna study is the source of truth: its parent run went with an mlflow.db
        # that was deleted, or tracking.uri now names another store.
        log.warning(
            "the study's MLflow parent run %s is not at tracking.uri=%s (deleted, or another"
            " store): a new parent run is created for study %s",
            run_id,
            conf.uri,
            description["study_name"],
        )
        run_id = None
    if run_id is None:
        tags = {"mlflow.runName": f"sweep-{description['study_name']}", "kdsweep.role": "sweep"}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run_id = client.create_run(experiment_id(client, conf.experiment), tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flatten(description).items()]
        client.log_batch(run_id, params=params)  # MLflow's client sends 100 at a time
        study.set_user_attr("mlflow_parent_run_id", run_id)
    else:
        client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "n_trials_requested", str(description["n_trials"]))
    return run_id


def finished_files(paths: list[Path]) -> list[Path]:
    """The files fit to upload: present and not empty. The report writes each file
    atomically, so this is a second guard: a file another worker removed, or one left
    empty by a full disk, is skipped with a warning rather than uploaded as 0 bytes."""
    ready = []
    for path in paths:
        size = path.stat().st_size if path.is_file() else 0
        if size:
            ready.append(path)
        else:
            log.warning(
                "report file %s is %s: not uploaded", path, "empty" if path.exists() else "gone"
            )
    return ready


def _run_exists(client: Any, run_id: str) -> bool:
    """False if the tracking store has no such run, or only a deleted one."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return run.info.lifecycle_stage != "deleted"


def close_trial_run(
    config: DictConfig, run_id: str | None, state: str, message: str, status: str = "FAILED"
) -> None:
    """End a trial's MLflow run that its job left RUNNING (a crash, a kill): ``status``
    FAILED, or KILLED for an interrupted one."""
    if not run_id:
        return
    conf = _tracking(config)

    def close() -> None:
        client = client_for(conf.uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, "kdsweep.state", state)
        client.set_tag(run_id, "error", message)
        client.set_terminated(run_id, status=status)

    mlflow_best_effort(conf.uri, f"trial run {run_id} is left RUNNING", close)
