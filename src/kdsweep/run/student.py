"""The distilled student, kept: what a completed run tested, saved and logged to MLflow.

Under the run's artifacts, ``student/`` is an MLflow model (kdsweep.run.serving: the
``pytorch`` flavour, a ``torch.fx`` trace that loads without kdsweep) mapping a batch of
raw images (N x C x H x W, float32, N free, on the data set's pixel scale) to logits
(N x classes): the run's normalization is its first layer. It has a signature and an
input example (two raw test images), and works with pyfunc, ``mlflow models serve`` and
``mlflow models predict``. Beside the MLflow files the same
folder holds ``state_dict.pt`` (``torch.save`` of the weights: load it with
``weights_only=True``) and ``kdsweep.json``, what builds the matching network (``network``:
the run's ``model`` node, its ``_target_`` and arguments; input shape and classes),
and the per-channel mean and std the run normalized with (``input_normalization``: the
training split's), which the MLflow model applies itself and the bare network needs.

The same folder is written to the job's output directory, tracked or not. With
``trainer.save_model=none`` nothing is kept; pruned and failed runs never get here.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdsweep.config.targets import Target, build_network
from kdsweep.core.cache import UNREADABLE_TORCH_FILE, load_plain
from kdsweep.core.errors import CheckpointError, first_line
from kdsweep.core.stores import attempt
from kdsweep.nets import network_of
from kdsweep.run.serving import on_raw_pixels, raw_pixels, save_served_model
from kdsweep.training.teacher import training_recipe

if TYPE_CHECKING:
    from kdsweep.run.plan import Plan
    from kdsweep.run.tracking import RunTracker

log = logging.getLogger(__name__)

FORMAT = "kdsweep-student/2"  # 2: the MLflow model takes raw pixels
ARTIFACT = "student"  # the run's artifact folder, and the job's output subfolder
STATE_DICT = "state_dict.pt"
SPEC = "kdsweep.json"
#: The run's data tag, which the registry reads back (with the teacher's tags).
DATA_TAG = "kdsweep.data.fingerprint"


@dataclass
class StudentSpec:
    """What builds the network the weights belong to: the run's ``model`` node (its
    ``_target_`` and arguments) for images of ``input_shape`` and ``num_classes``."""

    network: dict[str, Any]
    input_shape: list[int]
    num_classes: int
    # The user's allowed_targets, when a network of theirs is rebuilt (kdsweep-eval).
    allowed: tuple[str, ...] = ()

    @property
    def target(self) -> Target:
        return Target("model", self.network, self.allowed)

    def build(self) -> nn.Module:
        return build_network(self.target, self.input_shape, self.num_classes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentSpec:
        return cls(
            network=data["network"],
            input_shape=[int(d) for d in data["input_shape"]],
            num_classes=int(data["num_classes"]),
        )


class Logits(nn.Module):
    """The student as a classifier: images -> logits, whatever its ``forward`` returns
    (a ``returns_hidden`` student also yields its features; a deployed model does not)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


def save_student(
    model: nn.Module,
    spec: StudentSpec,
    normalization: tuple[Sequence[float], Sequence[float]],
    raw_example: torch.Tensor,
    folder: Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the MLflow model (raw pixels in: ``normalization``'s mean and std are its
    first layer), ``state_dict.pt`` and ``kdsweep.json`` into ``folder`` (replaced). A
    model torch.fx cannot trace keeps its state_dict and says why in ``kdsweep.json``
    (``export_error``). A network the loss hooked is saved without its hooks."""
    model = network_of(model)
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    info: dict[str, Any] = {"format": FORMAT, **asdict(spec), **(metadata or {})}

    def served() -> None:
        frozen = Logits(copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format))
        save_served_model(
            on_raw_pixels(frozen, *normalization).eval(),
            folder,
            spec.input_shape,
            spec.num_classes,
            raw_example[:2].detach().cpu().float().contiguous(),
            metadata={"kdsweep": info},
        )

    _, error = attempt(served)  # the network's code through torch.fx and MLflow: any error
    if error is not None:  # the weights are kept whatever the tracer thinks
        info["export_error"] = first_line(error)
        log.warning(
            "student: cannot save it as an MLflow model (%s); keeping its state_dict",
            info["export_error"],
        )
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    torch.save(state, folder / STATE_DICT)
    (folder / SPEC).write_text(json.dumps(info, indent=2, default=str))
    return folder


def record_student(plan: Plan, tracker: RunTracker) -> dict:
    """Tag the run with its teacher and data, then (``trainer.save_model=best``) save the
    tested student in the job's output directory (``student/``, beside results.json) and
    log it as the run's ``student`` artifact. Returns the cost as metrics (seconds,
    bytes), which are logged too."""
    settings, data = plan.settings, plan.data
    tags = {DATA_TAG: data.fingerprint}
    teacher = plan.teacher
    if teacher is not None:
        tags["kdsweep.teacher.key"] = teacher.key
        tags["kdsweep.teacher.checkpoint"] = str(Path(teacher.path).resolve())
        tags["kdsweep.teacher.recipe"] = json.dumps(teacher_recipe(plan), default=str)
    tracker.set_tags(tags)
    if str(settings.trainer.save_model) == "none":
        return {}
    started = time.perf_counter()
    spec = StudentSpec(settings.model.identity(), list(data.input_shape), data.num_classes)
    metadata = {
        "model": settings.model.name,
        "loss": settings.loss.name,
        "data": settings.data.name,
        "data_fingerprint": data.fingerprint,
        "input_normalization": {
            "mean": list(data.input_mean),
            "std": list(data.input_std),
            "formula": "x' = (x - mean[c]) / std[c] per channel c, x on the data set's pixel"
            " scale as kdsweep loads it: the MLflow model's first layer; the bare network"
            " (state_dict.pt) takes x'",
        },
        "teacher_key": teacher.key if teacher is not None else None,
        "run_id": tracker.run_id,
    }
    normalization = (data.input_mean, data.input_std)
    raw_example = raw_pixels(data.test_x[:2].cpu(), *normalization)
    folder = tracker.local_path.parent / ARTIFACT
    save_student(plan.student, spec, normalization, raw_example, folder, metadata)
    tracker.log_artifacts(folder, ARTIFACT)
    if tracker.run_id and not tracker.broken:
        tracker.set_tags({"kdsweep.student": f"runs:/{tracker.run_id}/{ARTIFACT}"})
    cost = {
        "student_save_seconds": time.perf_counter() - started,
        "student_save_bytes": float(
            sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        ),
    }
    tracker.log_metrics(cost)
    log.info(
        "student saved to %s (%s bytes, %.2f s)",
        folder,
        f"{int(cost['student_save_bytes']):,}",
        cost["student_save_seconds"],
    )
    return cost


def teacher_recipe(plan: Plan) -> dict[str, Any]:
    """What made the teacher: the user's checkpoint, or the recipe its cache key hashes
    (kdsweep.training.teacher.training_recipe); its data's fingerprint, its cache key and
    measured accuracies."""
    settings = plan.settings
    teacher = plan.teacher
    recipe: dict[str, Any] = {
        "architecture": settings.teacher_model.name,
        "data_fingerprint": plan.data.fingerprint,
        "key": teacher.key if teacher is not None else None,
    }
    if settings.teacher.checkpoint:
        recipe["checkpoint"] = str(settings.teacher.checkpoint)
    else:
        recipe.update(training_recipe(settings, plan.data))
    if teacher is not None:
        recipe["metrics"] = dict(teacher.metrics)
    return recipe


# --- loading ------------------------------------------------------------------------------


def spec_from_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(input channels, classes) read off a kdsweep network's weights: the first
    convolution's input channels and the last linear layer's rows (seed nets, ResNets and
    WRNs alike: each starts with a conv and ends with a linear classifier)."""
    convs = [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() == 4]
    linears = [
        v for k, v in state.items() if k.endswith("weight") and isinstance(v, torch.Tensor)
        and v.dim() == 2
    ]  # fmt: skip
    if not convs or not linears:
        missing = "convolution" if not convs else "linear"
        raise CheckpointError(f"not a kdsweep student's state_dict (no {missing} weights)")
    return int(convs[0].shape[1]), int(linears[-1].shape[0])


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict file, loaded without unpickling code; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: give a state_dict file or a model URI")
    try:
        state = load_plain(path)
    except UNREADABLE_TORCH_FILE as exc:
        reason = (
            "torch.load(weights_only=True) refused it" if "eights" in str(exc) else first_line(exc)
        )
        raise CheckpointError(
            f"{path} is corrupt or not a state_dict saved by torch.save ({reason})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of tensors)")
    return state


def read_spec(path: Path) -> StudentSpec | None:
    """The ``kdsweep.json`` beside a state_dict, if there is one."""
    beside = Path(path).with_name(SPEC)
    if not beside.is_file():
        return None
    try:
        return StudentSpec.from_dict(json.loads(beside.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{beside} is unreadable ({first_line(exc)})") from exc
