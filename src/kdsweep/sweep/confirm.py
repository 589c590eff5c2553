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

The runs are trials of a companion Optuna study ``<study>:confirm`` (one per arm and
seed, the arm in the trial's user attributes), so they share the search's machinery:
the same launcher, claims and heartbeats, resume (a rerun runs only what is missing,
more seeds add runs, a killed run is retried) and N workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf
from optuna.trial import TrialState

from kdsweep.core.secrets import mask_secrets
from kdsweep.core.signals import deferred_signals
from kdsweep.sweep.arms import Arm, plan_arms
from kdsweep.sweep.jobs import job_outcome
from kdsweep.sweep.liveness import Heartbeat, claim_trial, stale_trials
from kdsweep.sweep.parent_run import close_trial_run
from kdsweep.sweep.studies import count_states, study_lock, trial_id

if TYPE_CHECKING:
    from kdsweep.sweep.jobs import Sweep
    from kdsweep.sweep.parent_run import ParentRun
    from kdsweep.sweep.settings import SearchSpace

log = logging.getLogger("kdsweep.sweep")

CONFIRM_SUFFIX = ":confirm"


def confirm_study_name(study_name: str) -> str:
    return study_name + CONFIRM_SUFFIX


@dataclass
class ConfirmJob:
    arm: str
    seed: int
    tid: int
    trial: optuna.trial.Trial


class Confirmation:
    """Plans, claims, launches and records the confirmation runs of one study."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        storage_url: str,
        study_name: str,
        seeds: Sequence[int],
        n_jobs: int,
        heartbeat_interval: float,
        grace_period: float,
    ) -> None:
        self.storage, self.storage_url = storage, storage_url
        self.name = confirm_study_name(study_name)
        self.seeds, self.n_jobs = list(seeds), n_jobs
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.study = optuna.create_study(
            study_name=self.name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # never samples: every run is enqueued
            direction="maximize",
            load_if_exists=True,
        )
        self.study_id = storage.get_study_id_from_name(self.name)

    def lock(self) -> AbstractContextManager[None]:
        return study_lock(self.storage, self.storage_url, self.name)

    def plan(
        self,
        arms: Sequence[Arm],
        teacher_seed: Any,
        close_run: Callable[[str | None], None] = lambda run_id: None,
    ) -> int:
        """Record the arms, fail dead runs (``close_run`` ends the MLflow run each left
        RUNNING), enqueue every (arm, seed) not done, queued or running. Returns how many
        runs are queued."""
        with self.lock():
            recorded = dict(self.study.user_attrs.get("arms", {}))
            recorded.update({arm.key: arm.as_attr() for arm in arms})
            self.study.set_user_attr("arms", recorded)
            self.study.set_user_attr("current_arms", [arm.key for arm in arms])
            self.study.set_user_attr("seeds", self.seeds)
            self.study.set_user_attr("teacher_seed", teacher_seed)
            for trial in stale_trials(self.study, self.grace_period):
                log.warning("confirmation run %s was interrupted: it will run again", trial.number)
                tid = trial_id(self.storage, self.study_id, trial.number)
                self.storage.set_trial_user_attr(tid, "error", "interrupted")
                self.storage.set_trial_state_values(tid, TrialState.FAIL)
                close_run(trial.user_attrs.get("mlflow_run_id"))
            have = {
                (t.user_attrs.get("arm"), t.user_attrs.get("seed"))
                for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
            }
            for arm in arms:
                for seed in self.seeds:
                    if (arm.key, seed) not in have:
                        self.study.enqueue_trial({}, user_attrs={"arm": arm.key, "seed": seed})
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            return len(waiting)

    def ask(self) -> list[ConfirmJob]:
        """Up to n_jobs queued runs for this worker, claimed."""
        with self.lock():
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            jobs = []
            for _ in range(min(self.n_jobs, len(waiting))):
                trial = self.study.ask()
                tid = trial_id(self.storage, self.study_id, trial.number)
                claim_trial(self.storage, tid)
                attrs = self.storage.get_trial_user_attrs(tid)
                jobs.append(ConfirmJob(str(attrs["arm"]), int(attrs["seed"]), tid, trial))
            return jobs

    def run(
        self,
        base: list[str],
        launch: Callable[[list[list[str]]], Sequence[JobReturn]],
        outcome: Callable[[JobReturn], tuple[Any, BaseException | None]],
    ) -> int:
        """Launch the queued runs until none is left; returns how many failed."""
        failures = 0
        arms = self.study.user_attrs.get("arms", {})
        done = 0
        while jobs := self.ask():
            log.debug("confirmation: %s", ", ".join(f"{job.arm} seed {job.seed}" for job in jobs))
            batch = [self._overrides(base, arms[job.arm]["overrides"], job) for job in jobs]
            with Heartbeat(self.storage, [job.tid for job in jobs], self.heartbeat_interval):
                returns = launch(batch)
            with deferred_signals():  # a signal mid-tell would leave a finished run RUNNING
                for job, ret in zip(jobs, returns, strict=True):
                    value, error = outcome(ret)
                    if error is None:
                        self.study.tell(job.trial, float(value))
                        done += 1
                        continue
                    failures += 1
                    message = mask_secrets(" ".join(f"{type(error).__name__}: {error}".split()))
                    log.warning("confirmation %s seed %d failed: %s", job.arm, job.seed, message)
                    job.trial.set_user_attr("error", message[:2000])
                    self.study.tell(job.trial, state=TrialState.FAIL)
        if done or failures:
            log.info("confirmation: %d run(s) done, %d failed", done, failures)
        return failures

    def _overrides(self, base: list[str], arm: list[str], job: ConfirmJob) -> list[str]:
        if any(o.startswith("loss=") for o in arm):
            # Another loss: the sweep's fixed loss.* values belong to the searched one.
            base = [o for o in base if not o.lstrip("+~").startswith("loss")]
        teacher_seed = self.study.user_attrs.get("teacher_seed")
        return [
            *base,
            *arm,
            f"trainer.seed={job.seed}",
            f"teacher.seed={teacher_seed}",
            "sweep.role=confirm",
            f"sweep.arm={job.arm}",
            f"sweep.trial_id={job.tid}",
            f"sweep.study_name={self.name}",
            f"tracking.run_name=confirm-{job.arm}-seed{job.seed}",
            f"hydra.sweep.subdir=confirm-{job.arm}-seed{job.seed}",
        ]


def confirmed_results(study: optuna.Study) -> dict[str, dict[int, dict[str, float]]]:
    """arm -> seed -> final metrics of its completed confirmation runs."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arm, seed = trial.user_attrs.get("arm"), trial.user_attrs.get("seed")
        metrics = trial.user_attrs.get("metrics")
        if arm is None or seed is None or not metrics:
            continue
        out.setdefault(str(arm), {})[int(seed)] = dict(metrics)
    return out


def run_confirmation(
    sweep: Sweep, study: optuna.Study, space: SearchSpace, parent: ParentRun
) -> Confirmation | None:
    """The confirmation stage (kdsweep.sweep.confirm), once the search is complete."""
    s = sweep.settings
    search_seed = OmegaConf.select(sweep.config, "trainer.seed")
    seeds = s.confirmation_seeds(search_seed)
    if not seeds:
        return None
    running = count_states(study)[TrialState.RUNNING]
    if running:
        log.info("confirmation: waits for %d search trial(s) still running elsewhere", running)
        return None
    stage = Confirmation(
        sweep.storage,
        s.storage,
        s.study_name,
        seeds,
        s.n_jobs,
        s.heartbeat_interval,
        s.grace_period,
    )
    arms = plan_arms(
        study, int(s.confirm.get("top_k", 3)), s.enqueue_trials, list(space.distributions)
    )
    sweep.confirm_study = stage.study

    def close_run(run_id: str | None) -> None:
        reason = "interrupted: the sweep process died during this confirmation run"
        close_trial_run(sweep.config, run_id, "FAIL", reason)

    queued = stage.plan(arms, OmegaConf.select(sweep.config, "teacher.seed"), close_run)
    log.info(
        "confirmation: %d arm(s) x %d seed(s), %d run(s) to go",
        len(arms),
        len(seeds),
        queued,
    )
    base = list(space.fixed)
    if parent.run_id:
        base.append(f"sweep.parent_run_id={parent.run_id}")

    failures = stage.run(base, sweep.launch, job_outcome)
    if failures:
        log.warning("confirmation: %d run(s) failed; rerun the command to retry them", failures)
    return stage
