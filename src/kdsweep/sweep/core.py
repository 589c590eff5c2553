"""One sweep invocation over a persistent Optuna study: ask -> launch -> tell.

- ``n_trials`` counts the study's finished trials (complete or pruned): a rerun runs only
  the missing ones, a finished sweep trains nothing, and N workers sharing a storage stop
  together at exactly n_trials (asking is serialized by studies.study_lock).
- Every job is an Optuna trial, launched, watched and told by ``StudySweep.run_jobs``: the
  search trials, the CE baseline and the confirmation runs (the last two in the companion
  study, kdsweep.sweep.confirm). Trials whose sweeper died are failed at the next start,
  and their MLflow runs closed (kdsweep.sweep.liveness, recovery).
- Each job learns its trial through ``sweep.*`` overrides and reports every epoch to the
  study, so the pruner can stop it (trial_hooks).
- One MLflow parent run per study; trials are its children. A report is written at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from kdsweep.config.folder import config_dir
from kdsweep.config.parts import part_names, users_parts
from kdsweep.config.targets import Target
from kdsweep.config.validation import allowed_targets
from kdsweep.core.errors import CommandFailed, KdsweepError, one_line
from kdsweep.core.signals import check_interrupt, cooperative, interruptible
from kdsweep.sweep.arms import describe_params, param_overrides, ranked_trials
from kdsweep.sweep.baseline import (
    baseline_spec,
    baseline_wanted,
    enqueue_reference,
    new_running_trial,
    record_baseline,
)
from kdsweep.sweep.checks import check_sweep
from kdsweep.sweep.confirm import confirmation_spec, open_companion, plan_confirmation
from kdsweep.sweep.cost_pruning import COSTS_ATTR
from kdsweep.sweep.drift import check_definition, data_fingerprint
from kdsweep.sweep.jobs import Job, Spec, job_outcome, job_overrides
from kdsweep.sweep.live import LIVE
from kdsweep.sweep.liveness import Heartbeat, ask, claim_trial, heartbeat_options
from kdsweep.sweep.parent_run import ParentRun, close_trial_run
from kdsweep.sweep.recovery import clean_up_interrupted, recover
from kdsweep.sweep.settings import SearchSpace, SweepSettings, search_space
from kdsweep.sweep.studies import (
    FINISHED_STATES,
    build_pruner,
    count_states,
    shared_storage,
    study_lock,
    trial_id,
)

log = logging.getLogger("kdsweep.sweep")

#: A command's worker N offsets its sampler's seed by N times this (more than any study's
#: trial count, the offset of a resumed study).
WORKER_SEED_STRIDE = 1_000_000
#: How often a command's worker whose search is done looks at the others' trials.
WORKER_POLL_S = 0.5


#: What ends an invocation: the best trial, the report and the registry, called as
#: ``kdsweep.publish.finish_sweep`` is declared (handed in by the Hydra plugin, since
#: publishing reads the results and so sits above the sweep). Returns why the invocation
#: failed (one line), or None.
Finish = Callable[..., str | None]


def named_for_parts(settings: SweepSettings, config: DictConfig) -> SweepSettings:
    """A shipped search's own study name (``kd-${data.name}-${model.name}``) also names the
    parts that are the user's (``kd-digits-light-loss_sharp_kd-teacher_resnet18``): a sweep
    of their loss or teacher is neither reported nor resumed as the shipped one's. A name
    the user gave (hydra.sweeper.study_name=...) is theirs, kept as it is."""
    given = any(
        str(o).startswith("hydra.sweeper.study_name=")
        for o in OmegaConf.select(config, "hydra.overrides.hydra", default=None) or []
    )
    search = config.hydra.runtime.choices.get("hparams_search")
    shipped = (
        search is not None and (Path(config_dir()) / "hparams_search" / f"{search}.yaml").is_file()
    )
    if given or not shipped:
        return settings
    named = set(settings.study_name.split("-"))
    extra = [f"{part}_{name}" for part, name in users_parts(config).items() if name not in named]
    if not extra:
        return settings
    return dataclasses.replace(settings, study_name="-".join([settings.study_name, *extra]))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class StudySweep:
    """The sweep's one state: its storage, the trials it has in flight, its launched
    jobs. It asks for every job (``_jobs``) and runs it (``run_jobs``); its parts are
    plain functions of the values it hands them."""

    def __init__(
        self,
        config: DictConfig,
        settings: SweepSettings,
        launcher: Any,
        make_sampler: Callable[[int], Any],
        finish: Finish,
        compose: Callable[[list[str]], DictConfig],
        worker: int = 0,
    ) -> None:
        self.config, self.settings = config, settings
        # N > 0: worker N of those a command started (kdsweep.sweep.workers). That command
        # checked the settings, and owns the report, the registration and the parent run.
        self.worker = worker
        self.finish = finish  # what ends an invocation: results, report, registry (kdsweep.publish)
        self.launcher, self.make_sampler = launcher, make_sampler
        self.compose = compose  # a job's config from its overrides (Hydra's config loader)
        self.job_idx = 0  # jobs this invocation launched (Hydra numbers them from it)
        self.in_flight: set[int] = set()  # ids of the trials this sweeper claimed, not yet told
        self.started = time.monotonic()
        self._untaken: dict[tuple[str, ...], list[str]] = {}  # untaken_loss_keys, by overrides

    def _open(self, space: SearchSpace) -> tuple[optuna.Study, ParentRun]:
        s = self.settings
        # The data first: data that cannot load leave no storage and no study behind.
        data = data_fingerprint(self.config, space.distributions)
        self.storage = shared_storage(
            s.storage, heartbeat_options(s.heartbeat_interval, s.grace_period)
        )
        # Workers started together find the same trials: each offsets its sampler's seed
        # by its number too, or they would all draw the same random start-up trials.
        self.sampler = self.make_sampler(self._existing_trials() + WORKER_SEED_STRIDE * self.worker)
        study = optuna.create_study(
            study_name=s.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=build_pruner(s.pruner, allowed_targets(self.config)),
            directions=s.directions,  # the objective's, then one per cost (drift checks them)
            load_if_exists=True,
        )
        check_definition(self.config, s, self.lock, study, space, data)
        study.set_user_attr("parts", part_names(self.config))  # what the report names
        parent = ParentRun.for_study(
            study, self.config, s.describe(self.sampler, space.distributions), lock=self.lock
        )
        return study, parent

    def progress(self, study: optuna.Study, ran: int | None = None) -> str:
        """``[7/20: 3 pruned, 0 failed; best 97.92 %; 0:45, ETA 1:20]``, plain text; the
        ETA from the jobs run so far (``ran``; default: those this sweeper launched)."""
        counts = count_states(study)
        done = sum(counts[state] for state in FINISHED_STATES)
        n = self.settings.n_trials
        elapsed = time.monotonic() - self.started
        text = f"[{done}/{n}: {counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
        ranked = ranked_trials(study)
        if ranked:
            text += f"; best {ranked[0].values[0]:.2f} %"
        ran = max(1, self.job_idx if ran is None else ran)
        eta = elapsed / ran * max(0, n - done)
        return f"{text}; {_clock(elapsed)}, ETA {_clock(eta)}]"

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return study_lock(self.storage, self.settings.storage, self.settings.study_name)

    def run(self, arguments: list[str]) -> optuna.Study:
        # The sweeper writes to its stores: a signal is raised at its checks, between two
        # launches, never inside a write (kdsweep.core.signals).
        with cooperative():
            return self._run(arguments)

    def _run(self, arguments: list[str]) -> optuna.Study:
        space, study, parent = self.start(arguments)
        try:
            return self._sweep(study, space, parent)
        except KeyboardInterrupt as exc:
            clean_up_interrupted(
                self.storage, self.lock, self.config, self.in_flight, study, parent, exc
            )
            raise

    def start(self, arguments: list[str]) -> tuple[SearchSpace, optuna.Study, ParentRun]:
        """Check the settings (unless a worker: its command did), then open the study and
        its parent run: the search space, the study, the parent run."""
        s = self.settings
        # Optuna's own lines ("A new study created...") through Hydra's logging, so the
        # console filter treats them as the other libraries' chatter.
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        if not OmegaConf.select(self.config, "hydra.verbose", default=False):
            # MLflow logs to its own handler, not through Hydra's: its database set-up
            # lines would land mid-sweep. Warnings still show.
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
            logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.settings = s = named_for_parts(s, self.config)
        # A KdsweepError here, before any trial, is the command's one line (its boundary).
        with interruptible():  # the start-up checks write nothing
            space = search_space(s.params, arguments)
            if not self.worker:
                check_sweep(self.config, s, space, self.compose, self.make_sampler)
        study, parent = self._open(space)
        log.info(
            "study %s in %s: %s sampler, %s pruner, n_trials=%d",
            s.study_name,
            s.storage,
            type(self.sampler).__name__,
            s.pruner_name,
            s.n_trials,
        )
        return space, study, parent

    def _sweep(self, study: optuna.Study, space: SearchSpace, parent: ParentRun) -> optuna.Study:
        s = self.settings
        # What every job gets: the sweep's fixed overrides, and its parent run.
        self.base, self.parent_run_id = list(space.fixed), parent.run_id
        recover(self.storage, self.lock, self.config, study)
        # The CE baseline and the confirmation runs are trials of a companion study.
        companion = None
        if s.baselines or s.confirm.enabled:
            companion = open_companion(self.storage, s.study_name)
            recover(self.storage, self.lock, self.config, companion)
        enqueue_reference(self.storage, self.lock, s.enqueue_trials, study, space)
        if companion is not None and s.baselines:
            self._baseline(study, companion)

        failures = launched = 0
        while True:
            jobs = self._search_trials(study, space)
            if not jobs:
                if self._waited_for_other_workers(study):
                    continue
                break
            launched += len(jobs)
            failures += self.run_jobs(jobs).count(TrialState.FAIL)
            if too_many := s.too_many_failures(failures, launched):
                self.finish(study, self.config, self.settings, parent, aborted=True)
                raise CommandFailed(too_many)
        confirm_study = None
        if companion is not None:
            confirm_study = self._confirmation(study, companion, space)
        if self.job_idx == 0:
            log.info(
                "study %s is complete (%d trials, confirmation done): nothing to train; raise"
                " hydra.sweeper.n_trials or hydra.sweeper.confirm.seeds for more",
                s.study_name,
                s.n_trials,
            )
        failure = self.finish(
            study, self.config, self.settings, parent, aborted=False, confirm_study=confirm_study
        )
        if failure is not None:
            raise CommandFailed(failure)
        return study

    def _search_trials(self, study: optuna.Study, space: SearchSpace) -> list[Job]:
        """New search trials for this worker (the queued references first), sampled, never
        more than the study still needs."""
        s = self.settings

        def wanted() -> int:
            counts = count_states(study)
            done = sum(counts[state] for state in FINISHED_STATES)
            remaining = s.n_trials - done - counts[TrialState.RUNNING]
            if remaining <= 0 and counts[TrialState.RUNNING] and not self.worker:
                log.info("%d trials still running in other workers", counts[TrialState.RUNNING])
            return max(0, min(s.n_jobs, remaining))

        def spec(trial: optuna.trial.Trial) -> Spec:
            # The job's folder is named by its Optuna trial number, as the report and MLflow
            # name the trial (Hydra's own job index counts baselines and reruns too).
            context = [
                f"hydra.sweep.subdir=trial-{trial.number}",
                f"sweep.trial_number={trial.number}",
            ]
            own = param_overrides(trial.params)
            return Spec(f"trial {trial.number} ({describe_params(trial.params)})", own, context)

        sample = lambda: ask(study, fixed_distributions=space.distributions)  # noqa: E731
        return self._jobs(study, "trial", wanted, sample, spec)

    def _waited_for_other_workers(self, study: optuna.Study) -> bool:
        """A command's worker whose search is done waits while other workers' trials run
        (a moment, then True: look again): a killed worker's trial is queued again, and
        the confirmation, which every worker takes its share of, starts once the search
        is complete. False when nothing runs, or outside a command's workers."""
        if not self.worker or not count_states(study)[TrialState.RUNNING]:
            return False
        with interruptible():  # a wait in which nothing is written
            time.sleep(WORKER_POLL_S)
        return True

    def _baseline(self, study: optuna.Study, companion: optuna.Study) -> None:
        """The CE baseline, once per study (kdsweep.sweep.baseline); a failed one is
        trained again by a rerun."""
        jobs = self._jobs(
            companion,
            "baseline",
            lambda: int(baseline_wanted(study, companion)),
            lambda: new_running_trial(self.storage, companion),
            lambda _: baseline_spec(self.config.hydra.runtime.choices.get("model")),
        )
        if jobs and self.run_jobs(jobs) == [TrialState.COMPLETE]:
            with self.lock():
                record_baseline(
                    study, self.storage.get_trial_user_attrs(jobs[0].tid).get("metrics")
                )

    def _confirmation(
        self, study: optuna.Study, companion: optuna.Study, space: SearchSpace
    ) -> optuna.Study | None:
        """The confirmation stage, once the search is complete (kdsweep.sweep.confirm):
        the companion study if it ran (even with nothing left to run), else None."""
        s = self.settings
        if not plan_confirmation(self.storage, self.lock, s, self.config, study, companion, space):
            return None

        def waiting() -> int:
            queued = companion.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            return min(s.n_jobs, len(queued))

        done = failures = 0
        while jobs := self._jobs(
            companion,
            "confirm",
            waiting,
            lambda: ask(companion),
            lambda trial: confirmation_spec(companion, trial),
        ):
            log.debug("confirmation: %s", ", ".join(job.label for job in jobs))
            states = self.run_jobs(jobs)
            done += states.count(TrialState.COMPLETE)
            failures += states.count(TrialState.FAIL)
        if done or failures:
            log.info("confirmation: %d run(s) done, %d failed", done, failures)
        if failures:
            log.warning("confirmation: %d run(s) failed; rerun the command to retry them", failures)
        return companion

    def _jobs(
        self,
        study: optuna.Study,
        role: str,
        wanted: Callable[[], int],
        new_trial: Callable[[], optuna.trial.Trial],
        spec: Callable[[optuna.trial.Trial], Spec],
    ) -> list[Job]:
        """The one way to ask for jobs, whatever their role (trial, baseline, confirm):
        under the study lock, ``wanted()`` new trials, each taken as this sweeper's (its
        role, worker and first heartbeat: kdsweep.sweep.liveness) and given its overrides
        (kdsweep.sweep.jobs.job_overrides), a signal honoured between two."""
        jobs = []
        with self.lock():
            for _ in range(wanted()):
                trial = new_trial()
                study_id = self.storage.get_study_id_from_name(study.study_name)
                tid = trial_id(self.storage, study_id, trial.number)
                self.in_flight.add(tid)
                claim_trial(self.storage, tid, role)
                job = spec(trial)
                context = [
                    *job.context,
                    f"sweep.role={role}",
                    f"sweep.trial_id={tid}",
                    f"sweep.study_name={study.study_name}",
                ]
                if self.parent_run_id:
                    context.append(f"sweep.parent_run_id={self.parent_run_id}")
                untaken = self.untaken_loss_keys if job.replaces_loss else None
                overrides = job_overrides(self.base, job.own, context, untaken)
                jobs.append(Job(study, trial, tid, role, job.label, overrides))
                check_interrupt()  # between two asks: the claimed ones are in_flight
        return jobs

    def launch(self, batch: list[list[str]]) -> list[JobReturn]:
        """Run a batch of jobs through Hydra's launcher (numbered on from job_idx)."""
        try:
            returns = list(self.launcher.launch(batch, initial_job_idx=self.job_idx))
        except Exception as exc:  # the launcher itself broke: every job in the batch failed
            broken = JobReturn(status=JobStatus.FAILED)
            broken.return_value = exc
            returns = [broken] * len(batch)
        self.job_idx += len(batch)
        return returns

    def _existing_trials(self) -> int:
        try:
            study_id = self.storage.get_study_id_from_name(self.settings.study_name)
        except KeyError:
            return 0
        return len(self.storage.get_all_trials(study_id, deepcopy=False))

    def run_jobs(self, jobs: list[Job]) -> list[TrialState]:
        """The one path of every job: launch the batch, beat for its trials while it runs,
        then tell each trial how its job ended."""
        # The launcher's wait raises a signal at once (jobs in other processes are not
        # kdsweep's code here); a job it runs in this process checks for it itself.
        with Heartbeat(self.storage, [job.tid for job in jobs]), interruptible():
            returns = self.launch([job.overrides for job in jobs])
        states = [self._tell(job, ret) for job, ret in zip(jobs, returns, strict=True)]
        check_interrupt()  # every finished job is told first: no finished trial is lost
        return states

    def untaken_loss_keys(self, overrides: list[str]) -> list[str]:
        """The keys of the loss node a job with these overrides composes that its loss
        does not take (a config file's settings for another loss). Composed once per
        override list; [] when it does not compose: the job says why."""
        key = tuple(overrides)
        if key not in self._untaken:
            try:
                node = OmegaConf.to_container(self.compose(overrides).loss)
                loss = Target("loss", node, allowed_targets(self.config))  # type: ignore[arg-type]
                self._untaken[key] = loss.untaken_keys()
            except (HydraException, OmegaConfBaseException, KdsweepError):
                self._untaken[key] = []
        return self._untaken[key]

    def _values(
        self, study: optuna.Study, objective: float, user_attrs: dict[str, Any]
    ) -> list[float]:
        """A completed trial's values: its objective, then (a study with costs) the costs
        its job measured before training, in the order of hydra.sweeper.costs."""
        if len(study.directions) == 1:
            return [objective]
        costs = user_attrs.get(COSTS_ATTR) or {}
        missing = [name for name in self.settings.costs if name not in costs]
        if missing:
            raise ValueError(f"the job stored no {', '.join(missing)} for its trial")
        return [objective, *(float(costs[name]) for name in self.settings.costs)]

    def _tell(self, job: Job, ret: JobReturn) -> TrialState:
        value, error = job_outcome(ret)
        # Read back from the storage: the job wrote these attributes in its own process.
        user_attrs = self.storage.get_trial_user_attrs(job.tid)
        state = None
        if error is None:
            try:
                job.study.tell(job.trial, self._values(job.study, float(value), user_attrs))
                state = TrialState.COMPLETE
            except (TypeError, ValueError) as exc:
                error = exc
        if state is None and (user_attrs.get("pruned") or isinstance(error, optuna.TrialPruned)):
            job.study.tell(job.trial, state=TrialState.PRUNED)
            state = TrialState.PRUNED
        if state is None:
            message = f"{type(error).__name__}: {one_line(error, limit=2000)}"
            job.trial.set_user_attr("error", message)
            job.study.tell(job.trial, state=TrialState.FAIL)
            # A job that died before closing its run (or never started one) must not stay RUNNING.
            close_trial_run(self.config, user_attrs.get("mlflow_run_id"), "FAIL", message)
            state = TrialState.FAIL
            if job.role == "trial":
                log.warning("%s: FAIL: %s", job.label, message)
            else:
                log.warning("%s failed: %s", job.label, message)
        self.in_flight.discard(job.tid)
        if job.role == "trial" and state != TrialState.FAIL:
            progress = self.progress(job.study)
            if state == TrialState.COMPLETE:
                log.info("%s: COMPLETE, val %.2f %%  %s", job.label, float(value), progress)
            else:
                epochs = len(user_attrs.get("history") or [])
                log.info("%s: PRUNED after epoch %d  %s", job.label, epochs, progress)
            LIVE.show(f"sweep {self.settings.study_name} {progress}")
        return state
