"""A job for one Optuna trial: what it is (``Spec``), its overrides, how it ended, and the
queued trials a plan no longer holds. The sweep asks for every job in one way
(``kdsweep.sweep.core.StudySweep._jobs``): search trials (the references among them), the
CE baseline and the confirmation runs."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from kdsweep.config.parts import override_key
from kdsweep.core.signals import check_interrupt
from kdsweep.sweep.studies import NOT_PLANNED, fail_trial, trial_id

#: The sweep's study lock (kdsweep.sweep.studies.study_lock), taken as ``with lock():``.
Lock = Callable[[], contextlib.AbstractContextManager[None]]


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


@dataclass(frozen=True)
class Spec:
    """What one job is, besides its trial: how the console names it, its own settings on
    top of the sweep's fixed overrides, what tells it where it belongs (its run's and
    folder's names, its seed), and whether it trains another loss than the sweep's."""

    label: str
    own: list[str]
    context: list[str] = field(default_factory=list)
    replaces_loss: bool = False


def sets_loss(override: str) -> bool:
    """Whether an override picks or sets the loss (loss=ce, loss.temperature=4,
    +loss.x=1, ~loss.x)."""
    key = override_key(override)
    return key == "loss" or key.startswith("loss.")


def job_overrides(
    base: Sequence[str],
    own: Sequence[str],
    context: Sequence[str],
    untaken_loss_keys: Callable[[list[str]], list[str]] | None = None,
) -> list[str]:
    """A job's overrides: the sweep's fixed ones (``base``), the job's own settings, then
    what tells the job where it belongs (``context``: its trial, study, run and folder).

    With ``untaken_loss_keys`` the job trains another loss than the sweep's (the CE
    baseline, the ablation, CE at the default recipe): the sweep's ``loss.*`` overrides
    belong to the searched loss and are left out, and each key a config file set on the
    loss node that this loss does not take (``hparams_search=dkd``'s ``loss.warmup``) is
    deleted, so it gets only the settings its loss takes."""
    if untaken_loss_keys is None:
        return [*base, *own, *context]
    overrides = [o for o in base if not sets_loss(o)] + list(own)
    overrides += [f"~loss.{key}" for key in untaken_loss_keys(overrides)]
    return [*overrides, *context]


def drop_unplanned(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    planned: Callable[[optuna.trial.FrozenTrial], bool],
) -> int:
    """Fail each queued (WAITING) trial of ``study`` that is not ``planned`` now (an
    earlier invocation's plan), so a rerun runs exactly what its settings plan. Called
    under the study lock; a signal is honoured between two writes. Returns how many."""
    study_id = storage.get_study_id_from_name(study.study_name)
    dropped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if not planned(trial):
            fail_trial(storage, trial_id(storage, study_id, trial.number), NOT_PLANNED)
            dropped += 1
            check_interrupt()
    return dropped


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
