"""RepDistiller's CIFAR teacher/student networks (ResNet x4, WRN) as kdsweep FeatureNets.

Re-implemented after HobbitLong/RepDistiller (models/resnet.py, models/wrn.py), the
networks of the CRD paper's CIFAR-100 tables: ``resnet32x4`` -> ``resnet8x4`` and
``wrn_40_2`` -> ``wrn_16_2``. Two changes from the reference: the input channels come from
``input_shape[0]`` (digits is 1x8x8), and the final pool is ``nn.AdaptiveAvgPool2d(1)``
instead of a fixed 8x8 one, so any input of at least 4x4 works. At 3x32x32 the pool sees
8x8 maps, as in the reference, and the parameter counts are RepDistiller's. Parameter
names are the reference's too, so a RepDistiller state_dict (e.g. a pretrained teacher's
``model`` entry) loads with ``load_state_dict`` as it is.

``forward_with_features`` gives the logits, the pooled vector before ``fc`` (``hidden``,
``hidden_width`` wide) and the outputs of the three stages (spatial sizes H, H/2, H/4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kdsweep.core.errors import ConfigError
from kdsweep.nets.feature import FeatureNet
from kdsweep.nets.width import scaled

MIN_SIZE = 4  # two stride-2 stages: 4x4 leaves a 1x1 map to pool


def _check_input(input_shape: tuple[int, int, int]) -> int:
    channels, height, width = input_shape
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ConfigError(
            f"input size {height}x{width} is too small for the CIFAR networks"
            f" (at least {MIN_SIZE}x{MIN_SIZE})"
        )
    return channels


def _init_weights(model: nn.Module, zero_linear_bias: bool) -> None:
    """RepDistiller's initialisation: He-normal (fan_out) convs, BatchNorm weight 1 and bias
    0; the WRN also zeroes the classifier's bias (the ResNet keeps torch's default)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and zero_linear_bias:
            nn.init.zeros_(module.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


# --- ResNet (CIFAR, BasicBlock) -------------------------------------------------------------


class ResBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, plus the shortcut (a 1x1 conv + BN
    when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CifarResNet(FeatureNet):
    """RepDistiller's CIFAR ResNet with basic blocks: a 3x3 stem, three stages of
    ``(depth - 2) // 6`` blocks (strides 1, 2, 2), global average pool, fc. ``width``
    scales the filters (kdsweep.nets.width)."""

    def __init__(
        self,
        depth: int,
        num_filters: tuple[int, int, int, int],
        input_shape: tuple[int, int, int],
        num_classes: int,
        returns_hidden: bool = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        filters = scaled(num_filters, width, f"ResNet-{depth}")
        channels = _check_input(input_shape)
        self.conv1 = _conv3x3(channels, filters[0])
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.layer1 = self._stage(filters[0], filters[1], blocks, 1)
        self.layer2 = self._stage(filters[1], filters[2], blocks, 2)
        self.layer3 = self._stage(filters[2], filters[3], blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters[3], num_classes)
        self.hidden_width = filters[3]
        self.returns_hidden = returns_hidden
        _init_weights(self, zero_linear_bias=False)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [ResBlock(cin, cout, stride)]
        layers += [ResBlock(cout, cout) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        x = torch.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        hidden = torch.flatten(self.avgpool(f3), 1)
        return self.fc(hidden), hidden, [f1, f2, f3]


# --- Wide ResNet ----------------------------------------------------------------------------


class WideBlock(nn.Module):
    """Pre-activation basic block of the WRN: BN-ReLU-conv-BN-ReLU-conv plus the input, or a
    1x1 conv of the activated input when the channels change (as in the reference, the
    shortcut then starts from the activated input)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        # RepDistiller's name, so its state_dicts load as they are
        self.convShortcut: nn.Conv2d | None = None
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class WideResNet(FeatureNet):
    """RepDistiller's WRN-depth-k: channels 16, 16k, 32k, 64k; three stages of
    ``(depth - 4) // 6`` pre-activation blocks (strides 1, 2, 2); BN-ReLU, average pool, fc.
    No dropout (RepDistiller's dropRate=0.0). The stage maps are the blocks' outputs, before
    the next BN-ReLU (RepDistiller's f1..f3). ``width`` scales the channels
    (kdsweep.nets.width)."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        input_shape: tuple[int, int, int],
        num_classes: int,
        returns_hidden: bool = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        published = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        widths = scaled(published, width, f"WRN-{depth}-{widen_factor}")
        channels = _check_input(input_shape)
        self.conv1 = _conv3x3(channels, widths[0])
        self.block1 = self._stage(widths[0], widths[1], blocks, 1)
        self.block2 = self._stage(widths[1], widths[2], blocks, 2)
        self.block3 = self._stage(widths[2], widths[3], blocks, 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.hidden_width = widths[3]
        self.returns_hidden = returns_hidden
        _init_weights(self, zero_linear_bias=True)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Module:
        """A stage as RepDistiller's NetworkBlock: its blocks under ``.layer``."""
        layers = [WideBlock(cin, cout, stride)]
        layers += [WideBlock(cout, cout, 1) for _ in range(1, blocks)]
        stage = nn.Module()
        stage.layer = nn.Sequential(*layers)
        return stage

    def forward_with_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        x = self.conv1(x)
        f1 = self.block1.layer(x)
        f2 = self.block2.layer(f1)
        f3 = self.block3.layer(f2)
        hidden = torch.flatten(self.avgpool(torch.relu(self.bn1(f3))), 1)
        return self.fc(hidden), hidden, [f1, f2, f3]


# --- the four networks of the CRD tables, named in conf/model and conf/teacher -------------

X4_FILTERS = (32, 64, 128, 256)

# None of them has dropout: RepDistiller trains the WRNs with dropRate=0.0 and the
# ResNets have none. Parameters at 3x32x32 with 100 classes (tests/test_cifar_nets.py):
# ResNet8x4 1.23M (student), ResNet32x4 7.43M (teacher), WRN-16-2 0.70M (student),
# WRN-40-2 2.26M (teacher).


def _builder(name: str, net: Callable[..., FeatureNet], *spec: object) -> Callable[..., FeatureNet]:
    """The builder conf/model and conf/teacher name as ``kdsweep.nets.<name>``: ``net`` with
    its published ``spec`` (depth, then filters or widen factor)."""

    def build(
        input_shape: tuple[int, int, int],
        num_classes: int,
        returns_hidden: bool = False,
        width: float = 1.0,
    ) -> FeatureNet:
        return net(*spec, input_shape, num_classes, returns_hidden, width)

    build.__name__ = build.__qualname__ = name
    return build


resnet8x4 = _builder("resnet8x4", CifarResNet, 8, X4_FILTERS)
resnet32x4 = _builder("resnet32x4", CifarResNet, 32, X4_FILTERS)
wrn_16_2 = _builder("wrn_16_2", WideResNet, 16, 2)
wrn_40_2 = _builder("wrn_40_2", WideResNet, 40, 2)
