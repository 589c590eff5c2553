"""The distilled student, kept: what a completed run tested, saved and logged to MLflow.

Under the run's artifacts, ``student/`` is an MLflow model (kdsweep.run.serving: the
``pytorch`` flavour, a ``torch.fx`` trace that loads without kdsweep) mapping a batch of
raw images (N x C x H x W, float32, N free, on the data set's pixel scale) to logits
(N x classes): the run's normalization is its first layer. It has a signature and an
input example (two raw test images), and works with pyfunc, ``mlflow models serve`` and
``mlflow models predict``. Beside the MLflow files the same
folder holds ``state_dict.pt`` (``torch.save`` of the weights: load it with
``weights_only=True``) and ``kdsweep.json``, the build arguments that make the matching
``kdsweep.models`` network (architecture, input shape, classes, dropout, returns_hidden),
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdsweep.core.errors import CheckpointError, first_line
from kdsweep.nets import FeatureNet, build_model

if TYPE_CHECKING:
    from kdsweep.run.plan import Plan
    from kdsweep.run.tracking import RunTracker

log = logging.getLogger(__name__)

FORMAT = "kdsweep-student/1"
ARTIFACT = "student"  # the run's artifact folder, and the job's output subfolder
STATE_DICT = "state_dict.pt"
SPEC = "kdsweep.json"
#: Run tags the sweep reads back (kdsweep.registry): the teacher and the data.
TEACHER_TAGS = ("kdsweep.teacher.key", "kdsweep.teacher.checkpoint", "kdsweep.teacher.recipe")
DATA_TAG = "kdsweep.data.fingerprint"


@dataclass
class StudentSpec:
    """What builds the network the weights belong to (kdsweep.models.build_model)."""

    architecture: str
    input_shape: list[int]
    num_classes: int
    dropout: float = 0.1
    returns_hidden: bool = False

    def build(self) -> FeatureNet:
        shape = tuple(int(d) for d in self.input_shape)
        return build_model(
            self.architecture,
            shape,  # type: ignore[arg-type]
            int(self.num_classes),
            float(self.dropout),
            bool(self.returns_hidden),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentSpec:
        return cls(
            architecture=str(data["architecture"]),
            input_shape=[int(d) for d in data["input_shape"]],
            num_classes=int(data["num_classes"]),
            dropout=float(data.get("dropout", 0.1)),
            returns_hidden=bool(data.get("returns_hidden", False)),
        )


class Logits(nn.Module):
    """The student as a classifier: images -> logits, whatever its ``forward`` returns
    (a ``returns_hidden`` student also yields its features; a deployed model does not)."""

    def __init__(self, model: FeatureNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_with_hidden(x)[0]


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def export_logits(model: FeatureNet, example: torch.Tensor) -> Any:
    """``torch.export`` of the student's logits, on the CPU, in eval mode, batch size free."""
    from torch.export import Dim

    frozen = Logits(copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)).eval()
    return torch.export.export(frozen, (example.cpu(),), dynamic_shapes=[{0: Dim.AUTO}])


def signature_for(spec: StudentSpec) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    image = TensorSpec(np.dtype(np.float32), (-1, *spec.input_shape), "images")
    logits = TensorSpec(np.dtype(np.float32), (-1, spec.num_classes), "logits")
    return ModelSignature(inputs=Schema([image]), outputs=Schema([logits]))


def save_student(
    model: FeatureNet,
    spec: StudentSpec,
    example: torch.Tensor,
    folder: Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the MLflow model (pt2), ``state_dict.pt`` and ``kdsweep.json`` into
    ``folder`` (replaced). A model torch.export cannot trace keeps its state_dict and says
    why in ``kdsweep.json`` (``export_error``)."""
    import mlflow.pytorch

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    info: dict[str, Any] = {"format": FORMAT, **asdict(spec), **(metadata or {})}
    example = example[:2].detach().cpu().float().contiguous()
    try:
        frozen = Logits(copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format))
        mlflow.pytorch.save_model(
            frozen.eval(),
            str(folder),
            signature=signature_for(spec),
            input_example=example.numpy(),
            serialization_format="pt2",
            # Named, not inferred: inference imports the model in a subprocess (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"kdsweep": info},
        )
    except Exception as exc:  # the weights are kept whatever the exporter thinks
        info["export_error"] = first_line(exc)[:500]
        log.warning("student: torch.export failed (%s); keeping the state_dict only", exc)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    torch.save(cpu_state_dict(model), folder / STATE_DICT)
    (folder / SPEC).write_text(json.dumps(info, indent=2, default=str))
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def record_student(plan: Plan, tracker: RunTracker, output_dir: Path | None = None) -> dict:
    """Tag the run with its teacher and data, then (``trainer.save_model=best``) save the
    tested student under ``output_dir/student`` and log it as the run's ``student``
    artifact. Returns the cost as metrics (seconds, bytes), which are logged too."""
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
    spec = StudentSpec(
        architecture=str(settings.model.architecture),
        input_shape=list(data.input_shape),
        num_classes=data.num_classes,
        dropout=settings.model.dropout,
        returns_hidden=settings.model.returns_hidden,
    )
    metadata = {
        "model": settings.model.name,
        "loss": settings.loss.name,
        "data": settings.data.name,
        "data_fingerprint": data.fingerprint,
        "input_normalization": {
            "mean": list(data.input_mean),
            "std": list(data.input_std),
            "formula": "x' = (x - mean[c]) / std[c] per channel c, x on the data set's pixel"
            " scale as kdsweep loads it",
        },
        "teacher_key": teacher.key if teacher is not None else None,
        "run_id": tracker.run_id,
    }
    base = Path(output_dir) if output_dir is not None else tracker.local_path.parent
    folder = save_student(plan.student, spec, data.test_x[:2], base / ARTIFACT, metadata)
    tracker.log_artifacts(folder, ARTIFACT)
    if tracker.run_id and not tracker.broken:
        tracker.set_tags({"kdsweep.student": f"runs:/{tracker.run_id}/{ARTIFACT}"})
    cost = {
        "student_save_seconds": time.perf_counter() - started,
        "student_save_bytes": float(folder_bytes(folder)),
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
    """What made the teacher: its recipe (as in kdsweep.teacher.teacher_key), its data's
    fingerprint, its cache key and measured accuracies."""
    settings = plan.settings
    teacher = plan.teacher
    recipe: dict[str, Any] = {
        "architecture": str(settings.teacher.architecture),
        "data_fingerprint": plan.data.fingerprint,
        "key": teacher.key if teacher is not None else None,
    }
    if settings.teacher.checkpoint:
        recipe["checkpoint"] = str(settings.teacher.checkpoint)
    else:
        recipe.update(
            epochs=settings.teacher.epochs,
            batch_size=settings.teacher.batch_size,
            seed=settings.teacher.seed,
            optimizer={k: str(v) for k, v in asdict(settings.teacher_optimizer).items()},
        )
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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (
            "torch.load(weights_only=True) refused it" if "eights" in str(exc) else first_line(exc)
        )
        raise CheckpointError(
            f"{path} is corrupt or not a state_dict saved by torch.save ({reason[:120]})"
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
        raise CheckpointError(f"{beside} is unreadable ({first_line(exc)})") from None
