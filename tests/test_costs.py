"""A network's costs (kdsweep.nets.costs): trainable parameters as counted by hand, MACs as
the Linear and Conv2d formulas give them, a latency that is a time, and a narrower kdsweep
student costing less on both counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdsweep.config.targets import Target, build_network
from kdsweep.core.errors import ConfigError
from kdsweep.nets.costs import measure_costs

CPU = torch.device("cpu")
DIGITS = (1, 8, 8)


def test_params_are_the_trainable_ones_counted_by_hand() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    conv, linear = 1 * 2 * 3 * 3 + 2, 72 * 3 + 3
    assert measure_costs(net, DIGITS, CPU, ["params"]) == {"params": conv + linear}
    net[0].requires_grad_(False)  # a frozen layer is not what a student trains
    assert measure_costs(net, DIGITS, CPU, ["params"]) == {"params": linear}


def test_macs_follow_the_linear_and_conv_formulas() -> None:
    assert measure_costs(nn.Linear(8, 4), (8,), CPU, ["macs"])["macs"] == 8 * 4
    conv = nn.Conv2d(3, 5, kernel_size=3, padding=1)
    # every output value (5 x 8 x 8) is a sum of in_channels x 3 x 3 products
    assert measure_costs(conv, (3, 8, 8), CPU, ["macs"])["macs"] == 5 * 8 * 8 * 3 * 3 * 3
    strided = nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1)
    assert measure_costs(strided, (3, 8, 8), CPU, ["macs"])["macs"] == 5 * 4 * 4 * 3 * 3 * 3


def test_latency_is_a_positive_time_and_the_mode_is_restored() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2)).train()
    costs = measure_costs(net, (8,), CPU)
    assert list(costs) == ["params", "macs", "latency_ms"]
    assert math.isfinite(costs["latency_ms"]) and 0 < costs["latency_ms"] < 1000
    assert net.training


def test_an_unknown_cost_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="^unknown cost 'flops': .* params, macs, latency_ms$"):
        measure_costs(nn.Linear(2, 2), (2,), CPU, ["params", "flops"])


@pytest.mark.parametrize("target", ["light_nn", "deep_nn", "resnet8x4", "wrn_16_2"])
def test_a_narrower_student_costs_less(target: str) -> None:
    def costs(width: float) -> dict[str, float]:
        node = {"_target_": f"kdsweep.nets.{target}", "width": width}
        network = build_network(Target("model", node), DIGITS, 10)
        return measure_costs(network, DIGITS, CPU, ["params", "macs"])

    narrow, full = costs(0.5), costs(1.0)
    assert narrow["params"] < full["params"] and narrow["macs"] < full["macs"]
    # about a quarter: the products between two scaled layers dominate
    assert narrow["macs"] < 0.4 * full["macs"]


def test_an_evaluation_that_fails_leaves_the_network_in_training_mode() -> None:
    """kdsweep.training.loop.evaluate puts the network back in the mode it found it in
    (nets.eval_mode), also when the loss raises midway (it stayed in eval mode)."""
    from kdsweep.losses import CrossEntropy
    from kdsweep.training.loop import evaluate

    class Failing(CrossEntropy):
        def __call__(self, inputs: object) -> None:  # type: ignore[override]
            raise RuntimeError("the loss fails")

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    images, labels = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match="the loss fails"):
        evaluate(net, Failing(), images, labels, None, batch_size=2)
    assert net.training
