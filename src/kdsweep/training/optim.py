"""Optimizers: the config's ``_target_`` node (a torch.optim class and its keyword
arguments) built over a model's parameters. The one place an optimizer is made, for the
student and the teacher."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kdsweep.config.targets import Target


def build_optimizer(
    optimizer: Target, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    return optimizer.build(list(params))
