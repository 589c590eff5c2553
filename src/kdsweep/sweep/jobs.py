"""What the sweep's parts share: the sweep they act for, as a protocol (its one
implementation is ``kdsweep.sweep.core.StudySweep``), and how a Hydra job ended."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any, Protocol

from hydra.core.utils import JobReturn, JobStatus

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig
    from optuna.storages import BaseStorage

    from kdsweep.sweep.settings import SweepSettings


class Sweep(Protocol):
    """A running sweep, as its parts (checks, drift, baseline, confirm, recovery) see it."""

    config: DictConfig
    settings: SweepSettings
    storage: BaseStorage
    confirm_study: optuna.Study | None

    def make_sampler(self, seed_offset: int) -> Any: ...

    def launch(self, batch: list[list[str]]) -> list[JobReturn]: ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...


def job_outcome(ret: JobReturn) -> tuple[Any, BaseException | None]:
    """A job's return value, or the exception that ended it, through Hydra's public
    ``JobReturn.return_value`` (which re-raises a failed job's exception). That property
    first prints the job's overrides, unmasked, to stderr: the line is kept off the
    console, where the trial's masked error is logged instead."""
    if ret.status == JobStatus.COMPLETED:
        return ret.return_value, None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            _ = ret.return_value
    except Exception as exc:
        return None, exc
    return None, RuntimeError(f"the job ended {ret.status.name} and returned no error")
