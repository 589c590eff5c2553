"""What a run needs, prepared before its MLflow run exists: the device, the data, the
student, the teacher and where its outputs come from (cached or live). Everything here
can fail on bad input, so a failure leaves no MLflow run behind (kdsweep.run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from kdsweep.config.targets import build_network
from kdsweep.config.validation import Settings
from kdsweep.core.errors import ConfigError
from kdsweep.data import TensorSplits, load_splits
from kdsweep.nets import FeatureNet, hidden_pool_kernel
from kdsweep.training.batches import TeacherSource
from kdsweep.training.devices import resolve_device
from kdsweep.training.teacher import Teacher, prepare_teacher
from kdsweep.training.teacher_outputs import cached_source, live_source

log = logging.getLogger(__name__)


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
    student = build_network(settings.model, data.input_shape, data.num_classes).to(device)
    teacher = train_source = val_source = None
    if settings.uses_teacher:
        objective = settings.loss
        kernel, loss_modules = 1, []
        if objective.needs_teacher_hidden or objective.needs_teacher_features:
            # Shapes only: an untrained teacher of the same network tells them, so a
            # pair the loss cannot compare is refused before the teacher trains.
            probe = build_network(settings.teacher_model, data.input_shape, data.num_classes)
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
            f"{exc} (model={settings.model.name}, teacher={settings.teacher_model.name})"
        ) from None
    return [module.to(probe.device) for module in modules]
