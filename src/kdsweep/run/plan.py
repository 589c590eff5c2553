"""What a run needs, prepared before its MLflow run exists: the device, the data, the
student, the teacher and where its outputs come from (cached or live). Everything here
can fail on bad input, so a failure leaves no MLflow run behind (kdsweep.run)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

from kdsweep.config.targets import Target, build_network
from kdsweep.config.validation import Settings
from kdsweep.core.errors import ConfigError, first_line
from kdsweep.core.stores import attempt
from kdsweep.data import TensorSplits, load_splits
from kdsweep.losses import Objective, Taps
from kdsweep.nets import (
    FeatureNet,
    as_feature_net,
    check_layers,
    eval_mode,
    hidden_pool_kernel,
    top_layers,
)
from kdsweep.training.batches import TeacherSource, step_inputs, student_forward
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
    student_taps, teacher_taps = settings.loss.taps()
    student = network(settings.model, data).to(device)
    student = hooked(student, student_taps, "student", settings)
    probe, loss_modules = teacher_probe(settings, student, teacher_taps, data, device)
    dry_step(settings, student, data, probe)
    teacher = train_source = val_source = None
    if probe is not None:
        objective = settings.loss
        kernel = probe.pool_kernel
        teacher = prepare_teacher(settings, data, device)
        teacher_net = as_feature_net(teacher.model, teacher_taps.features, teacher_taps.hidden)
        # Outputs of a named hidden layer are other outputs: cached under their own key.
        outputs_key = teacher.key + (f"-{teacher_taps.hidden}" if teacher_taps.hidden else "")
        if objective.needs_teacher_features:
            # Stage feature maps are large (DeepNN's first on CIFAR's training split: 3.3 GB),
            # so they are not cached: the teacher runs on every batch.
            log.info(
                "teacher: loss=%s compares feature maps, which are not cached: the teacher"
                " runs live on every batch",
                objective.name,
            )
        cache = settings.teacher.cache_outputs and not objective.needs_teacher_features
        need = {
            "need_logits": objective.needs_teacher_logits,
            "need_hidden": objective.needs_teacher_hidden,
            "pool_kernel": kernel,
        }

        def source(split: str, images: torch.Tensor, cached: bool) -> TeacherSource:
            if not cached:
                return live_source(teacher_net, kernel)
            return cached_source(
                teacher_net, outputs_key, split, images, settings.cache_dir, **need
            )

        val_source = source("val", data.val_x, cache)
        # Augmented images differ every epoch: the teacher must see each one.
        train_source = source("train", data.train_x, cache and not settings.data.augment)
    return Plan(settings, device, data, student, teacher, train_source, val_source, loss_modules)


def network(target: Target, data: TensorSplits) -> torch.nn.Module:
    """The network ``target`` names, for this data's images and classes. What its
    callable raises (the user's code, torchvision's) is one line naming the key."""
    net, error = attempt(lambda: build_network(target, data.input_shape, data.num_classes))
    if error is not None:  # the network's own code: any error is its reason
        raise ConfigError(_cannot_build(target, error)) from error
    return net


def _cannot_build(target: Target, exc: Exception) -> str:
    """Why ``target`` cannot be built, and the way out: a key it does not take (one kept
    from the option whose ``_target_`` was replaced), weights it would download (urllib's
    URLError is an OSError), or its own reason."""
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if isinstance(exc, TypeError) and unexpected and unexpected.group(1) in target.arguments:
        key = f"{target.key}.{unexpected.group(1)}"
        return (
            f"{key}: {target.target} does not take {unexpected.group(1)} (a key of the"
            f" option whose _target_ was replaced?): remove it with ~{key}"
        )
    if isinstance(exc, OSError) and target.arguments.get("weights"):
        key = f"{target.key}.weights"
        return (
            f"{key}={target.arguments['weights']}: the weights cannot be downloaded here"
            f" ({first_line(exc)}): put them in torch's cache (TORCH_HOME), or set"
            f" {key}=null and give a local checkpoint (teacher.checkpoint=...)"
        )
    reason = f"{type(exc).__name__}: {first_line(exc)}"
    return f"{target.key}._target_={target.target} cannot be built ({reason})"


def teacher_probe(
    settings: Settings, student: FeatureNet, taps: Taps, data: TensorSplits, device: torch.device
) -> tuple[TeacherSource | None, list[torch.nn.Module]]:
    """Shapes only: the teacher's network, untrained, hooked as the loss reads it and run
    live (its hidden vector pooled to the student's width), and the modules a feature loss
    trains with the student. A pair the loss cannot compare is refused before the teacher
    trains, and a network that cannot be built is named before its training would build
    it. None and no modules for a loss without a teacher."""
    objective = settings.loss
    if not objective.uses_teacher:
        return None, []
    probe = network(settings.teacher_model, data).to(device).eval()
    probe = hooked(probe, taps, "teacher", settings)
    kernel = 1
    if objective.needs_teacher_hidden:
        widths = [hidden_width(net, data.train_x[:1]) for net in (probe, student)]
        kernel = hidden_pool_kernel(*widths)
    modules = (
        attach_loss(settings, student, probe, data) if objective.needs_teacher_features else []
    )
    return TeacherSource(model=probe, pool_kernel=kernel), modules


def dry_step(
    settings: Settings, student: FeatureNet, data: TensorSplits, teacher: TeacherSource | None
) -> None:
    """The student's forward pass and the loss on two training images (with ``teacher``'s
    outputs, teacher_probe's), once, before the teacher trains and the MLflow run exists:
    a network that has nothing to train, whose forward raises or gives something other
    than one logit per class, or a loss that fails on its outputs is one line now, not a
    traceback in the run's first batch. In eval mode and with its gradients cleared
    after: nothing the run keeps changes."""
    what = f"model={settings.model.name} ({settings.model.target})"
    objective = settings.loss
    if not any(p.requires_grad for p in student.parameters()):
        raise ConfigError(f"{what} has no trainable parameters: there is nothing to train")
    x, y = data.train_x[:2], data.train_y[:2]
    # The user's forward and loss: any error they raise is their reason.
    with eval_mode(student):
        outputs, error = attempt(
            lambda: student_forward(student, objective.needs_student_features)(x)
        )
        if error is not None:
            raise ConfigError(
                f"{what}: its forward fails on two training images of shape {tuple(x.shape)}"
                f" ({type(error).__name__}: {first_line(error)})"
            ) from error
        logits, hidden, maps = outputs
        wanted = (len(x), data.num_classes)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != wanted:
            got = (
                f"shape {tuple(logits.shape)}"
                if isinstance(logits, torch.Tensor)
                else f"a {type(logits).__name__}"
            )
            raise ConfigError(
                f"{what}: its forward returns {got} for two images, not their logits of"
                f" shape {wanted} ({data.num_classes} classes): make it return a tensor with"
                " one logit per class (it is built with num_classes if it takes it)"
            )
        if objective.needs_teacher_features or objective.needs_student_features:
            return  # the feature losses' shapes were checked by attach (plan_run)

        def step() -> None:
            taught = teacher.for_batch(torch.arange(len(y)), x) if teacher else (None, None)
            objective(step_inputs(y, (logits, hidden, maps), (*taught, None), 1)).total.backward()

        _, error = attempt(step)
        student.zero_grad(set_to_none=True)
        if error is not None:
            raise ConfigError(
                f"loss={objective.name} fails on {what}'s outputs for two images"
                f" ({type(error).__name__}: {first_line(error)})"
            ) from error


def hooked(model: torch.nn.Module, taps: Taps, side: str, settings: Settings) -> FeatureNet:
    """``model`` as the loss reads it: its layers named in ``taps`` hooked
    (kdsweep.nets.HookedNet). A layer it lacks, or a network other than kdsweep's that
    names none where the loss needs them, is one line, before the teacher trains."""
    objective: Objective = settings.loss
    network = settings.model if side == "student" else settings.teacher_model
    what = f"{network.key}={network.name}"
    check_layers(model, taps.features, f"loss.{side}_layers", what)
    check_layers(model, [taps.hidden] if taps.hidden else [], f"loss.{side}_hidden_layer", what)
    if not isinstance(model, FeatureNet):
        needs = {
            f"loss.{side}_layers": getattr(objective, f"needs_{side}_features")
            and not taps.features,
            f"loss.{side}_hidden_layer": getattr(objective, f"needs_{side}_hidden")
            and not taps.hidden,
        }
        for key, missing in needs.items():
            if missing:
                raise ConfigError(
                    f"{key}: {what} is not one of kdsweep's nets, so loss={objective.name}"
                    f" needs its layers named; its layers: {top_layers(model)}"
                )
    return as_feature_net(model, taps.features, taps.hidden)


@torch.no_grad()
def hidden_width(net: FeatureNet, probe: torch.Tensor) -> int:
    """The width of ``net``'s hidden vector, read off one image in eval mode."""
    with eval_mode(net):
        return int(net.forward_with_hidden(probe)[1].shape[1])


@torch.no_grad()
def attach_loss(
    settings: Settings, student: FeatureNet, teacher: FeatureNet, data: TensorSplits
) -> list[torch.nn.Module]:
    """Show a feature-map loss the shapes of both networks' stage maps (one image, eval
    mode); it refuses pairs it cannot compare (one line, before any MLflow run) and
    returns the modules it trains with the student, on the student's device."""
    probe = data.train_x[:1]
    with eval_mode(student):
        student_maps = [tuple(m.shape[1:]) for m in student.forward_with_features(probe)[2]]
    teacher_maps = [tuple(m.shape[1:]) for m in teacher.forward_with_features(probe)[2]]
    try:
        modules = settings.loss.attach(student_maps, teacher_maps)
    except ValueError as exc:
        raise ConfigError(
            f"{exc} (model={settings.model.name}, teacher={settings.teacher_model.name})"
        ) from None
    return [module.to(probe.device) for module in modules]
