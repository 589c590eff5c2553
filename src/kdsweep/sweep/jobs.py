"""What the sweep's parts share: the sweep they act for, as a protocol (its one
implementation is ``kdsweep.sweep.core.StudySweep``), a job for one Optuna trial, and how
a Hydra job ended."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hydra.core.utils import JobReturn, JobStatus

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig
    from optuna.storages import BaseStorage
    from optuna.trial import TrialState

    from kdsweep.sweep.settings import SweepSettings


@dataclass(frozen=True)
class Job:
    """One Hydra job for one Optuna trial: a search trial, the CE baseline or a
    confirmation run (``role``, also the trial's user attribute ``role``)."""

    study: optuna.Study
    trial: optuna.trial.Trial
    tid: int  # the trial's id in the storage, the job's way back to it (sweep.trial_id)
    role: str  # trial | baseline | confirm
    label: str  # how the console names it: "trial 3 (lr=0.001)", "baseline CE student"
    overrides: list[str]


class Sweep(Protocol):
    """A running sweep, as its parts (checks, drift, baseline, confirm, recovery) see it."""

    config: DictConfig
    settings: SweepSettings
    storage: BaseStorage

    def make_sampler(self, seed_offset: int) -> Any: ...

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config a job with these overrides gets (Hydra's sweep config)."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def claim(self, study: optuna.Study, trial: optuna.trial.Trial, role: str) -> int: ...

    def run_jobs(self, jobs: list[Job]) -> list[TrialState]: ...


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
