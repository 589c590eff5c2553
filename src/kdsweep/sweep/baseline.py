"""The references a sweep's report compares against: the enqueued reference setting (the
tutorial's), asked again until a trial with its values completes, and a CE-only student
trained once per study, a trial of the companion study (role ``baseline``)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from kdsweep.sweep.jobs import Job, job_overrides
from kdsweep.sweep.parent_run import ParentRun
from kdsweep.sweep.settings import SearchSpace
from kdsweep.sweep.studies import NOT_PLANNED, drop_queued, trial_id

if TYPE_CHECKING:
    from kdsweep.sweep.jobs import Sweep

log = logging.getLogger("kdsweep.sweep")

#: A queued trial's values, in a public user attr: Optuna keeps them in its own system
#: attrs until the trial runs.
ENQUEUED_PARAMS = "enqueued_params"


def enqueue_reference(sweep: Sweep, study: optuna.Study, space: SearchSpace) -> None:
    """Enqueue each of ``enqueue_trials`` (the reference setting) unless a trial with
    its values is complete, pruned, running or waiting: a reference trial that was
    killed or failed is asked again by the next invocation, until it completes. A queued
    trial that no current ``enqueue_trials`` holds (an earlier invocation's) is dropped."""
    given = [
        {k: v for k, v in values.items() if k in space.distributions}
        for values in sweep.settings.enqueue_trials
    ]
    with sweep.lock():
        study_id = sweep.storage.get_study_id_from_name(study.study_name)
        dropped = 0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if not any(_has_values(trial, params) for params in given):
                drop_queued(
                    sweep.storage, trial_id(sweep.storage, study_id, trial.number), NOT_PLANNED
                )
                dropped += 1
        if dropped:
            log.info(
                "%d queued trial(s) of an earlier hydra.sweeper.enqueue_trials are not in"
                " the current one: marked FAIL, not run",
                dropped,
            )
        if not given:
            return
        reference_number = None
        for index, params in enumerate(given):
            number = trial_with_params(study, params)
            if number is None:
                study.enqueue_trial(params, user_attrs={ENQUEUED_PARAMS: params})
                number = trial_with_params(study, params)
            if index == 0:
                reference_number = number
        study.set_user_attr("enqueued", True)
        if reference_number is not None:
            study.set_user_attr("tutorial_trial_number", reference_number)


def run_baseline_once(
    sweep: Sweep, study: optuna.Study, companion: optuna.Study, base: list[str], parent: ParentRun
) -> None:
    """A CE-only student with the sweep's fixed settings, once per study, for the
    report's baseline row (the study's user attribute ``baselines``). The teacher's row
    comes from the trials' own metrics. It is a trial like any other: a sweep killed
    during it leaves a trial the next invocation fails (closing its run) and trains again;
    a failed baseline is trained again by a rerun."""
    with sweep.lock():
        if "student_ce" in study.user_attrs.get("baselines", {}):
            return
        running = companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(t.user_attrs.get("role") == "baseline" for t in running):
            log.info("baseline: another worker is training it")
            return
        # Made RUNNING, not enqueued: the companion's queue holds confirmation runs.
        template = optuna.trial.create_trial(state=TrialState.RUNNING)
        study_id = sweep.storage.get_study_id_from_name(companion.study_name)
        trial = optuna.trial.Trial(companion, sweep.storage.create_new_trial(study_id, template))
        tid = sweep.claim(companion, trial, "baseline")
    context = [
        "sweep.role=baseline",
        f"sweep.trial_id={tid}",
        f"sweep.study_name={companion.study_name}",
        "tracking.run_name=baseline-student-ce",
        "hydra.sweep.subdir=baseline",
    ]
    if parent.run_id:
        context.append(f"sweep.parent_run_id={parent.run_id}")
    own = ["loss=ce"]
    if sweep.config.hydra.runtime.choices.get("model") == "modified":
        own.append("model=light")
    overrides = job_overrides(base, own, context, sweep.untaken_loss_keys)
    log.info("baseline: training a CE-only student once for this study")
    job = Job(companion, trial, tid, "baseline", "baseline CE student", overrides)
    (state,) = sweep.run_jobs([job])
    if state != TrialState.COMPLETE:
        return  # said by the job path; a rerun trains it again
    metrics = sweep.storage.get_trial_user_attrs(tid).get("metrics")
    if not metrics:
        log.warning("baseline CE student failed: no metrics")
        return
    with sweep.lock():
        baselines = dict(study.user_attrs.get("baselines", {}))
        baselines["student_ce"] = {
            "val_acc": metrics.get("objective"),
            "test_acc": metrics.get("test_acc"),
        }
        study.set_user_attr("baselines", baselines)


def trial_with_params(study: optuna.Study, params: dict[str, Any]) -> int | None:
    """The number of a complete, pruned, running or waiting trial (the first) whose values
    are ``params`` (a waiting trial's: those it was queued with), or None."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False, states=live):
        if _has_values(trial, params):
            return trial.number
    return None


def _has_values(trial: optuna.trial.FrozenTrial, params: dict[str, Any]) -> bool:
    """Whether the trial's values (a waiting trial's: those it was queued with) are
    ``params``."""
    values = trial.params or trial.user_attrs.get(ENQUEUED_PARAMS, {})
    return all(
        name in values
        and (
            math.isclose(float(values[name]), float(value), rel_tol=1e-9)
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and isinstance(values[name], (int, float))
            else values[name] == value
        )
        for name, value in params.items()
    )
