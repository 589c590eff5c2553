"""Optimizers from their validated configs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kdsweep.config import AdamConf, OptimizerConf, SGDNesterovConf


def build_optimizer(
    conf: OptimizerConf, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    if isinstance(conf, SGDNesterovConf):
        return torch.optim.SGD(
            params,
            lr=conf.lr,
            momentum=conf.momentum,
            dampening=conf.dampening,
            weight_decay=conf.weight_decay,
            nesterov=True,
        )
    if isinstance(conf, AdamConf):
        return torch.optim.Adam(params, lr=conf.lr, weight_decay=conf.weight_decay)
    raise TypeError(f"no optimizer for {type(conf).__name__}")
