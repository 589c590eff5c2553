"""The references a sweep's report compares against: the enqueued reference setting (the
tutorial's), asked again until a trial with its values completes, and a CE-only student
trained once per study under a claim that expires with its claimer's heartbeat."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from kdsweep.core.errors import first_line
from kdsweep.core.secrets import mask_secrets
from kdsweep.sweep.jobs import job_outcome
from kdsweep.sweep.liveness import Heartbeat, claim_study_task, release_study_task
from kdsweep.sweep.parent_run import ParentRun, close_role_runs, read_job_metrics
from kdsweep.sweep.settings import SearchSpace

if TYPE_CHECKING:
    from kdsweep.sweep.jobs import Sweep

log = logging.getLogger("kdsweep.sweep")

#: The study user attribute that claims the CE baseline (owner and heartbeat).
BASELINE_CLAIM = "baseline_claim"


def enqueue_reference(sweep: Sweep, study: optuna.Study, space: SearchSpace) -> None:
    """Enqueue each of ``enqueue_trials`` (the reference setting) unless a trial with
    its values is complete, pruned, running or waiting: a reference trial that was
    killed or failed is asked again by the next invocation, until it completes."""
    if not sweep.settings.enqueue_trials:
        return
    with sweep.lock():
        reference_number = None
        for index, given in enumerate(sweep.settings.enqueue_trials):
            params = {k: v for k, v in given.items() if k in space.distributions}
            number = trial_with_params(study, params)
            if number is None:
                study.enqueue_trial(params)
                number = trial_with_params(study, params)
            if index == 0:
                reference_number = number
        study.set_user_attr("enqueued", True)
        if reference_number is not None:
            study.set_user_attr("tutorial_trial_number", reference_number)


def run_baseline_once(
    sweep: Sweep, study: optuna.Study, base: list[str], parent: ParentRun
) -> None:
    """A CE-only student with the sweep's fixed settings, once per study, for the
    report's baseline row. The teacher's row comes from the trials' own metrics. The
    claim lives as long as its claimer's heartbeat: a sweep killed during the baseline
    leaves a claim the next invocation takes over (closing the run it left open); a
    failed baseline is released, so a rerun tries again."""
    s = sweep.settings
    with sweep.lock():
        if "student_ce" in study.user_attrs.get("baselines", {}):
            return
        if not claim_study_task(sweep.storage, sweep.study_id, BASELINE_CLAIM, s.grace_period):
            log.info("baseline: another worker is training it")
            return
        closed = close_role_runs(
            sweep.config,
            parent.run_id,
            "baseline",
            "interrupted: the sweep process died during the baseline",
        )
        if closed:
            log.warning("baseline: the previous attempt was interrupted; training it again")
    keep = [o for o in base if not o.lstrip("+~").startswith("loss")]
    overrides = keep + [
        "loss=ce",
        "sweep.role=baseline",
        "tracking.run_name=baseline-student-ce",
        "hydra.sweep.subdir=baseline",
    ]
    if parent.run_id:
        overrides.append(f"sweep.parent_run_id={parent.run_id}")
    if sweep.config.hydra.runtime.choices.get("model") == "modified":
        overrides.append("model=light")
    log.info("baseline: training a CE-only student once for this study")
    with Heartbeat(
        sweep.storage, [], s.heartbeat_interval, tasks=[(sweep.study_id, BASELINE_CLAIM)]
    ):
        (ret,) = sweep.launch([overrides])

    _, error = job_outcome(ret)
    metrics = read_job_metrics(ret)
    with sweep.lock():
        if error is None and metrics:
            baselines = dict(study.user_attrs.get("baselines", {}))
            baselines["student_ce"] = {
                "val_acc": metrics.get("objective"),
                "test_acc": metrics.get("test_acc"),
            }
            study.set_user_attr("baselines", baselines)
        else:
            reason = first_line(error) if error is not None else "no metrics"
            log.warning("baseline CE student failed: %s", mask_secrets(reason))
        release_study_task(sweep.storage, sweep.study_id, BASELINE_CLAIM)


def trial_with_params(study: optuna.Study, params: dict[str, Any]) -> int | None:
    """The number of a complete, pruned, running or waiting trial (the first) whose values
    are ``params`` (a waiting trial's are its fixed_params), or None."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False, states=live):
        values = trial.system_attrs.get("fixed_params", trial.params)
        if all(
            name in values
            and (
                math.isclose(float(values[name]), float(value), rel_tol=1e-9)
                if isinstance(value, (int, float))
                and not isinstance(value, bool)
                and isinstance(values[name], (int, float))
                else values[name] == value
            )
            for name, value in params.items()
        ):
            return trial.number
    return None
