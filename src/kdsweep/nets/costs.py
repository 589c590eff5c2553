"""What a network costs, measured rather than read off its config: ``params`` (trainable
parameters), ``macs`` (multiply-accumulates of one forward pass of one image, counted by
``torch.utils.flop_counter``: its FLOPs / 2) and ``latency_ms`` (median time of a forward
pass at batch 1 on the given device, timed by ``torch.utils.benchmark``).

The three are the sizes a student is compared by (issue 25: how small can the student be).
The MAC count is torch's own per operator: matrix products and convolutions, the layers
that hold the weights; activations, pooling and normalisation add none, as in the
published counts of the CIFAR networks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from kdsweep.core.errors import ConfigError
from kdsweep.nets.feature import eval_mode

# Timing one network stops after this much measuring (blocked_autorange's min_run_time;
# a forward that takes longer is timed once or twice): a trial's measure stays under a
# fraction of a second on a CPU.
LATENCY_BUDGET_S = 0.05


def _params(network: nn.Module, _image: torch.Tensor) -> float:
    return float(sum(p.numel() for p in network.parameters() if p.requires_grad))


@torch.no_grad()
def _macs(network: nn.Module, image: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        network(image)
    return counter.get_total_flops() / 2


def _latency_ms(network: nn.Module, image: torch.Tensor) -> float:
    @torch.no_grad()
    def forward() -> None:
        network(image)

    # Timer synchronizes CUDA around each block; the threads are the ones the run trains
    # with (Timer's own default is 1).
    timer = Timer("forward()", globals={"forward": forward}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=LATENCY_BUDGET_S).median * 1000


MEASURES: dict[str, Callable[[nn.Module, torch.Tensor], float]] = {
    "params": _params,
    "macs": _macs,
    "latency_ms": _latency_ms,
}
COSTS = tuple(MEASURES)


def measure_costs(
    network: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str,
    which: Sequence[str] = COSTS,
) -> dict[str, float]:
    """The costs named in ``which`` of ``network`` (on ``device``) for one image of
    ``input_shape`` (C, H, W), in eval mode; the network's mode is restored after. An
    unknown cost name is one line listing the known ones."""
    unknown = [name for name in which if name not in MEASURES]
    if unknown:
        raise ConfigError(
            f"unknown cost {unknown[0]!r}: the costs kdsweep measures are {', '.join(COSTS)}"
        )
    image = torch.zeros(1, *(int(d) for d in input_shape), device=device)
    with eval_mode(network):
        return {name: MEASURES[name](network, image) for name in which}
