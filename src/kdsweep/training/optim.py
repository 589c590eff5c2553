"""Optimizers and lr schedules: the config's ``_target_`` nodes (a torch.optim class, a
torch.optim.lr_scheduler class, and their keyword arguments) built over a model's
parameters and its optimizer. The one place each is made, for the student and the
teacher."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kdsweep.config.targets import Target


def build_optimizer(
    optimizer: Target, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    return optimizer.build(list(params))


def build_scheduler(
    scheduler: Target | None, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule stepped after each epoch (None: the lr stays constant). The run's
    epochs are offered as ``T_max``, the length of a cosine annealing, as a network is
    offered its classes: a schedule that names it in its signature takes it."""
    if scheduler is None:
        return None
    return scheduler.build(optimizer, T_max=epochs)
