"""The networks: the seed's DeepNN / LightNN (``tutorial``), RepDistiller's CIFAR pairs
(``cifar``), all of them :class:`FeatureNet` (``feature``), and :class:`HookedNet`, which
makes any other network one through forward hooks on named layers. conf/model and
conf/teacher name networks by ``_target_`` (``kdsweep.nets.light_nn``,
``torchvision.models.resnet18``); kdsweep passes ``input_shape``, ``in_channels`` and
``num_classes`` from the data set when the callable takes them (kdsweep.config.targets)."""

from kdsweep.nets.cifar import resnet8x4, resnet32x4, wrn_16_2, wrn_40_2
from kdsweep.nets.feature import (
    FeatureNet,
    HookedNet,
    as_feature_net,
    check_layers,
    count_parameters,
    eval_mode,
    hidden_pool_kernel,
    network_of,
    pool_hidden,
    top_layers,
)
from kdsweep.nets.tutorial import SeedNet, deep_nn, light_nn

__all__ = [
    "FeatureNet",
    "HookedNet",
    "SeedNet",
    "as_feature_net",
    "check_layers",
    "count_parameters",
    "deep_nn",
    "eval_mode",
    "hidden_pool_kernel",
    "light_nn",
    "network_of",
    "pool_hidden",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "top_layers",
    "wrn_40_2",
]
