"""What every network kdsweep trains is: a :class:`FeatureNet`, which returns its logits,
its hidden representation and its stage feature maps; and the helpers that pool a
teacher's hidden vector to the student's width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.core.errors import ConfigError


class FeatureNet(nn.Module):
    """What the training loop and the losses ask of every network: logits, a hidden vector
    (``hidden_width`` wide) and the feature map at the end of each stage (the maps the
    feature losses, AT and hint, compare). ``returns_hidden`` decides what ``forward``
    gives, like the seed's Modified*Cosine classes."""

    hidden_width: int
    returns_hidden: bool

    def forward_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError  # pragma: no cover - interface

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden, _ = self.forward_with_features(x)
        return logits, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, hidden = self.forward_with_hidden(x)
        return (logits, hidden) if self.returns_hidden else logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hidden_pool_kernel(teacher_width: int, student_width: int) -> int:
    """Kernel of the 1-D average pool that brings the teacher's hidden width down to the
    student's (the seed pools DeepNN's 2048 features by 2 to LightNN's 1024)."""
    if teacher_width % student_width:
        raise ConfigError(
            f"teacher hidden width {teacher_width} is not a multiple of the student's"
            f" {student_width}: the cosine loss cannot align them; use teacher=deep model=modified"
        )
    return teacher_width // student_width


def pool_hidden(hidden: torch.Tensor, kernel: int) -> torch.Tensor:
    return hidden if kernel == 1 else F.avg_pool1d(hidden, kernel)
