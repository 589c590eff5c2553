"""The four training objectives, behind one interface so the loop never branches on them.

Each loss returns its total and its named, weighted-free component terms (for logging).
Formulas follow the seed (see DESIGN.md section 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.config import (
    CELossConf,
    CosineLossConf,
    KDLossConf,
    LossConf,
    MultiMarginLossConf,
)


@dataclass
class StepInputs:
    labels: torch.Tensor
    student_logits: torch.Tensor
    student_hidden: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_hidden: torch.Tensor | None = None


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class Objective(nn.Module):
    needs_teacher_logits = False
    needs_teacher_hidden = False
    needs_student_hidden = False

    def forward(self, batch: StepInputs) -> LossOutput:  # pragma: no cover - interface
        raise NotImplementedError


class CrossEntropy(Objective):
    def forward(self, batch: StepInputs) -> LossOutput:
        ce = F.cross_entropy(batch.student_logits, batch.labels)
        return LossOutput(ce, {"ce": ce})


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (Hinton et al.)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    # log_target avoids the seed's softmax().log(), which is -inf where a probability
    # underflows to 0 at low temperatures.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class KnowledgeDistillation(Objective):
    needs_teacher_logits = True

    def __init__(self, conf: KDLossConf) -> None:
        super().__init__()
        self.temperature = conf.temperature
        self.soft_target_weight = conf.soft_target_weight
        self.ce_weight = conf.ce_weight

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.teacher_logits is not None
        soft = soft_target_loss(batch.student_logits, batch.teacher_logits, self.temperature)
        ce = F.cross_entropy(batch.student_logits, batch.labels)
        total = self.soft_target_weight * soft + self.ce_weight * ce
        return LossOutput(total, {"soft_target": soft, "ce": ce})


class CosineHidden(Objective):
    needs_teacher_hidden = True
    needs_student_hidden = True

    def __init__(self, conf: CosineLossConf) -> None:
        super().__init__()
        self.hidden_weight = conf.hidden_weight
        self.ce_weight = conf.ce_weight

    def forward(self, batch: StepInputs) -> LossOutput:
        assert batch.student_hidden is not None and batch.teacher_hidden is not None
        # CosineEmbeddingLoss with target +1 is mean(1 - cos(student, teacher)).
        target = torch.ones(batch.student_hidden.shape[0], device=batch.student_hidden.device)
        hidden = F.cosine_embedding_loss(batch.student_hidden, batch.teacher_hidden, target)
        ce = F.cross_entropy(batch.student_logits, batch.labels)
        total = self.hidden_weight * hidden + self.ce_weight * ce
        return LossOutput(total, {"hidden_cosine": hidden, "ce": ce})


class MultiMargin(Objective):
    def __init__(self, conf: MultiMarginLossConf) -> None:
        super().__init__()
        self.p = conf.p
        self.margin = conf.margin

    def forward(self, batch: StepInputs) -> LossOutput:
        hinge = F.multi_margin_loss(
            batch.student_logits, batch.labels, p=self.p, margin=self.margin
        )
        return LossOutput(hinge, {"multimargin": hinge})


def build_objective(conf: LossConf) -> Objective:
    if isinstance(conf, KDLossConf):
        return KnowledgeDistillation(conf)
    if isinstance(conf, CosineLossConf):
        return CosineHidden(conf)
    if isinstance(conf, MultiMarginLossConf):
        return MultiMargin(conf)
    if isinstance(conf, CELossConf):
        return CrossEntropy()
    raise TypeError(f"no objective for {type(conf).__name__}")
