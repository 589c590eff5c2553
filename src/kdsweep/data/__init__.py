"""The data sets: each a dataclass built from ``conf/data/<name>.yaml`` by ``_target_``
(its fields are the keys the YAML lists), loaded as train / val / test tensors
(``splits``); CIFAR from torchvision's files (``cifar``); on-device augmentation
(``augment``)."""

from kdsweep.data.cifar import CifarData, load_cifar_splits
from kdsweep.data.splits import (
    DataSet,
    DigitsData,
    SyntheticData,
    TensorSplits,
    load_digits_splits,
    load_splits,
    load_synthetic_splits,
)

__all__ = [
    "CifarData",
    "DataSet",
    "DigitsData",
    "SyntheticData",
    "TensorSplits",
    "load_cifar_splits",
    "load_digits_splits",
    "load_splits",
    "load_synthetic_splits",
]
