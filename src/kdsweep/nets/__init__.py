"""The networks: the seed's DeepNN / LightNN (``tutorial``), RepDistiller's CIFAR pairs
(``cifar``), all of them :class:`FeatureNet` (``feature``). conf/model and conf/teacher
name them by ``_target_`` (``kdsweep.nets.light_nn``); kdsweep passes ``input_shape`` and
``num_classes`` from the data set (kdsweep.config.targets)."""

from kdsweep.nets.cifar import resnet8x4, resnet32x4, wrn_16_2, wrn_40_2
from kdsweep.nets.feature import FeatureNet, count_parameters, hidden_pool_kernel, pool_hidden
from kdsweep.nets.tutorial import SeedNet, deep_nn, light_nn

__all__ = [
    "FeatureNet",
    "SeedNet",
    "count_parameters",
    "deep_nn",
    "hidden_pool_kernel",
    "light_nn",
    "pool_hidden",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_2",
]
