"""The one door through which kdsweep writes text to MLflow: an ``MlflowClient`` whose
params, tags, descriptions and text artifacts pass :func:`mask_secrets` on the way in.

Every client kdsweep makes is this one (kdsweep.run.tracking.client_for, the registry's),
so a caller hands over values as they are (an error naming a storage URL, the resolved
config) and no password reaches a run, a model version or the UI. A masking boundary
beside the log filter (kdsweep.core.secrets), so it lives with it on the ground floor.
Imported only where a client is made: it imports MLflow.
"""

from __future__ import annotations

import os
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from kdsweep.core.secrets import mask_secrets, mask_value
from kdsweep.core.stores import creation_lock

# MLflow's HTTP client retries a server that does not answer for minutes by default
# (7 tries, 120 s each); kdsweep asks once with a short timeout first (RunTracker.check),
# so a server that stops answering later should cost seconds too. A user's own setting wins.
FAIL_FAST = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}

# MLflow's limits (its REST API's): a longer value is clipped, after masking, so that
# a clip never cuts a password out of reach of the mask.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000


def _masked_dict(values: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if values is None else {k: mask_value(v) for k, v in values.items()}


def _param(value: Any) -> str:
    return mask_secrets(str(value))[:MAX_PARAM_LENGTH]


def _tag(value: Any) -> Any:
    masked = mask_value(value)
    return masked[:MAX_TAG_LENGTH] if isinstance(masked, str) else masked


def fail_fast() -> None:
    """MLflow's retry settings (environment variables, read at each request) at kdsweep's."""
    for name, value in FAIL_FAST.items():
        os.environ.setdefault(name, value)


def tracking_client(uri: str) -> MaskedClient:
    """The client for the store at ``uri``. MLflow creates and migrates a new database
    store when its first client touches it; that happens here, once, under the store's
    inter-process lock: jobs started together (a parallel launcher, two sweeps on one new
    mlflow.db) would otherwise run the migrations at once and break the store for good."""
    fail_fast()
    if uri.partition("://")[0].split("+")[0] not in ("sqlite", "postgresql"):
        return MaskedClient(tracking_uri=uri)
    with creation_lock(uri):
        return MaskedClient(tracking_uri=uri)  # MLflow opens (and creates) the store here


class MaskedClient(MlflowClient):
    """MLflow's client, with every written param, tag, description and text masked."""

    def create_run(self, experiment_id: str, *args: Any, tags: Any = None, **kwargs: Any) -> Any:
        tags = None if tags is None else {k: _tag(v) for k, v in tags.items()}
        return super().create_run(experiment_id, *args, tags=tags, **kwargs)

    def set_tag(self, run_id: str, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        return super().set_tag(run_id, key, _tag(value), *args, **kwargs)

    def log_param(self, run_id: str, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        return super().log_param(run_id, key, _param(value), *args, **kwargs)

    def log_batch(
        self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kwargs: Any
    ) -> Any:
        params = [Param(p.key, _param(p.value)) for p in params]
        tags = [RunTag(t.key, _tag(str(t.value))) for t in tags]
        return super().log_batch(run_id, metrics, params, tags, **kwargs)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        super().log_text(run_id, mask_secrets(text), artifact_file)

    def set_experiment_tag(self, experiment_id: str, key: str, value: Any) -> None:
        super().set_experiment_tag(experiment_id, key, mask_value(value))

    def create_model_version(
        self, name: str, source: str, *args: Any, tags: Any = None, description: Any = None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        return super().create_model_version(
            name, source, *args, tags=_masked_dict(tags), description=mask_value(description),
            **kwargs,
        )  # fmt: skip

    def update_model_version(self, name: str, version: str, description: Any = None) -> Any:
        return super().update_model_version(name, version, mask_value(description))

    def set_model_version_tag(
        self, name: str, version: Any = None, key: Any = None, value: Any = None, **kwargs: Any
    ) -> None:
        super().set_model_version_tag(name, version, key, mask_value(value), **kwargs)

    def create_registered_model(
        self, name: str, tags: Any = None, description: Any = None, **kwargs: Any
    ) -> Any:
        return super().create_registered_model(
            name, _masked_dict(tags), mask_value(description), **kwargs
        )
