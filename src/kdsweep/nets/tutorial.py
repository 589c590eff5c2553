"""The seed's DeepNN (teacher) and LightNN (student), for any input size.

Both stack conv blocks with two 2x2 max-pools, so an input of C x H x W leaves
``channels_out x H/4 x W/4`` features; only the first linear layer's width depends on the
input. At 3x32x32 they have the seed's 1,186,986 and 267,738 parameters.

Every model is a :class:`FeatureNet`: it can return its hidden representation (the
flattened conv features) through ``forward_with_hidden`` and its stage feature maps through
``forward_with_features``. RepDistiller's CIFAR pairs (ResNet, WRN) are in
kdsweep.nets.cifar.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.core.errors import ConfigError
from kdsweep.nets.feature import FeatureNet
from kdsweep.nets.width import scaled


class SeedNet(FeatureNet):
    """Conv features -> flatten -> MLP classifier, the shape of both seed networks. Its
    stages end at its two max-pools."""

    def __init__(
        self,
        features: nn.Sequential,
        feature_channels: int,
        hidden_units: int,
        input_shape: tuple[int, int, int],
        num_classes: int,
        dropout: float,
        returns_hidden: bool,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        if height % 4 or width % 4:
            raise ConfigError(
                f"input size {height}x{width} must be a multiple of 4 (two 2x2 pools)"
            )
        self.features = features
        self.hidden_width = feature_channels * (height // 4) * (width // 4)
        self.classifier = nn.Sequential(
            nn.Linear(self.hidden_width, hidden_units),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_units, num_classes),
        )
        self.returns_hidden = returns_hidden

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.flatten(self.features(x), 1)
        return self.classifier(hidden), hidden

    def forward_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        stages = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(x)
        hidden = torch.flatten(x, 1)
        return self.classifier(hidden), hidden, stages


POOL = "pool"


def _seed_net(
    plan: tuple[int | str, ...],
    hidden_units: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    returns_hidden: bool,
    width: float,
    network: str,
) -> SeedNet:
    """A SeedNet from its conv plan: each int a 3x3 conv (+ReLU) to that many channels,
    each POOL a 2x2 max-pool, its convs and its hidden units scaled by ``width``. Layer
    indices match the seed's nn.Sequential."""
    convs = [int(step) for step in plan if step != POOL]
    *widths, hidden_units = scaled([*convs, hidden_units], width, network)
    layers: list[nn.Module] = []
    channels = input_shape[0]
    for step in plan:
        if step == POOL:
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out = widths.pop(0)
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
            channels = out
    features = nn.Sequential(*layers)
    return SeedNet(
        features, channels, hidden_units, input_shape, num_classes, dropout, returns_hidden
    )


def deep_nn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.1,
    returns_hidden: bool = False,
    width: float = 1.0,
) -> SeedNet:
    """The seed's DeepNN teacher: 128-64-pool-64-32-pool convs, a 512-unit classifier
    (at ``width`` 1; kdsweep.nets.width)."""
    plan = (128, 64, POOL, 64, 32, POOL)
    return _seed_net(plan, 512, input_shape, num_classes, dropout, returns_hidden, width, "deep_nn")


def light_nn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.1,
    returns_hidden: bool = False,
    width: float = 1.0,
) -> SeedNet:
    """The seed's LightNN student: 16-pool-16-pool convs, a 256-unit classifier (at
    ``width`` 1; kdsweep.nets.width)."""
    plan = (16, POOL, 16, POOL)
    return _seed_net(
        plan, 256, input_shape, num_classes, dropout, returns_hidden, width, "light_nn"
    )
