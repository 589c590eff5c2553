"""The seed tutorial's losses: CE (no teacher), Hinton's KD, the cosine loss on hidden
representations, and MultiMargin. Their label terms average over a batch's labelled
samples; their teacher terms over all of them (data.labelled_fraction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

from kdsweep.losses.base import (
    LossOutput,
    Objective,
    StepInputs,
    Taps,
    check_positive,
    check_weights,
    labelled_cross_entropy,
    labelled_mean,
    torch_functional,
)


@dataclass
class CrossEntropy(Objective):
    """CE(student, labels): the student without a teacher. Unlabelled samples add nothing
    (CE is their batch's mean over its labelled samples; 0 when it has none)."""

    name: str = "ce"

    def forward(self, batch: StepInputs) -> LossOutput:
        ce = labelled_cross_entropy(batch.student_logits, batch.labels)
        return LossOutput(ce, {"ce": ce})


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (Hinton et al.)."""
    functional = torch_functional()
    log_p_student = functional.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = functional.log_softmax(teacher_logits / temperature, dim=-1)
    # log_target avoids the seed's softmax().log(), which is -inf where a probability
    # underflows to 0 at low temperatures.
    kl = functional.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@dataclass
class KnowledgeDistillation(Objective):
    """soft_target_weight * T^2 * KL(teacher/T || student/T) + ce_weight * CE.

    The soft term averages over every sample of the batch, labelled or not; CE over its
    labelled samples only.

    Hinton, Vinyals, Dean: "Distilling the Knowledge in a Neural Network" (2015)."""

    name: str = "kd"
    temperature: float = 2.0
    soft_target_weight: float = 0.25
    ce_weight: float = 0.75
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(temperature=self.temperature)
        check_weights(soft_target_weight=self.soft_target_weight, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        soft = soft_target_loss(batch.student_logits, batch.teacher_logits, self.temperature)
        ce = labelled_cross_entropy(batch.student_logits, batch.labels)
        total = self.soft_target_weight * soft + self.ce_weight * ce
        return LossOutput(total, {"soft_target": soft, "ce": ce})


@dataclass
class CosineHidden(Objective):
    """hidden_weight * (1 - cos(student hidden, pooled teacher hidden)) + ce_weight * CE.

    The seed's cosine-embedding variant: CosineEmbeddingLoss with target +1 on the
    flattened conv features. Needs a student that returns them (model=modified), or the
    layers whose outputs, flattened, are the hidden vectors (``loss.student_hidden_layer``,
    ``loss.teacher_hidden_layer``: any network). The cosine term averages over every
    sample, labelled or not; CE over the labelled ones."""

    name: str = "cosine"
    hidden_weight: float = 0.25
    ce_weight: float = 0.75
    student_hidden_layer: str | None = None
    teacher_hidden_layer: str | None = None
    uses_teacher: ClassVar[bool] = True
    needs_teacher_hidden: ClassVar[bool] = True
    needs_student_hidden: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_weights(hidden_weight=self.hidden_weight, ce_weight=self.ce_weight)

    def taps(self) -> tuple[Taps, Taps]:
        return Taps(hidden=self.student_hidden_layer), Taps(hidden=self.teacher_hidden_layer)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.student_hidden is not None and batch.teacher_hidden is not None
        import torch

        functional = torch_functional()
        # CosineEmbeddingLoss with target +1 is mean(1 - cos(student, teacher)).
        target = torch.ones(batch.student_hidden.shape[0], device=batch.student_hidden.device)
        hidden = functional.cosine_embedding_loss(
            batch.student_hidden, batch.teacher_hidden, target
        )
        ce = labelled_cross_entropy(batch.student_logits, batch.labels)
        total = self.hidden_weight * hidden + self.ce_weight * ce
        return LossOutput(total, {"hidden_cosine": hidden, "ce": ce})


@dataclass
class MultiMargin(Objective):
    """torch.nn.MultiMarginLoss: the multi-class hinge loss on the labels (no teacher),
    averaged over the batch's labelled samples (0 when it has none)."""

    name: str = "multimargin"
    p: int = 1
    margin: float = 1.0

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"loss.p must be 1 or 2 (torch.nn.MultiMarginLoss), got {self.p}")
        check_positive(margin=self.margin)

    def forward(self, batch: StepInputs) -> LossOutput:
        per_sample = torch_functional().multi_margin_loss(
            batch.student_logits,
            batch.labels.clamp_min(0),
            p=self.p,
            margin=self.margin,
            reduction="none",
        )
        hinge = labelled_mean(per_sample, batch.labels)
        return LossOutput(hinge, {"multimargin": hinge})
