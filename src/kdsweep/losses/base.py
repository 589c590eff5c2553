"""The interface every loss implements (Objective), what the loop hands it (StepInputs),
what it returns (LossOutput), the weight check they share, and the mean over a batch's
labelled samples that their label terms take (a label < 0 marks an image whose label is
hidden: kdsweep.data.splits.hide_labels)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

from kdsweep.core.stores import attempt

if TYPE_CHECKING:
    import torch


def torch_functional():  # noqa: ANN202 - torch.nn.functional, imported on first use
    import torch.nn.functional as functional

    return functional


def labelled_mean(per_sample: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean of a per-sample loss over the batch's labelled samples (label >= 0): 0, not
    NaN, for a batch without any, and still part of the graph so that backward runs."""
    import torch

    labelled = labels >= 0
    return torch.where(labelled, per_sample, 0.0).sum() / labelled.sum().clamp_min(1)


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over the batch's labelled samples; an unlabelled sample adds nothing to it or to
    its gradient (with every sample labelled: plain CE)."""
    per_sample = torch_functional().cross_entropy(logits, labels.clamp_min(0), reduction="none")
    return labelled_mean(per_sample, labels)


@dataclass
class StepInputs:
    # The class of each sample; < 0 where its label is hidden (data.labelled_fraction).
    labels: torch.Tensor
    student_logits: torch.Tensor
    student_hidden: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_hidden: torch.Tensor | None = None
    epoch: int = 1  # the training epoch, from 1 (losses with a warm-up read it)
    # The feature maps of the loss's layers (Objective.taps; by default each stage's end),
    # for the losses that declare needs_student_features / needs_teacher_features.
    student_features: list[torch.Tensor] | None = None
    teacher_features: list[torch.Tensor] | None = None


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def check_positive(**values: float) -> None:
    """Temperatures, powers and margins: finite and > 0."""
    for key, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"loss.{key} must be > 0, got {value}")


def check_weights(**weights: float) -> None:
    """Loss weights are finite, >= 0, and not all 0 (nothing would be learned)."""
    for key, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"loss.{key} must be a finite number >= 0, got {value}")
    if all(value == 0 for value in weights.values()):
        raise ValueError(f"loss weights {', '.join(weights)} are all 0: nothing would be learned")


@dataclass(frozen=True)
class Taps:
    """The named layers of a network (paths as ``model.named_modules()`` gives them, e.g.
    ``layer2`` or ``features.5``) whose outputs a loss reads through forward hooks:
    ``features`` the maps AT and hint compare, ``hidden`` the layer whose output, flattened,
    is the vector the cosine loss compares. Empty: the network's own (kdsweep's nets give
    their stages and hidden vector; another network must name them)."""

    features: tuple[str, ...] = ()
    hidden: str | None = None


@dataclass
class Objective:
    """A loss. ``name`` is the config option that selects it (tags, run names); the class
    flags say which teacher / student outputs the loop must provide."""

    name: str = "objective"
    uses_teacher: ClassVar[bool] = False
    needs_teacher_logits: ClassVar[bool] = False
    needs_teacher_hidden: ClassVar[bool] = False
    needs_student_hidden: ClassVar[bool] = False
    needs_teacher_features: ClassVar[bool] = False
    needs_student_features: ClassVar[bool] = False

    def __call__(self, batch: StepInputs) -> LossOutput:
        return self.forward(batch)

    def settings(self) -> str:
        """``loss=kd: temperature=4, soft_target_weight=0.25, ce_weight=0.75``, for error
        messages ("" for a loss without settings, such as CE)."""
        values = [
            f"{f.name}={getattr(self, f.name):g}"
            for f in fields(self)
            if f.name != "name" and isinstance(getattr(self, f.name), (int, float))
        ]
        return f"loss={self.name}: {', '.join(values)}" if values else ""

    def taps(self) -> tuple[Taps, Taps]:
        """The student's and the teacher's layers this loss reads (none by default)."""
        return Taps(), Taps()

    def attach(self, student_maps: list[tuple[int, ...]], teacher_maps: list[tuple[int, ...]]):  # noqa: ANN201
        """Called once before training with the (C, H, W) shape of each stage's feature map
        of the student and the teacher; checks that this loss can compare them (raises
        ValueError naming the fix) and returns the modules it trains with the student
        (nn.Module list: their parameters join the optimizer, and they are not part of the
        saved student). Losses without feature maps need nothing."""
        return []

    def forward(self, batch: StepInputs) -> LossOutput:  # pragma: no cover - interface
        raise NotImplementedError


#: The outputs a loss may read beyond the labels and the student's logits, and the flag
#: that asks the loop for each (the others stay None in its batches).
NEEDS = {
    "teacher_logits": "needs_teacher_logits",
    "teacher_hidden": "needs_teacher_hidden",
    "student_hidden": "needs_student_hidden",
    "teacher_features": "needs_teacher_features",
    "student_features": "needs_student_features",
}
FLAGS = ("uses_teacher", *NEEDS.values())


@dataclass
class _ReadBatch(StepInputs):
    """A made-up batch that notes which of the optional outputs the loss reads."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "read", set())

    def __getattribute__(self, name: str):  # noqa: ANN204 - any field's type
        if name in NEEDS:
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)


def _declares_flags(loss: Objective) -> bool:
    """Whether the loss's class (or a parent below Objective) sets any of the flags."""
    return any(
        flag in vars(cls) for cls in type(loss).__mro__ if cls is not Objective for flag in FLAGS
    )


def dry_run(loss: Objective) -> None:
    """Compute the loss once on a tiny made-up batch, before any data, teacher or run
    exists, and raise ValueError (naming the settings) when it overflows (loss=dist
    loss.tau=1e200: tau**2) or is not finite (a temperature of 1e-38). A loss whose
    class sets none of the flags (a subclass of Objective) gets them from the outputs it
    read, so its batches carry them; one that sets them but reads an output they do not
    ask for would get None there in training: refused, naming the flag. A loss this
    batch does not fit (other feature maps) is left to its runs."""
    import torch

    with torch.random.fork_rng(devices=[]):  # a loss module's init draws from it
        g = torch.Generator().manual_seed(0)
        n, classes = 4, 3

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g)

        maps = [(2, 4, 4), (2, 2, 2)]
        batch = _ReadBatch(
            labels=torch.tensor([0, 1, 2, -1]),
            student_logits=draw(n, classes),
            teacher_logits=draw(n, classes),
            student_hidden=draw(n, 8),
            teacher_hidden=draw(n, 8),
            student_features=[draw(n, *m) for m in maps],
            teacher_features=[draw(n, *m) for m in maps],
        )

        def total() -> torch.Tensor:
            loss.attach(maps, maps)
            return loss(batch).total

        value, error = attempt(total)  # the loss's own code: any error
        if error is not None:
            # OverflowError (an ArithmeticError), or torch's overflow (a RuntimeError)
            if isinstance(error, ArithmeticError) or (
                isinstance(error, RuntimeError) and "overflow" in str(error)
            ):
                raise ValueError(
                    f"{loss.settings()} overflows ({type(error).__name__}) on a test batch"
                ) from error
            return  # a batch this loss does not fit: left to its runs
    if not torch.isfinite(value).all():
        raise ValueError(f"{loss.settings()} gives a loss of {float(value)} on a test batch")
    read: set[str] = batch.read  # type: ignore[attr-defined]
    if not _declares_flags(loss):
        for field in read:
            object.__setattr__(loss, NEEDS[field], True)
        if any(field.startswith("teacher_") for field in read):
            object.__setattr__(loss, "uses_teacher", True)
        return
    kind = type(loss).__name__
    for field in sorted(read):
        flag = NEEDS[field]
        if not getattr(loss, flag):
            raise ValueError(
                f"loss={loss.name} reads batch.{field}, which is None in training unless"
                f" {kind}.{flag} is True: set {flag}: ClassVar[bool] = True in {kind}"
            )
