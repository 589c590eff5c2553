"""One sweep invocation over a persistent Optuna study: ask -> launch -> tell.

- ``n_trials`` counts the study's finished trials (complete or pruned): a rerun runs only
  the missing ones, a finished sweep trains nothing, and N workers sharing a storage stop
  together at exactly n_trials (asking is serialized by studies.study_lock).
- Trials whose sweeper died (SIGKILL, lost machine) are found by their owner's pid or a
  stale heartbeat, failed in Optuna, and their MLflow runs closed.
- Each job learns its trial through ``sweep.*`` overrides and reports every epoch to the
  study, so the pruner can stop it (trial_hooks).
- One MLflow parent run per study; trials are its children. A report is written at the end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Callable
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from kdsweep.errors import KdsweepError, first_line, interrupt_name
from kdsweep.secrets import mask_secrets
from kdsweep.sweep.confirm import Confirmation, plan_arms
from kdsweep.sweep.finish import finish_sweep
from kdsweep.sweep.parent_run import (
    ParentRun,
    close_role_runs,
    close_trial_run,
    read_job_metrics,
)
from kdsweep.sweep.settings import SearchSpace, SweepSettings, check_enqueued, search_space
from kdsweep.sweep.studies import (
    FINISHED_STATES,
    OWNER_ATTR,
    Heartbeat,
    build_pruner,
    claim_study_task,
    claim_trial,
    count_states,
    open_storage,
    owner_tag,
    release_study_task,
    stale_trials,
    study_lock,
    trial_id,
)
from kdsweep.validation import validate

log = logging.getLogger("kdsweep.sweep")

#: A trial asked of the study, with its id in the storage.
Asked = tuple[optuna.trial.Trial, int]

#: The study user attribute that claims the CE baseline (owner and heartbeat).
BASELINE_CLAIM = "baseline_claim"


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


class StudySweep:
    def __init__(
        self,
        config: DictConfig,
        settings: SweepSettings,
        launcher: Any,
        make_sampler: Callable[[int], Any],
    ) -> None:
        self.config, self.settings = config, settings
        self.launcher, self.make_sampler = launcher, make_sampler
        self.job_idx = 0

    def _check(self, space: SearchSpace) -> None:
        """Before anything is written: the settings, the search space, the config."""
        self.settings.check()
        choices = self.config.hydra.runtime.choices
        for name in space.distributions:
            if name not in choices and OmegaConf.select(self.config, name) is None:
                raise KdsweepError(
                    f"search parameter {name} is not in the config (loss={choices.get('loss')}):"
                    " fix hydra.sweeper.params or pick a matching group"
                )
        settings = validate(self.config)
        check_enqueued(space, self.settings.enqueue_trials)
        self._check_bounds(space, choices)
        self._check_sampler()
        if settings.trainer.device != "auto":
            from kdsweep.train import check_device

            check_device(settings.trainer.device)
        # The tracking store must answer (a server) and be whole (a SQLite file) before
        # the study exists: an unreachable MLflow must not leave an empty study behind.
        from kdsweep.tracking import RunTracker

        RunTracker(settings.tracking, "sweep").check()

    def _check_bounds(self, space: SearchSpace, groups: Any) -> None:
        """Each end of a searched range (and each choice) must be a valid setting:
        ``optimizer.lr=interval(0, 0.1)`` would fail the trials that draw near 0."""
        from kdsweep.errors import ConfigError

        ours = OmegaConf.masked_copy(self.config, [k for k in self.config if k != "hydra"])
        base = OmegaConf.to_container(ours, resolve=True)
        for name, dist in space.distributions.items():
            if name in groups:  # a config group (optimizer=choice(adam, sgd_nesterov))
                continue
            values = getattr(dist, "choices", None) or (dist.low, dist.high)  # type: ignore[attr-defined]
            for value in values:
                trial = OmegaConf.create(base)
                OmegaConf.update(trial, name, value, force_add=True)
                try:
                    validate(trial)
                except ConfigError as exc:
                    raise KdsweepError(
                        f"search space {name}={dist}: at {value}, {exc}: narrow the range"
                    ) from None

    def _check_sampler(self) -> None:
        """The sampler is built once here, so a _target_ outside the allowed samplers or a
        bad sampler option is one line at start-up."""
        try:
            self.make_sampler(0)
        except Exception as exc:
            raise KdsweepError(
                f"hydra.sweeper.sampler cannot be built ({mask_secrets(first_line(exc))[:300]}):"
                " use one of optuna.samplers.* (e.g. TPESampler) with its options"
            ) from None

    def _open(self, space: SearchSpace) -> tuple[optuna.Study, ParentRun]:
        s = self.settings
        self.storage = open_storage(s.storage)
        self.sampler = self.make_sampler(self._existing_trials())
        study = optuna.create_study(
            study_name=s.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=build_pruner(s.pruner),
            direction=s.direction,
            load_if_exists=True,
        )
        self.study_id = self.storage.get_study_id_from_name(s.study_name)
        parent = ParentRun.for_study(
            study, self.config, s.describe(self.sampler, space.distributions), lock=self._lock
        )
        return study, parent

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return study_lock(self.storage, self.settings.storage, self.settings.study_name)

    def run(self, arguments: list[str]) -> optuna.Study:
        s = self.settings
        try:
            space = search_space(s.params, arguments)
            self._check(space)
            study, parent = self._open(space)
        except KdsweepError as exc:
            from kdsweep.main import report_error

            report_error(exc)
            raise SystemExit(2) from None
        log.info(
            "study %s in %s: %s sampler, %s pruner, n_trials=%d",
            s.study_name,
            mask_secrets(s.storage),
            type(self.sampler).__name__,
            s.pruner.get("name"),
            s.n_trials,
        )
        self.confirm_study: optuna.Study | None = None
        try:
            return self._sweep(study, space, parent)
        except KeyboardInterrupt as exc:
            self._interrupted(study, parent, exc)
            raise

    def _sweep(self, study: optuna.Study, space: SearchSpace, parent: ParentRun) -> optuna.Study:
        s = self.settings
        self._fail_stale(study)
        self._enqueue_reference(study, space)
        if s.baselines:
            self._run_baseline_once(study, space.fixed, parent)

        failures = launched = 0
        while asked := self._ask(study, space):
            overrides = [self._overrides(t, tid, space.fixed, parent) for t, tid in asked]
            with Heartbeat(self.storage, [tid for _, tid in asked], s.heartbeat_interval):
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                except Exception as exc:  # the launcher itself broke: every job in the batch failed
                    broken = JobReturn(status=JobStatus.FAILED)
                    broken.return_value = exc
                    returns = [broken] * len(asked)
            self.job_idx += len(asked)
            launched += len(asked)
            failures += sum(
                self._tell(study, t, tid, r) == TrialState.FAIL
                for (t, tid), r in zip(asked, returns, strict=True)
            )
            if failures > s.max_failure_rate * s.n_trials:
                finish_sweep(study, self.config, self.settings, parent, aborted=True)
                print(
                    f"kdsweep: error: {failures} of {launched} trials failed, more than"
                    f" max_failure_rate={s.max_failure_rate} of n_trials={s.n_trials}:"
                    " see the trials' errors in the report or MLflow (tag 'error')",
                    file=sys.stderr,
                )
                raise SystemExit(1)
        confirmation = self._confirm(study, space, parent)
        finish_sweep(
            study,
            self.config,
            self.settings,
            parent,
            aborted=False,
            confirm_study=confirmation.study if confirmation else None,
        )
        return study

    def _launch(self, batch: list[list[str]]) -> list[JobReturn]:
        try:
            returns = list(self.launcher.launch(batch, initial_job_idx=self.job_idx))
        except Exception as exc:  # the launcher itself broke: every job in the batch failed
            broken = JobReturn(status=JobStatus.FAILED)
            broken.return_value = exc
            returns = [broken] * len(batch)
        self.job_idx += len(batch)
        return returns

    def _confirm(
        self, study: optuna.Study, space: SearchSpace, parent: ParentRun
    ) -> Confirmation | None:
        """The confirmation stage (kdsweep.sweep.confirm), once the search is complete."""
        s = self.settings
        search_seed = OmegaConf.select(self.config, "trainer.seed")
        seeds = s.confirmation_seeds(search_seed)
        if not seeds:
            return None
        running = count_states(study)[TrialState.RUNNING]
        if running:
            log.info("confirmation: waits for %d search trial(s) still running elsewhere", running)
            return None
        stage = Confirmation(
            self.storage,
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
        self.confirm_study = stage.study
        queued = stage.plan(arms, OmegaConf.select(self.config, "teacher.seed"))
        log.info(
            "confirmation: %d arm(s) x %d seed(s), %d run(s) to go",
            len(arms),
            len(seeds),
            queued,
        )
        base = list(space.fixed)
        if parent.run_id:
            base.append(f"sweep.parent_run_id={parent.run_id}")
        failures = stage.run(base, self._launch, job_outcome)
        if failures:
            log.warning("confirmation: %d run(s) failed; rerun the command to retry them", failures)
        return stage

    def _existing_trials(self) -> int:
        try:
            study_id = self.storage.get_study_id_from_name(self.settings.study_name)
        except KeyError:
            return 0
        return len(self.storage.get_all_trials(study_id, deepcopy=False))

    def _fail_stale(self, study: optuna.Study) -> None:
        with self._lock():
            for trial in stale_trials(study, self.settings.grace_period):
                log.warning(
                    "trial %d was interrupted (its sweeper died): marking it FAIL", trial.number
                )
                tid = trial_id(self.storage, self.study_id, trial.number)
                self.storage.set_trial_user_attr(tid, "error", "interrupted")
                # Not study.tell: this sweeper's sampler never sampled the dead trial.
                self.storage.set_trial_state_values(tid, TrialState.FAIL)
                close_trial_run(
                    self.config,
                    trial.user_attrs.get("mlflow_run_id"),
                    "FAIL",
                    "interrupted: the sweep process died during this trial",
                )

    def _interrupted(self, study: optuna.Study, parent: ParentRun, exc: BaseException) -> None:
        """SIGINT/SIGTERM: this process's trials in flight become FAIL (a rerun runs them
        again), their MLflow runs and the baseline's end KILLED, the baseline claim is
        freed, and the parent run ends KILLED unless other workers still run trials."""
        reason = f"interrupted by {interrupt_name(exc)}"
        me = owner_tag()
        with contextlib.suppress(Exception), self._lock():
            for current in (study, self.confirm_study):
                if current is None:
                    continue
                current_id = self.storage.get_study_id_from_name(current.study_name)
                for trial in current.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if trial.system_attrs.get(OWNER_ATTR) != me:
                        continue
                    tid = trial_id(self.storage, current_id, trial.number)
                    self.storage.set_trial_user_attr(tid, "error", reason)
                    self.storage.set_trial_state_values(tid, TrialState.FAIL)
                    close_trial_run(
                        self.config, trial.user_attrs.get("mlflow_run_id"), "FAIL", reason, "KILLED"
                    )
            claim = study.user_attrs.get(BASELINE_CLAIM)
            if isinstance(claim, dict) and claim.get("owner") == me:
                release_study_task(self.storage, self.study_id, BASELINE_CLAIM)
                close_role_runs(self.config, parent.run_id, "baseline", reason, "KILLED")
            if not count_states(study)[TrialState.RUNNING]:
                parent.end("KILLED")

    def _enqueue_reference(self, study: optuna.Study, space: SearchSpace) -> None:
        """Enqueue each of ``enqueue_trials`` (the reference setting) unless a trial with
        its values is complete, pruned, running or waiting: a reference trial that was
        killed or failed is asked again by the next invocation, until it completes."""
        if not self.settings.enqueue_trials:
            return
        with self._lock():
            reference_number = None
            for index, given in enumerate(self.settings.enqueue_trials):
                params = {k: v for k, v in given.items() if k in space.distributions}
                number = _trial_with_params(study, params)
                if number is None:
                    study.enqueue_trial(params)
                    number = _trial_with_params(study, params)
                if index == 0:
                    reference_number = number
            study.set_user_attr("enqueued", True)
            if reference_number is not None:
                study.set_user_attr("tutorial_trial_number", reference_number)

    def _run_baseline_once(self, study: optuna.Study, base: list[str], parent: ParentRun) -> None:
        """A CE-only student with the sweep's fixed settings, once per study, for the
        report's baseline row. The teacher's row comes from the trials' own metrics. The
        claim lives as long as its claimer's heartbeat: a sweep killed during the baseline
        leaves a claim the next invocation takes over (closing the run it left open); a
        failed baseline is released, so a rerun tries again."""
        s = self.settings
        with self._lock():
            if "student_ce" in study.user_attrs.get("baselines", {}):
                return
            if not claim_study_task(self.storage, self.study_id, BASELINE_CLAIM, s.grace_period):
                log.info("baseline: another worker is training it")
                return
            closed = close_role_runs(
                self.config,
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
        ]
        if parent.run_id:
            overrides.append(f"sweep.parent_run_id={parent.run_id}")
        if self.config.hydra.runtime.choices.get("model") == "modified":
            overrides.append("model=light")
        log.info("baseline: training a CE-only student once for this study")
        with Heartbeat(
            self.storage, [], s.heartbeat_interval, tasks=[(self.study_id, BASELINE_CLAIM)]
        ):
            (ret,) = self.launcher.launch([overrides], initial_job_idx=self.job_idx)
        self.job_idx += 1
        _, error = job_outcome(ret)
        metrics = read_job_metrics(ret)
        with self._lock():
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
            release_study_task(self.storage, self.study_id, BASELINE_CLAIM)

    def _ask(self, study: optuna.Study, space: SearchSpace) -> list[Asked]:
        """New trials for this worker, sampled, never more than the study still needs."""
        s = self.settings
        with self._lock():
            counts = count_states(study)
            done = sum(counts[state] for state in FINISHED_STATES)
            remaining = s.n_trials - done - counts[TrialState.RUNNING]
            if remaining <= 0:
                if counts[TrialState.RUNNING]:
                    log.info("%d trials still running in other workers", counts[TrialState.RUNNING])
                return []
            asked = []
            for _ in range(min(s.n_jobs, remaining)):
                trial = study.ask(fixed_distributions=space.distributions)
                tid = trial_id(self.storage, self.study_id, trial.number)
                claim_trial(self.storage, tid)
                asked.append((trial, tid))
        log.info(
            "study %s: %d/%d finished, launching trial(s) %s",
            s.study_name,
            done,
            s.n_trials,
            ", ".join(str(trial.number) for trial, _ in asked),
        )
        return asked

    def _overrides(
        self, trial: optuna.trial.Trial, tid: int, base: list[str], parent: ParentRun
    ) -> list[str]:
        overrides = [f"{name}={value}" for name, value in trial.params.items()] + base
        overrides += [
            f"sweep.trial_number={trial.number}",
            f"sweep.trial_id={tid}",
            f"sweep.study_name={self.settings.study_name}",
        ]
        if parent.run_id:
            overrides.append(f"sweep.parent_run_id={parent.run_id}")
        return overrides

    def _tell(
        self, study: optuna.Study, trial: optuna.trial.Trial, tid: int, ret: JobReturn
    ) -> TrialState:
        value, error = job_outcome(ret)
        # Read back from the storage: the job wrote these attributes in its own process.
        user_attrs = self.storage.get_trial_user_attrs(tid)
        if error is None:
            try:
                study.tell(trial, float(value))
                return TrialState.COMPLETE
            except (TypeError, ValueError) as exc:
                error = exc
        if user_attrs.get("pruned") or isinstance(error, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
            return TrialState.PRUNED
        message = mask_secrets(" ".join(f"{type(error).__name__}: {error}".split())[:2000])
        log.warning("trial %d failed: %s", trial.number, message)
        trial.set_user_attr("error", message)
        study.tell(trial, state=TrialState.FAIL)
        # A job that died before closing its run (or never started one) must not stay RUNNING.
        close_trial_run(self.config, user_attrs.get("mlflow_run_id"), "FAIL", message)
        return TrialState.FAIL


def _trial_with_params(study: optuna.Study, params: dict[str, Any]) -> int | None:
    """The number of a complete, pruned, running or waiting trial (the first) whose values
    are ``params`` (a waiting trial's are its fixed_params), or None."""
    import math

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
