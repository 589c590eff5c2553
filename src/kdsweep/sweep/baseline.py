"""The references a sweep's report compares against: the enqueued reference setting (the
tutorial's), asked again until a trial with its values completes, and a CE-only student
trained once per study, a trial of the companion study (role ``baseline``), asked for as
every job is (kdsweep.sweep.core)."""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from kdsweep.sweep.jobs import Lock, Spec, drop_unplanned
from kdsweep.sweep.settings import SearchSpace

log = logging.getLogger("kdsweep.sweep")

#: A queued trial's values, in a public user attr: Optuna keeps them in its own system
#: attrs until the trial runs.
ENQUEUED_PARAMS = "enqueued_params"


def enqueue_reference(
    storage: optuna.storages.BaseStorage,
    lock: Lock,
    enqueue_trials: list[dict[str, Any]],
    study: optuna.Study,
    space: SearchSpace,
) -> None:
    """Enqueue each of ``enqueue_trials`` (the reference setting) unless a trial with
    its values is complete, pruned, running or waiting: a reference trial that was
    killed or failed is asked again by the next invocation, until it completes. A queued
    trial that no current ``enqueue_trials`` holds (an earlier invocation's) is dropped."""
    given = [
        {k: v for k, v in values.items() if k in space.distributions} for values in enqueue_trials
    ]
    with lock():
        dropped = drop_unplanned(storage, study, lambda t: any(_has_values(t, p) for p in given))
        if dropped:
            log.info(
                "%d queued trial(s) of an earlier hydra.sweeper.enqueue_trials are not in"
                " the current one: marked FAIL, not run",
                dropped,
            )
        if not given:
            return
        for params in given:
            if trial_with_params(study, params) is None:
                study.enqueue_trial(params, user_attrs={ENQUEUED_PARAMS: params})
        study.set_user_attr("enqueued", True)
        reference_number = trial_with_params(study, given[0])
        if reference_number is not None:
            study.set_user_attr("tutorial_trial_number", reference_number)


# The CE baseline: a CE-only student with the sweep's fixed settings, once per study, for
# the report's baseline row (the study's user attribute ``baselines``; the teacher's row
# comes from the trials' own metrics). It is a trial of the companion study like any
# other: a sweep killed during it leaves a trial the next invocation fails (closing its
# run) and trains again; a failed baseline is trained again by a rerun.


def baseline_wanted(study: optuna.Study, companion: optuna.Study) -> bool:
    """Whether this worker should train the baseline now (under the study lock): not yet
    recorded, and no other worker training it."""
    if "student_ce" in study.user_attrs.get("baselines", {}):
        return False
    running = companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if any(t.user_attrs.get("role") == "baseline" for t in running):
        log.info("baseline: another worker is training it")
        return False
    log.info("baseline: training a CE-only student once for this study")
    return True


def new_running_trial(
    storage: optuna.storages.BaseStorage, companion: optuna.Study
) -> optuna.trial.Trial:
    """The baseline's trial, made RUNNING, not enqueued: the companion's queue holds
    confirmation runs, and asking would take the first of them."""
    template = optuna.trial.create_trial(state=TrialState.RUNNING)
    study_id = storage.get_study_id_from_name(companion.study_name)
    return optuna.trial.Trial(companion, storage.create_new_trial(study_id, template))


def baseline_spec(model_choice: str | None) -> Spec:
    """The baseline's job: CE instead of the sweep's loss (LightNN for the modified
    student, whose hidden output only the cosine loss reads)."""
    own = ["loss=ce", *(["model=light"] if model_choice == "modified" else [])]
    context = ["tracking.run_name=baseline-student-ce", "hydra.sweep.subdir=baseline"]
    return Spec("baseline CE student", own, context, replaces_loss=True)


def record_baseline(study: optuna.Study, metrics: dict[str, Any] | None) -> None:
    """The finished baseline's figures as the study's ``baselines`` row (under the lock)."""
    if not metrics:
        log.warning("baseline CE student failed: no metrics")
        return
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
