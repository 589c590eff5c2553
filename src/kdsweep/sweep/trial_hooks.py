"""The job's side of a sweep trial: report each epoch's validation accuracy to the trial
through the shared storage (so the pruner can stop it), and leave the trial the
attributes the report is built from (MLflow run id, learning curves, final metrics, and
the student's costs where the sweep weighs them: ``hydra.sweeper.costs``).

A study with costs has several directions, which Optuna's ``Trial.report`` refuses: the
trial's curve is its ``history``, and the pruner judges it against the trials that cost
no more than it (kdsweep.sweep.cost_pruning).

The sweeper passes the trial's identity as ``sweep.*`` overrides; storage and pruner come
from the sweeper's own config, which every job sees as ``hydra.sweeper``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from kdsweep.config.validation import allowed_targets
from kdsweep.core.errors import Abandoned
from kdsweep.run.experiment import RunResult, TrialHooks
from kdsweep.sweep.settings import storage_url
from kdsweep.training.loop import EpochRecord


class OptunaTrialHooks(TrialHooks):
    def __init__(
        self,
        storage_url: str,
        study_name: str,
        trial_id: int,
        pruner_conf: Any,
        prune: bool,
        allowed: tuple[str, ...] = (),
        costs: tuple[str, ...] = (),
    ) -> None:
        import optuna

        from kdsweep.sweep.studies import build_pruner, shared_storage

        self.pruner = build_pruner(pruner_conf, allowed)
        study = optuna.load_study(
            study_name=study_name,
            storage=shared_storage(storage_url),
            pruner=self.pruner,
            # The job never samples: a cheap sampler keeps loading the trial fast.
            sampler=optuna.samplers.RandomSampler(),
        )
        # Trial(study, trial_id) is Optuna's public constructor; the id is the storage's
        # (kdsweep.sweep.studies.trial_id), passed by the sweeper as sweep.trial_id.
        self.trial = optuna.trial.Trial(study, trial_id)
        self.study = study
        self.curve: list[dict[str, float]] = []
        self.prune = prune
        self.costs = costs
        self.measured: dict[str, float] = {}

    def on_start(self, run_id: str | None, costs: dict[str, float]) -> None:
        if run_id:
            self.trial.set_user_attr("mlflow_run_id", run_id)
        if self.costs:
            from kdsweep.sweep.cost_pruning import COSTS_ATTR

            # The sweeper tells the trial these as its values after the objective.
            self.measured = {name: costs[name] for name in self.costs}
            self.trial.set_user_attr(COSTS_ATTR, self.measured)

    def on_epoch(self, record: EpochRecord) -> None:
        import optuna

        self.curve.append(
            {
                "epoch": record.epoch,
                "train_loss": record.train_loss,
                "val_loss": record.val_loss,
                "val_acc": record.val_acc,
            }
        )
        if not self.prune:
            return  # a measurement: nothing to prune, its curve is stored at the end
        try:
            self.trial.set_user_attr("history", self.curve)
            if not self.costs:  # with costs, history is the curve the pruning reads
                self.trial.report(record.val_acc, record.epoch)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The sweeper failed this trial (it was interrupted, or found it stale) while a
            # launcher's child (submitit) went on: stop, and end the run KILLED.

            raise Abandoned("the sweeper stopped this trial (it was interrupted)") from None
        if self._should_prune():
            # Stored, not only raised: the sweeper reads it even when the exception comes
            # back from another process in a different shape.
            self.trial.set_user_attr("pruned", True)
            raise optuna.TrialPruned(
                f"pruned after epoch {record.epoch} (val acc {record.val_acc:.2f}%)"
            )

    def _should_prune(self) -> bool:
        if not self.costs:
            return self.trial.should_prune()
        from optuna.trial import TrialState

        from kdsweep.sweep.cost_pruning import beaten_by_cheaper, curve

        finished = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
        )
        return beaten_by_cheaper(
            self.pruner,
            self.study.directions[0],
            self.trial.number,
            curve(self.curve),
            self.measured,
            finished,
        )

    def on_finish(self, result: RunResult) -> None:
        if not self.prune:
            self.trial.set_user_attr("history", self.curve)
        self.trial.set_user_attr("metrics", result.metrics)


def trial_hooks(cfg: DictConfig) -> TrialHooks:
    """Hooks for a sweep trial launched by kdsweep's sweeper, else the no-op."""
    sweep = cfg.get("sweep")
    if not sweep or sweep.get("trial_id") is None:
        return TrialHooks()
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper
    return OptunaTrialHooks(
        storage_url=storage_url(sweeper.storage),
        study_name=str(sweep.study_name),
        trial_id=int(sweep.trial_id),
        pruner_conf=sweeper.get("pruner"),
        allowed=allowed_targets(cfg),
        # The baseline and the confirmation runs are measurements, not candidates: they
        # always run to the end.
        prune=sweep.get("role") == "trial",
        # The search study's objectives after the first (its companion has one).
        costs=tuple(sweeper.get("costs") or ()) if sweep.get("role") == "trial" else (),
    )
