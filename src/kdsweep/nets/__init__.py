"""The networks: the seed's DeepNN / LightNN (``tutorial``), RepDistiller's CIFAR pairs
(``cifar``), all of them :class:`FeatureNet` (``feature``), built by name."""

from __future__ import annotations

from collections.abc import Callable

from kdsweep.nets.cifar import CIFAR_BUILDERS
from kdsweep.nets.feature import FeatureNet, count_parameters, hidden_pool_kernel, pool_hidden
from kdsweep.nets.tutorial import BUILDERS, SeedNet, deep_nn, light_nn

__all__ = [
    "FeatureNet",
    "SeedNet",
    "all_builders",
    "build_model",
    "count_parameters",
    "deep_nn",
    "hidden_pool_kernel",
    "light_nn",
    "pool_hidden",
]


def all_builders() -> dict[str, Callable[..., FeatureNet]]:
    """Every architecture by name: the seed's and RepDistiller's CIFAR networks."""
    return {**BUILDERS, **CIFAR_BUILDERS}


def build_model(
    architecture: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.1,
    returns_hidden: bool = False,
) -> FeatureNet:
    builder = all_builders()[str(architecture)]
    return builder(input_shape, num_classes, dropout, returns_hidden)
