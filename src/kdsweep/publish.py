"""The end of a sweep invocation: the best trial (optimization_results.yaml, as
hydra-optuna-sweeper writes it), the baselines' teacher row, the report, and the parent
run's summary (ended unless other workers still have trials running). A confirmation
that could not pair its seeds fails the invocation: nothing is registered."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from kdsweep.registry import publish
from kdsweep.report import lead, report_dir_for, summarize, write_report_files
from kdsweep.results.confirmed import best_confirmed, confirmed_summary, unpaired
from kdsweep.results.front import confirmed_front
from kdsweep.sweep.arms import ranked_trials
from kdsweep.sweep.parent_run import ParentRun
from kdsweep.sweep.settings import SweepSettings
from kdsweep.sweep.studies import count_states

log = logging.getLogger("kdsweep.sweep")


def finish_sweep(
    study: optuna.Study,
    config: DictConfig,
    settings: SweepSettings,
    parent: ParentRun,
    aborted: bool,
    confirm_study: optuna.Study | None = None,
) -> str | None:
    """Returns why the invocation failed (a confirmation that could not pair its seeds),
    or None."""
    still_running = count_states(study)[TrialState.RUNNING] > 0
    best = next(iter(ranked_trials(study)), None)  # ties broken by val loss
    if best is None:
        log.warning("no trial of study %s completed", settings.study_name)
    else:
        log.info("best trial %d: value %.4f, params %s", best.number, best.values[0], best.params)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():  # a rerun that trained nothing made none
            _save_results(best, settings.study_name, sweep_dir)
    _record_teacher_baseline(study)
    report_dir = report_dir_for(settings.report_dir, settings.study_name)
    report_files: list[Path] = []
    description = None
    try:
        summary = summarize(study, confirm_study)
        report_files = write_report_files(study, report_dir, summary=summary)
        description = lead(summary)
        log.info("%s", description)
        log.info("report: %s", report_files[-1])
    except Exception as exc:  # a report must never cost the sweep its results
        log.error("could not write the report to %s: %s", report_dir, exc)
    failure = None if aborted else _unconfirmed(confirm_study)
    failed = aborted or failure is not None
    # The teacher on the parent run; the best confirmed student (the search's best where
    # nothing was confirmed) in the Model Registry (after the confirmation stage, so only
    # by the invocation that completed the study).
    publish(
        study,
        settings.study_name,
        parent.conf.uri,
        parent.run_id,
        champion_trial(study, best, confirm_study),
        confirm_study,
        register=not failed and not still_running,
    )
    parent.finish(
        best,
        report_files,
        status=None if still_running and not failed else ("FAILED" if failed else "FINISHED"),
        description=description,
    )
    return failure


def champion_trial(
    study: optuna.Study,
    best: optuna.trial.FrozenTrial | None,
    confirm_study: optuna.Study | None,
) -> optuna.trial.FrozenTrial | None:
    """The search trial whose configuration confirmed best (kdsweep.results.confirmed);
    after a search with costs, the report's pick of its confirmed front (the smallest
    within tolerance of the best confirmed val accuracy: kdsweep.results.front); else the
    search's best."""
    confirmed = confirmed_summary(confirm_study)
    front = confirmed_front(study, confirmed, confirm_study)
    if front is not None and front.pick is not None:
        number = front.pick.trial
        return next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    arm = best_confirmed(confirmed) if confirmed is not None else None
    if arm is None or best is None or arm.trial == best.number:
        return best
    champion = next(t for t in study.get_trials(deepcopy=False) if t.number == arm.trial)
    log.info(
        "champion: trial %d (%s) confirmed best, %.2f %% val over %d seed(s); the search's"
        " best was trial %d",
        champion.number,
        arm.key,
        arm.val_stats.mean,
        arm.val_stats.n,
        best.number,
    )
    return champion


def _unconfirmed(confirm_study: optuna.Study | None) -> str | None:
    """Why the confirmation stage, over (no run of it queued or running), could not pair
    its seeds; None if it could, or is not over."""
    if confirm_study is None:
        return None
    counts = count_states(confirm_study)
    if counts[TrialState.RUNNING] or counts[TrialState.WAITING]:
        return None  # other workers finish it, and judge it
    confirmed = confirmed_summary(confirm_study)
    return unpaired(confirmed) if confirmed is not None else None


def _save_results(best: optuna.trial.FrozenTrial, study_name: str, sweep_dir: Path) -> None:
    results = {
        "name": "kdsweep",
        "study_name": study_name,
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.values[0],  # the objective: the first value (then the costs)
    }
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def _record_teacher_baseline(study: optuna.Study) -> None:
    """Every KD trial logs its (shared, cached) teacher's accuracy: that is the report's
    teacher row."""
    baselines = dict(study.user_attrs.get("baselines", {}))
    if "teacher" in baselines:
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics = trial.user_attrs.get("metrics", {})
        if "teacher_val_acc" in metrics:
            baselines["teacher"] = {
                "val_acc": metrics["teacher_val_acc"],
                "test_acc": metrics.get("teacher_test_acc"),
            }
            study.set_user_attr("baselines", baselines)
            return
