"""One run, end to end: validated settings -> data -> teacher -> student -> MLflow.

Each part is built once: the loss and the data set came out of validation as objects
(kdsweep.schema), the student and the teacher in kdsweep.plan, the optimizer here.
Everything a user can get wrong is checked before the MLflow run is created, so a bad
input leaves no run behind.
Once the run exists, it always ends FINISHED, FAILED or KILLED (pruned), never RUNNING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kdsweep.config.validation import Settings, validate
from kdsweep.data.splits import hide_labels
from kdsweep.losses import CrossEntropy
from kdsweep.nets import count_parameters, network_of
from kdsweep.nets.costs import measure_costs
from kdsweep.run.plan import Plan, plan_run
from kdsweep.run.tracking import RunTracker, flatten
from kdsweep.training.loop import EpochRecord, evaluate, fit
from kdsweep.training.optim import build_optimizer

log = logging.getLogger(__name__)

# The student's costs every run logs (student_params, student_macs): both exact and cheap
# (~1-15 ms on a CPU); latency_ms is a timing, measured where a sweep asks for it.
STUDENT_COSTS = ("params", "macs")


@dataclass
class RunResult:
    objective: float
    metrics: dict[str, float]
    history: list[EpochRecord] = field(default_factory=list)
    run_id: str | None = None


class TrialHooks:
    """What a sweep trial adds to a run (see kdsweep.sweep.trial_hooks): per-epoch reports that
    may prune, and attributes for the study. A plain run uses this no-op."""

    #: The costs (kdsweep.nets.costs) the sweep weighs the trial by, measured before it
    #: trains beside the ones every run logs.
    costs: tuple[str, ...] = ()

    def on_start(self, run_id: str | None, costs: dict[str, float]) -> None:
        """Called once the MLflow run exists, with the student's measured costs."""

    def on_epoch(self, record: EpochRecord) -> None:
        """May raise optuna.TrialPruned."""

    def on_finish(self, result: RunResult) -> None:
        """Called after a successful run."""


def _augmenter(settings: Settings) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if not settings.data.augment or settings.data.streamed:  # streamed: in the workers
        return None
    from kdsweep.data.augment import crop_and_flip

    return crop_and_flip


def run_name(settings: Settings) -> str:
    if settings.tracking.run_name:
        return settings.tracking.run_name
    name = (
        f"{settings.model.name}-{settings.loss.name}-{settings.optimizer.name}-{settings.data.name}"
    )
    if settings.sweep.trial_number is not None:
        name = f"trial-{settings.sweep.trial_number}-{name}"
    return name


def execute(plan: Plan, tracker: RunTracker, hooks: TrialHooks) -> RunResult:
    settings, data, student = plan.settings, plan.data, plan.student
    objective = settings.loss
    trained = [*student.parameters()]
    trained += [p for module in plan.loss_modules for p in module.parameters()]
    optimizer = build_optimizer(settings.optimizer, trained)
    # Training a teacher (or not, when it is cached) consumed the global RNG: reseed so
    # dropout draws are the same either way and a run repeats exactly.
    torch.manual_seed(settings.trainer.seed)

    def log_epoch(record: EpochRecord) -> None:
        tracker.log_metrics(record.metrics(), step=record.epoch)

    # Every arm sees the same labels (fixed by data.split_seed), and its epochs run over
    # all the training images: the teacher's terms reach the unlabelled ones.
    train_y = hide_labels(data.train_y, settings.data.labelled_fraction, settings.data.split_seed)
    started = time.perf_counter()
    fitted = fit(
        student,
        objective,
        optimizer,
        data.train_x,
        train_y,
        data.val_x,
        data.val_y,
        settings.trainer,
        plan.train_source,
        plan.val_source,
        _augmenter(settings),
        callbacks=[log_epoch, hooks.on_epoch],
        description="student",
        scheduler=settings.scheduler,
    )
    # Test accuracy needs no teacher: score it with plain CE, not the training objective.
    _, test_acc = evaluate(
        student,
        CrossEntropy(),
        data.test_x,
        data.test_y,
        None,
        settings.trainer.eval_batch_size,
        settings.trainer.precision,
    )
    value = fitted.best_val_acc if settings.trainer.objective == "best" else fitted.last_val_acc
    metrics = {
        "objective": value,
        "best_val_acc": fitted.best_val_acc,
        "best_epoch": float(fitted.best_epoch),
        "final_val_acc": fitted.last_val_acc,
        "test_acc": test_acc,
        "train_images_per_s": fitted.images_per_s,
        # What one image is worth on each split (the report states the resolution).
        "val_size": float(len(data.val_y)),
        "labelled_size": float((train_y >= 0).sum().item()),
        "test_size": float(len(data.test_y)),
        "wall_seconds": time.perf_counter() - started,
    }
    if plan.teacher is not None:
        metrics.update(plan.teacher.metrics)
        # The teacher's size, what a student's is weighed against (a front's report). All
        # its parameters: a frozen teacher has none that train.
        metrics["teacher_params"] = float(count_parameters(plan.teacher.model))
    tracker.log_metrics(metrics)
    # The tested weights, kept (trainer.save_model): MLflow model, state_dict, teacher tags.
    from kdsweep.run.student import record_student

    metrics.update(record_student(plan, tracker))
    return RunResult(value, metrics, fitted.history, tracker.run_id)


def tags_for(settings: Settings) -> dict[str, str]:
    tags = {
        "model": settings.model.name,
        "loss": settings.loss.name,
        "optimizer": settings.optimizer.name,
        "data": settings.data.name,
        "kdsweep.role": settings.sweep.role,
    }
    if settings.sweep.trial_number is not None:
        tags["optuna.trial_number"] = str(settings.sweep.trial_number)
    if settings.sweep.study_name:
        tags["optuna.study_name"] = settings.sweep.study_name
    if settings.sweep.role == "confirm":
        tags["kdsweep.seed"] = str(settings.trainer.seed)
        tags["kdsweep.arm"] = str(settings.sweep.arm)
    return tags


def run(
    cfg: DictConfig,
    hooks: TrialHooks | None = None,
    output_dir: str | Path = ".",
    settings: Settings | None = None,
) -> RunResult:
    """Prepare, train and track one run of ``cfg`` (validated here unless the caller
    already did: the CLI validates before importing this module). User errors
    (KdsweepError) surface before any MLflow run exists."""
    hooks = hooks or TrialHooks()
    settings = settings or validate(cfg)
    tracker = RunTracker(
        settings.tracking,
        run_name(settings),
        tags_for(settings),
        parent_run_id=settings.sweep.parent_run_id,
        local_dir=output_dir,
    )
    tracker.check()
    plan = plan_run(settings)
    # The student's size, measured before it trains: what accuracy is weighed against.
    measured = tuple(dict.fromkeys([*STUDENT_COSTS, *hooks.costs]))
    size = measure_costs(network_of(plan.student), plan.data.input_shape, plan.device, measured)
    log.info(
        "student %s (%s parameters, %s MACs) on %s %s, loss %s, optimizer %s, device %s",
        settings.model.name,
        f"{size['params']:,.0f}",
        f"{size['macs']:,.0f}",
        settings.data.name,
        "x".join(map(str, plan.data.input_shape)),
        settings.loss.name,
        settings.optimizer.name,
        plan.device,
    )
    try:
        tracker.start()
        tracker.log_dataset(settings.data.name, plan.data)
        resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        params = flatten(resolved)
        # Both fractions are named even where a config leaves them to their defaults.
        params["data.labelled_fraction"] = settings.data.labelled_fraction
        params["teacher.labelled_fraction"] = settings.teacher.labelled_fraction
        tracker.log_params(params)
        tracker.log_metrics({f"student_{name}": value for name, value in size.items()})
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        hooks.on_start(tracker.run_id, size)
        result = execute(plan, tracker, hooks)
        hooks.on_finish(result)
    except BaseException as exc:
        if type(exc).__name__ == "TrialPruned":
            # Stopped on purpose, not an error: KILLED, the reason in its own tag.
            tracker.set_tags({"kdsweep.state": "PRUNED", "kdsweep.pruned": str(exc)})
            tracker.finish("KILLED")
        else:
            tracker.set_tags({"kdsweep.state": "FAIL"})
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            tracker.finish(status, error=f"{type(exc).__name__}: {exc}")
        raise
    tracker.set_tags({"kdsweep.state": "COMPLETE"})
    tracker.finish("FINISHED")
    log.info(
        "objective (val acc, %s epoch) %.2f%%, test acc %.2f%%",
        settings.trainer.objective,
        result.objective,
        result.metrics["test_acc"],
    )
    return result
