"""Optimizers: the config's ``_target_`` (a torch.optim class) built over a model's
parameters. The one place an optimizer is made, for the student and the teacher."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict

import torch

from kdsweep.config.schema import OptimizerConf, instantiate_trusted


def build_optimizer(
    conf: OptimizerConf, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """``conf``'s keys are the optimizer's keyword arguments; ``name`` only names it."""
    kwargs = {key: value for key, value in asdict(conf).items() if key != "name"}
    return instantiate_trusted(kwargs)(params)
