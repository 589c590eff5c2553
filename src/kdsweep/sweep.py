"""One sweep invocation over a persistent Optuna study.

- ``n_trials`` counts the study's finished trials (complete or pruned): a rerun runs only
  the missing ones, a finished sweep trains nothing, and N workers sharing a storage stop
  together at exactly n_trials (asking is serialized by kdsweep.studies.study_lock).
- Trials whose sweeper died (SIGKILL, lost machine) are found by their owner's pid or a
  stale heartbeat, failed in Optuna, and their MLflow runs closed.
- Each job learns its trial through ``sweep.*`` overrides and reports every epoch to the
  study, so the pruner can stop it (kdsweep.trial_link).
- One MLflow parent run per study; trials are its children. A report is written at the end.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from kdsweep.config import validate
from kdsweep.errors import KdsweepError
from kdsweep.secrets import mask_secrets
from kdsweep.studies import (
    FINISHED_STATES,
    Heartbeat,
    build_pruner,
    claim_trial,
    count_states,
    open_storage,
    stale_trials,
    study_lock,
)
from kdsweep.sweep_tracking import ParentRun, close_trial_run, read_job_metrics

log = logging.getLogger("kdsweep.sweep")


class StudySweep:
    def __init__(
        self,
        config: DictConfig,
        launcher: Any,
        make_sampler: Callable[[int], Any],
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        pruner: DictConfig,
        enqueue_trials: Sequence[Any],
        baselines: bool,
        report_dir: str,
        heartbeat_interval: float,
        grace_period: float,
        custom_search_space: str | None = None,
    ) -> None:
        self.config, self.launcher, self.make_sampler = config, launcher, make_sampler
        self.direction = direction if isinstance(direction, str) else direction.name
        self.storage_url = str(storage or "sqlite:///optuna.db")
        self.study_name = study_name or "kdsweep"
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params
        self.pruner_conf = pruner
        self.enqueue_trials = [dict(t) for t in (enqueue_trials or [])]
        self.baselines, self.report_dir = baselines, report_dir
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.custom_search_space = custom_search_space
        self.job_idx = 0

    # -- checks before anything is written ----------------------------------------------
    def _check(self, space: dict[str, Any]) -> None:
        if self.custom_search_space:
            raise KdsweepError("hydra.sweeper.custom_search_space is not supported by kdsweep")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise KdsweepError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise KdsweepError("hydra.sweeper.max_failure_rate must be in [0, 1]")
        if self.direction not in ("maximize", "minimize"):
            raise KdsweepError("hydra.sweeper.direction must be maximize or minimize")
        choices = self.config.hydra.runtime.choices
        for name in space:
            if name not in choices and OmegaConf.select(self.config, name) is None:
                raise KdsweepError(
                    f"search parameter {name} is not in the config (loss={choices.get('loss')}):"
                    " fix hydra.sweeper.params or pick a matching group"
                )
        validate(self.config)

    def _search_space(self, arguments: list[str]) -> tuple[dict, dict, list]:
        sweeper_params = [f"{k!s}={v}" for k, v in (self.params or {}).items()]
        space, fixed, fixed_overrides = create_params_from_overrides(sweeper_params + arguments)
        for name in fixed:
            space.pop(name, None)
        return space, fixed, fixed_overrides

    # -- the sweep -----------------------------------------------------------------------
    def run(self, arguments: list[str]) -> optuna.Study:
        try:
            space, fixed, fixed_overrides = self._search_space(arguments)
            self._check(space)
            storage = open_storage(self.storage_url)
            self.sampler = self.make_sampler(self._existing_trials(storage))
            study = optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                sampler=self.sampler,
                pruner=build_pruner(self.pruner_conf),
                direction=self.direction,
                load_if_exists=True,
            )
            parent = ParentRun.for_study(
                study,
                self.config,
                self._describe(space),
                lock=lambda: study_lock(storage, self.storage_url, self.study_name),
            )
        except KdsweepError as exc:
            from kdsweep.main import report_error

            report_error(exc)
            raise SystemExit(2) from None
        log.info(
            "study %s in %s: %s sampler, %s pruner, n_trials=%d",
            self.study_name,
            mask_secrets(self.storage_url),
            type(self.sampler).__name__,
            self.pruner_conf.get("name"),
            self.n_trials,
        )
        self._fail_stale(study)
        self._enqueue_once(study, space)
        base_overrides = [f"{k}={v}" for k, v in fixed.items()] + list(fixed_overrides)
        if self.baselines:
            self._run_baseline_once(study, base_overrides, parent)

        failures = launched = 0
        while True:
            trials = self._ask(study, storage)
            if not trials:
                break
            overrides = [self._overrides(t, space, base_overrides, parent) for t in trials]
            with Heartbeat(storage, [t._trial_id for t in trials], self.heartbeat_interval):
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                except Exception as exc:  # the launcher itself broke: every job in the batch failed
                    returns = [JobReturn(status=JobStatus.FAILED, _return_value=exc)] * len(trials)
            self.job_idx += len(trials)
            launched += len(trials)
            failures += sum(
                self._tell(study, t, r) == TrialState.FAIL
                for t, r in zip(trials, returns, strict=True)
            )
            if failures > self.max_failure_rate * self.n_trials:
                self._finish(study, parent, aborted=True)
                print(
                    f"kdsweep: error: {failures} of {launched} trials failed, more than"
                    f" max_failure_rate={self.max_failure_rate} of n_trials={self.n_trials}:"
                    " see the trials' errors in the report or MLflow (tag 'error')",
                    file=sys.stderr,
                )
                raise SystemExit(1)
        self._finish(study, parent, aborted=False)
        return study

    def _existing_trials(self, storage: optuna.storages.BaseStorage) -> int:
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return 0
        return len(storage.get_all_trials(study_id, deepcopy=False))

    def _describe(self, space: dict[str, Any]) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "sampler": type(self.sampler).__name__,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "pruner": self.pruner_conf.get("name"),
            "storage": mask_secrets(self.storage_url),
            "search_space": {name: str(dist) for name, dist in space.items()},
        }

    def _fail_stale(self, study: optuna.Study) -> None:
        with study_lock(study._storage, self.storage_url, self.study_name):
            for trial in stale_trials(study, self.grace_period):
                log.warning(
                    "trial %d was interrupted (its sweeper died): marking it FAIL", trial.number
                )
                study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                close_trial_run(
                    self.config,
                    trial.user_attrs.get("mlflow_run_id"),
                    "FAIL",
                    "interrupted: the sweep process died during this trial",
                )

    def _enqueue_once(self, study: optuna.Study, space: dict[str, Any]) -> None:
        if not self.enqueue_trials:
            return
        with study_lock(study._storage, self.storage_url, self.study_name):
            if study.user_attrs.get("enqueued"):
                return
            for params in self.enqueue_trials:
                study.enqueue_trial({k: v for k, v in params.items() if k in space})
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            study.set_user_attr("enqueued", True)
            if waiting:
                study.set_user_attr("tutorial_trial_number", min(t.number for t in waiting))

    def _run_baseline_once(self, study: optuna.Study, base: list[str], parent: ParentRun) -> None:
        """A CE-only student with the sweep's fixed settings, once per study, for the
        report's baseline row. The teacher's row comes from the trials' own metrics."""
        with study_lock(study._storage, self.storage_url, self.study_name):
            if study.user_attrs.get("baseline_claimed"):
                return
            study.set_user_attr("baseline_claimed", True)
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
        (ret,) = self.launcher.launch([overrides], initial_job_idx=self.job_idx)
        self.job_idx += 1
        metrics = read_job_metrics(ret)
        if ret.status == JobStatus.COMPLETED and metrics:
            baselines = dict(study.user_attrs.get("baselines", {}))
            baselines["student_ce"] = {
                "val_acc": metrics.get("objective"),
                "test_acc": metrics.get("test_acc"),
            }
            study.set_user_attr("baselines", baselines)
        else:
            log.warning("baseline CE student failed: %s", ret._return_value)

    def _ask(self, study: optuna.Study, storage: Any) -> list[optuna.trial.Trial]:
        """New trials for this worker, never more than the study still needs."""
        with study_lock(storage, self.storage_url, self.study_name):
            counts = count_states(study)
            done = sum(counts[s] for s in FINISHED_STATES)
            remaining = self.n_trials - done - counts[TrialState.RUNNING]
            if remaining <= 0:
                if counts[TrialState.RUNNING]:
                    log.info("%d trials still running in other workers", counts[TrialState.RUNNING])
                return []
            trials = [study.ask() for _ in range(min(self.n_jobs, remaining))]
            for trial in trials:
                claim_trial(storage, trial._trial_id)
        log.info(
            "study %s: %d/%d finished, launching trial(s) %s",
            self.study_name,
            done,
            self.n_trials,
            ", ".join(str(t.number) for t in trials),
        )
        return trials

    def _overrides(
        self, trial: optuna.trial.Trial, space: dict[str, Any], base: list[str], parent: ParentRun
    ) -> list[str]:
        for name, distribution in space.items():
            trial._suggest(name, distribution)
        overrides = [f"{name}={value}" for name, value in trial.params.items()] + base
        overrides += [
            f"sweep.trial_number={trial.number}",
            f"sweep.trial_id={trial._trial_id}",
            f"sweep.study_name={self.study_name}",
        ]
        if parent.run_id:
            overrides.append(f"sweep.parent_run_id={parent.run_id}")
        return overrides

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn) -> TrialState:
        error = ret._return_value if ret.status != JobStatus.COMPLETED else None
        frozen = study._storage.get_trial(trial._trial_id)
        if error is None:
            try:
                study.tell(trial, float(ret._return_value))
                return TrialState.COMPLETE
            except (TypeError, ValueError) as exc:
                error = exc
        if frozen.user_attrs.get("pruned") or isinstance(error, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
            return TrialState.PRUNED
        message = " ".join(f"{type(error).__name__}: {error}".split())[:2000]
        log.warning("trial %d failed: %s", trial.number, mask_secrets(message))
        trial.set_user_attr("error", mask_secrets(message))
        study.tell(trial, state=TrialState.FAIL)
        # A job that died before closing its run (or never started one) must not stay RUNNING.
        close_trial_run(self.config, frozen.user_attrs.get("mlflow_run_id"), "FAIL", message)
        return TrialState.FAIL

    @staticmethod
    def _record_teacher_baseline(study: optuna.Study) -> None:
        """Every KD trial logs its (shared, cached) teacher's accuracy: that is the
        report's teacher row."""
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

    def _finish(self, study: optuna.Study, parent: ParentRun, aborted: bool) -> None:
        counts = count_states(study)
        best = None
        try:
            best = study.best_trial
        except ValueError:
            log.warning("no trial of study %s completed", self.study_name)
        if best is not None:
            log.info("best trial %d: value %.4f, params %s", best.number, best.value, best.params)
            results = {
                "name": "kdsweep",
                "study_name": self.study_name,
                "best_trial": best.number,
                "best_params": best.params,
                "best_value": best.value,
            }
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        self._record_teacher_baseline(study)
        from kdsweep.report import report_dir_for, write_report_files

        report_dir = report_dir_for(self.report_dir, self.study_name)
        report_files: list[Path] = []
        try:
            report_files = write_report_files(study, report_dir)
            log.info("report: %s", report_files[-1])
        except Exception as exc:  # a report must never cost the sweep its results
            log.error("could not write the report to %s: %s", report_dir, exc)
        still_running = counts[TrialState.RUNNING] > 0
        parent.finish(
            best,
            report_files,
            status=None if still_running and not aborted else ("FAILED" if aborted else "FINISHED"),
        )
