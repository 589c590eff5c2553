"""The confirmation stage: after the search, retrain the candidates with fresh, paired seeds.

The search's best trial is optimistically biased (picked on val, max over epochs and
trials, one seed). So each sweep ends by retraining these arms with ``confirm.seeds``
fresh seeds, seed s meaning the same student initialisation and data order in every arm
(``trainer.seed=s``), the teacher fixed to the search's (``teacher.seed``):

- ``top1..topK``: the top_k search trials by val accuracy (ties: lower val loss);
- ``ablation``: top1's recipe without the teacher (loss=ce, same model, optimizer, lr,
  epochs): the comparison that isolates distillation;
- ``tutorial``: the enqueued reference setting (the first of ``enqueue_trials``);
- ``ce_default``: a CE student at the sweep's default recipe.

After a search with costs (several objectives) the confirmation confirms a list of
points instead: at most ``confirm.front_k`` points of the search's front, spread over the
costs (the most accurate, today's single best, among them), each as ``front-<trial>``
beside its ablation ``ablation-<trial>`` (kdsweep.sweep.arms.plan_front_arms). The
tolerance the report picks the smallest student with (``front.tolerance``) is recorded
with the plan, so that kdsweep-report rebuilds the same report from the study.

The runs are trials of the companion Optuna study ``<study>:confirm`` (one per arm and
seed, the arm and seed in the trial's user attributes; the CE baseline is a trial there
too), so they go through the search's one job path: the same launcher, claims and
heartbeats, resume (a rerun runs only what is missing, more seeds add runs, a killed run
is retried) and N workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from kdsweep.core.signals import check_interrupt
from kdsweep.sweep.arms import Arm, is_multi_objective, plan_arms, plan_front_arms
from kdsweep.sweep.jobs import Lock, Spec, drop_unplanned
from kdsweep.sweep.settings import CONFIRM_SUFFIX
from kdsweep.sweep.studies import count_states

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from kdsweep.sweep.settings import SearchSpace, SweepSettings

log = logging.getLogger("kdsweep.sweep")

#: The companion's record of hydra.sweeper.front.tolerance (kdsweep.results.front).
TOLERANCE_ATTR = "front_tolerance"

#: A run that is done, in flight or queued: planned again only if it failed.
_LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


def confirm_study_name(study_name: str) -> str:
    return study_name + CONFIRM_SUFFIX


def open_companion(storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    """The companion study of ``study_name``: its CE baseline and confirmation runs."""
    return optuna.create_study(
        study_name=confirm_study_name(study_name),
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),  # never samples: every run is given
        direction="maximize",
        load_if_exists=True,
    )


def plan(
    storage: optuna.storages.BaseStorage,
    companion: optuna.Study,
    arms: Sequence[Arm],
    seeds: list[int],
    teacher_seed: Any,
) -> int:
    """Record the arms, enqueue every (arm, seed) not done, queued or running, and drop
    the queued runs this plan no longer holds (an interrupted invocation's larger
    confirm.seeds): a rerun runs exactly what its settings plan. Called under the study
    lock; a signal is honoured between two writes. Returns how many runs are queued."""
    recorded = dict(companion.user_attrs.get("arms", {}))
    recorded.update({arm.key: arm.as_attr() for arm in arms})
    companion.set_user_attr("arms", recorded)
    companion.set_user_attr("current_arms", [arm.key for arm in arms])
    companion.set_user_attr("seeds", seeds)
    companion.set_user_attr("teacher_seed", teacher_seed)
    wanted = {(arm.key, seed) for arm in arms for seed in seeds}
    dropped = drop_unplanned(storage, companion, lambda t: arm_seed(t) in wanted)
    have = {arm_seed(t) for t in companion.get_trials(deepcopy=False, states=_LIVE)}
    if dropped:
        log.info(
            "confirmation: %d queued run(s) of an earlier plan are not in this one"
            " (confirm.seeds=%d, %d arm(s)): marked FAIL, not run",
            dropped,
            len(seeds),
            len(arms),
        )
    for arm in arms:
        for seed in seeds:
            if (arm.key, seed) not in have:
                companion.enqueue_trial({}, user_attrs={"arm": arm.key, "seed": seed})
                check_interrupt()
    return len(companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def arm_seed(trial: optuna.trial.FrozenTrial) -> tuple[Any, Any]:
    """The arm and the seed a confirmation run (a companion study's trial) was queued for."""
    return trial.user_attrs.get("arm"), trial.user_attrs.get("seed")


def confirmation_spec(companion: optuna.Study, trial: optuna.trial.Trial) -> Spec:
    """A queued confirmation run's job: its arm's settings, its seed (the teacher's fixed
    to the search's), its run's and folder's names."""
    arm, seed = str(trial.user_attrs["arm"]), int(trial.user_attrs["seed"])
    recorded = companion.user_attrs["arms"][arm]
    context = [
        f"trainer.seed={seed}",
        f"teacher.seed={companion.user_attrs.get('teacher_seed')}",
        f"sweep.arm={arm}",
        f"tracking.run_name=confirm-{arm}-seed{seed}",
        f"hydra.sweep.subdir=confirm-{arm}-seed{seed}",
    ]
    label = f"confirmation {arm} seed {seed}"
    return Spec(label, list(recorded["overrides"]), context, bool(recorded.get("replaces_loss")))


def confirmed_results(study: optuna.Study) -> dict[str, dict[int, dict[str, float]]]:
    """arm -> seed -> final metrics of its completed confirmation runs."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arm, seed = arm_seed(trial)
        metrics = trial.user_attrs.get("metrics")
        if arm is None or seed is None or not metrics:
            continue
        out.setdefault(str(arm), {})[int(seed)] = dict(metrics)
    return out


def plan_confirmation(
    storage: optuna.storages.BaseStorage,
    lock: Lock,
    settings: SweepSettings,
    config: DictConfig,
    study: optuna.Study,
    companion: optuna.Study,
    space: SearchSpace,
) -> bool:
    """Plan the confirmation stage once the search is complete (its runs are then asked
    for from the companion's queue); False when it does not run now (no seeds, or search
    trials still running elsewhere)."""
    seeds = settings.confirmation_seeds(OmegaConf.select(config, "trainer.seed"))
    if not seeds:
        return False
    running = count_states(study)[TrialState.RUNNING]
    if running:
        log.info("confirmation: waits for %d search trial(s) still running elsewhere", running)
        return False
    if is_multi_objective(study):
        arms = plan_front_arms(study, settings.confirm.front_k)
    else:
        top_k, names = settings.confirm.top_k, list(space.distributions)
        arms = plan_arms(study, top_k, settings.enqueue_trials, names)
    with lock():
        queued = plan(storage, companion, arms, seeds, OmegaConf.select(config, "teacher.seed"))
        if is_multi_objective(study):
            companion.set_user_attr(TOLERANCE_ATTR, settings.front.tolerance)
    log.info(
        "confirmation: %d arm(s) x %d seed(s), %d run(s) to go",
        len(arms),
        len(seeds),
        queued,
    )
    return True
