"""Losses on the teacher's logits beyond Hinton's KD: DIST (relations) and DKD (decoupled
target and non-target KD)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

from kdsweep.losses.base import (
    LossOutput,
    Objective,
    StepInputs,
    check_positive,
    check_weights,
    labelled_cross_entropy,
    labelled_mean,
    torch_functional,
)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@dataclass
class DIST(Objective):
    """ce_weight * CE + tau^2 * (beta * inter + gamma * intra), on p = softmax(z / tau):
    inter = 1 - mean over samples of the Pearson correlation of student and teacher
    across classes; intra = the same per class across the batch. inter and intra take
    every sample of the batch, labelled or not; CE its labelled samples only.

    Huang, You, Wang, Qian, Xu: "Knowledge Distillation from A Stronger Teacher" (NeurIPS
    2022); beta = gamma = 1 and tau = 1 in its CIFAR-100 recipe."""

    name: str = "dist"
    beta: float = 1.0
    gamma: float = 1.0
    tau: float = 1.0
    ce_weight: float = 1.0
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(tau=self.tau)
        check_weights(beta=self.beta, gamma=self.gamma, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        functional = torch_functional()
        p_student = functional.softmax(batch.student_logits / self.tau, dim=1)
        p_teacher = functional.softmax(batch.teacher_logits / self.tau, dim=1)
        inter = 1 - _pearson_rows(p_student, p_teacher).mean()
        intra = 1 - _pearson_rows(p_student.T, p_teacher.T).mean()
        ce = labelled_cross_entropy(batch.student_logits, batch.labels)
        relation = self.tau**2 * (self.beta * inter + self.gamma * intra)
        total = self.ce_weight * ce + relation
        return LossOutput(total, {"inter": inter, "intra": intra, "ce": ce})


@dataclass
class DKD(Objective):
    """Decoupled KD: ce_weight * CE + min(epoch / warmup, 1) * T^2 * (alpha * TCKD +
    beta * NCKD). TCKD is the KL between teacher and student of the binary distribution
    [p_target, 1 - p_target]; NCKD the KL of their distributions over the non-target
    classes, renormalised; p = softmax(z / T). Both split on the target class, so both,
    like CE, average over the batch's labelled samples only: an unlabelled sample adds
    nothing to DKD (0 for a batch without labels).

    Zhao, Cui, Song, Qiu, Liang: "Decoupled Knowledge Distillation" (CVPR 2022); alpha 1,
    beta 8, T 4 and a 20-epoch warm-up in its CIFAR-100 recipe (mdistiller)."""

    name: str = "dkd"
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup: int = 20
    ce_weight: float = 1.0
    uses_teacher: ClassVar[bool] = True
    needs_teacher_logits: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive(temperature=self.temperature)
        if self.warmup < 1:
            raise ValueError(f"loss.warmup must be >= 1 epoch, got {self.warmup}")
        check_weights(alpha=self.alpha, beta=self.beta, ce_weight=self.ce_weight)

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        import torch

        functional = torch_functional()
        t = self.temperature
        # An unlabelled sample's class 0 is a placeholder: labelled_mean drops its terms.
        labels = batch.labels
        target = functional.one_hot(labels.clamp_min(0), batch.student_logits.shape[1]).bool()
        p_student = functional.softmax(batch.student_logits / t, dim=1)
        p_teacher = functional.softmax(batch.teacher_logits / t, dim=1)

        def binary(p: torch.Tensor) -> torch.Tensor:  # [p_target, p_rest]
            p_target = (p * target).sum(dim=1, keepdim=True)
            return torch.cat([p_target, 1 - p_target], dim=1)

        tckd = functional.kl_div(
            binary(p_student).clamp_min(1e-12).log(), binary(p_teacher), reduction="none"
        )
        # Masking the target logit out before the softmax renormalises over the others.
        masked = target.float() * 1000.0
        nckd = functional.kl_div(
            functional.log_softmax(batch.student_logits / t - masked, dim=1),
            functional.log_softmax(batch.teacher_logits / t - masked, dim=1),
            reduction="none",
            log_target=True,
        )
        tckd, nckd = labelled_mean(tckd.sum(dim=1), labels), labelled_mean(nckd.sum(dim=1), labels)
        ce = labelled_cross_entropy(batch.student_logits, labels)
        ramp = min(batch.epoch / self.warmup, 1.0)
        total = self.ce_weight * ce + ramp * t**2 * (self.alpha * tckd + self.beta * nckd)
        return LossOutput(total, {"tckd": tckd, "nckd": nckd, "ce": ce})
