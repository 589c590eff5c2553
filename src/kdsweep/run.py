"""One run, end to end: validated settings -> data -> teacher -> student -> MLflow.

Each part is built once: the loss and the data set came out of validation as objects
(kdsweep.schema), the student and the optimizer are built here. Everything a user can get
wrong is checked before the MLflow run is created, so a bad input leaves no run behind.
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

from kdsweep.data import TensorSplits, load_splits
from kdsweep.errors import ConfigError
from kdsweep.losses import CrossEntropy
from kdsweep.models import FeatureNet, build_model, count_parameters, hidden_pool_kernel
from kdsweep.optim import build_optimizer
from kdsweep.signals import deferred_signals
from kdsweep.teacher import Teacher, prepare_teacher
from kdsweep.teacher_outputs import cached_source, live_source
from kdsweep.tracking import RunTracker, flatten
from kdsweep.train import EpochRecord, TeacherSource, evaluate, fit, resolve_device
from kdsweep.validation import Settings, validate

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    objective: float
    metrics: dict[str, float]
    history: list[EpochRecord] = field(default_factory=list)
    run_id: str | None = None


class TrialHooks:
    """What a sweep trial adds to a run (see kdsweep.sweep.trial_hooks): per-epoch reports that
    may prune, and attributes for the study. A plain run uses this no-op."""

    def on_start(self, run_id: str | None) -> None:
        """Called once the MLflow run exists."""

    def on_epoch(self, record: EpochRecord) -> None:
        """May raise optuna.TrialPruned."""

    def on_finish(self, result: RunResult) -> None:
        """Called after a successful run."""


@dataclass
class Plan:
    """Everything prepared before the MLflow run: the parts that can fail on bad input."""

    settings: Settings
    device: torch.device
    data: TensorSplits
    student: FeatureNet
    teacher: Teacher | None
    train_source: TeacherSource | None
    val_source: TeacherSource | None
    # Modules the loss trains with the student (hint's regressor); not part of the student.
    loss_modules: list[torch.nn.Module] = field(default_factory=list)


def _augmenter(settings: Settings) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if not settings.data.augment:
        return None
    from kdsweep.augment import crop_and_flip

    return crop_and_flip


def cpu_threads(requested: int) -> int | None:
    """The torch thread count to set (None: leave torch's own default). Measured side by
    side (python benchmarks/bench.py row g, a digits run): on a quiet 2-core machine
    torch's default is as fast as 1 thread (0.94x), and 1.75x faster for the DeepNN
    teacher; on a busy one, where other processes hold the cores, 1 thread was 5.6x
    faster. So the default stays torch's, and trainer.threads=1 is the lever."""
    return requested if requested > 0 else None


def plan_run(settings: Settings) -> Plan:
    device = resolve_device(settings.trainer.device)
    data = load_splits(settings.data).to(device)
    threads = cpu_threads(settings.trainer.threads)
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(settings.trainer.seed)
    student = build_model(
        settings.model.architecture,
        data.input_shape,
        data.num_classes,
        settings.model.dropout,
        settings.model.returns_hidden,
    ).to(device)
    teacher = train_source = val_source = None
    if settings.uses_teacher:
        objective = settings.loss
        kernel, loss_modules = 1, []
        if objective.needs_teacher_hidden or objective.needs_teacher_features:
            # Shapes only: an untrained teacher of the same architecture tells them, so a
            # pair the loss cannot compare is refused before the teacher trains.
            probe = build_model(settings.teacher.architecture, data.input_shape, data.num_classes)
            probe = probe.to(device).eval()
            if objective.needs_teacher_hidden:
                kernel = hidden_pool_kernel(probe.hidden_width, student.hidden_width)
            if objective.needs_teacher_features:
                loss_modules = attach_loss(settings, student, probe, data)
        teacher = prepare_teacher(settings, data, device)
        if objective.needs_teacher_features:
            # Stage feature maps are large (DeepNN's first on CIFAR's training split: 3.3 GB),
            # so they are not cached: the teacher runs on every batch.
            log.info(
                "teacher: loss=%s compares feature maps, which are not cached: the teacher"
                " runs live on every batch",
                objective.name,
            )
            source = live_source(teacher.model, kernel)
            return Plan(settings, device, data, student, teacher, source, source, loss_modules)
        need = {
            "need_logits": objective.needs_teacher_logits,
            "need_hidden": objective.needs_teacher_hidden,
            "pool_kernel": kernel,
        }
        if settings.teacher.cache_outputs:
            val_source = cached_source(
                teacher.model, teacher.key, "val", data.val_x, settings.cache_dir, **need
            )
        else:
            val_source = live_source(teacher.model, kernel)
        if settings.teacher.cache_outputs and not settings.data.augment:
            train_source = cached_source(
                teacher.model, teacher.key, "train", data.train_x, settings.cache_dir, **need
            )
        else:  # augmented images differ every epoch: the teacher must see each one
            train_source = live_source(teacher.model, kernel)
    return Plan(settings, device, data, student, teacher, train_source, val_source)


@torch.no_grad()
def attach_loss(
    settings: Settings, student: FeatureNet, teacher: FeatureNet, data: TensorSplits
) -> list[torch.nn.Module]:
    """Show a feature-map loss the shapes of both networks' stage maps (one image, eval
    mode); it refuses pairs it cannot compare (one line, before any MLflow run) and
    returns the modules it trains with the student, on the student's device."""
    probe = data.train_x[:1]
    was_training = student.training
    student.eval()
    student_maps = [tuple(m.shape[1:]) for m in student.forward_with_features(probe)[2]]
    student.train(was_training)
    teacher_maps = [tuple(m.shape[1:]) for m in teacher.forward_with_features(probe)[2]]
    try:
        modules = settings.loss.attach(student_maps, teacher_maps)
    except ValueError as exc:
        raise ConfigError(
            f"{exc} (model={settings.model.name}, teacher={settings.teacher.architecture})"
        ) from None
    return [module.to(probe.device) for module in modules]


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

    started = time.perf_counter()
    fitted = fit(
        student,
        objective,
        optimizer,
        data.train_x,
        data.train_y,
        data.val_x,
        data.val_y,
        settings.trainer,
        plan.train_source,
        plan.val_source,
        _augmenter(settings),
        callbacks=[log_epoch, hooks.on_epoch],
        description="student",
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
        "test_size": float(len(data.test_y)),
        "wall_seconds": time.perf_counter() - started,
    }
    if plan.teacher is not None:
        metrics.update(plan.teacher.metrics)
    tracker.log_metrics(metrics)
    # The tested weights, kept (trainer.save_model): MLflow model, state_dict, teacher tags.
    from kdsweep.student import record_student

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
    log.info(
        "student %s (%s parameters) on %s %s, loss %s, optimizer %s, device %s",
        settings.model.name,
        f"{count_parameters(plan.student):,}",
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
        tracker.log_params(flatten(resolved))
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        hooks.on_start(tracker.run_id)
        result = execute(plan, tracker, hooks)
        hooks.on_finish(result)
    except BaseException as exc:
        status, state = _ending(exc)
        if state == "PRUNED":
            # Stopped on purpose, not an error: KILLED, the reason in its own tag.
            tracker.set_tags({"kdsweep.state": state, "kdsweep.pruned": str(exc)})
            tracker.finish(status)
        else:
            tracker.set_tags({"kdsweep.state": state})
            tracker.finish(status, error=f"{type(exc).__name__}: {exc}")
        raise
    with deferred_signals():  # a signal now must not leave a COMPLETE run RUNNING
        tracker.set_tags({"kdsweep.state": "COMPLETE"})
        tracker.finish("FINISHED")
    log.info(
        "objective (val acc, %s epoch) %.2f%%, test acc %.2f%%",
        settings.trainer.objective,
        result.objective,
        result.metrics["test_acc"],
    )
    return result


def _ending(exc: BaseException) -> tuple[str, str]:
    """MLflow status and kdsweep state for a run that raised."""
    if type(exc).__name__ == "TrialPruned":
        return "KILLED", "PRUNED"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", "FAIL"
    return "FAILED", "FAIL"
