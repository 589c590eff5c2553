"""A user's first mistakes, importable by the bad-input table's rows (tests/ is on the
path): networks and losses that are wrong in the ways a new user's are."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdsweep.losses import LossOutput, Objective, StepInputs


class Tiny(nn.Module):
    """A plain network: in_channels and num_classes, nothing else."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(x, 1))


class _Net(nn.Module):
    """Takes whatever keys the replaced option left (dropout, returns_hidden)."""

    def __init__(self, in_channels: int, num_classes: int, **_left: Any) -> None:
        super().__init__()
        self.head = nn.Linear(in_channels * 64, num_classes)


class ForwardRaises(_Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x64 and 12x10)")


class ThreeLogits(_Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(x, 1))[:, :3]


class DictOut(_Net):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(torch.flatten(x, 1))}


class NoParameters(nn.Module):
    def __init__(self, num_classes: int, **_left: Any) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), self.num_classes)


class InitRaises(nn.Module):
    def __init__(self, num_classes: int, **_left: Any) -> None:
        raise KeyError("backbone")


def downloading(num_classes: int, weights: str | None = None, **_left: Any) -> nn.Module:
    """torchvision's builders with weights=..., on a machine without network."""
    raise urllib.error.URLError("[Errno -2] Name or service not known")


@dataclass
class FlaglessKD(Objective):
    """A loss written from the base class: no flags, reads the teacher's logits."""

    name: str = "flagless_kd"
    temperature: float = 2.0

    def forward(self, batch: StepInputs) -> LossOutput:
        soft = torch.nn.functional.kl_div(
            (batch.student_logits / self.temperature).log_softmax(1),
            (batch.teacher_logits / self.temperature).softmax(1),
            reduction="batchmean",
        )
        return LossOutput(soft, {"soft": soft})


@dataclass
class WrongFlagsKD(FlaglessKD):
    """Declares the teacher's hidden vector, reads its logits."""

    name: str = "wrong_flags_kd"
    uses_teacher = True
    needs_teacher_hidden = True


@dataclass
class PostInitRaises(Objective):
    name: str = "post_init_raises"

    def __post_init__(self) -> None:
        raise RuntimeError("this loss needs a GPU")


@dataclass
class ForwardFails(Objective):
    """Fine on the made-up batch's 3 classes, not on the data's 10."""

    name: str = "forward_fails"

    def forward(self, batch: StepInputs) -> LossOutput:
        weights = torch.ones(3)
        total = (batch.student_logits * weights).sum()
        return LossOutput(total, {})
