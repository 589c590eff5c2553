"""The data sets: each a dataclass built from ``conf/data/<name>.yaml`` by ``_target_``
(its fields are the keys and their defaults, kdsweep.config.schema), loaded as train /
val / test tensors (``splits``) or streamed from disk (``streamed``); CIFAR from torchvision's files
(``cifar``); the user's image folders (``imagefolder``); on-device augmentation
(``augment``)."""

from kdsweep.data.cifar import CifarData, load_cifar_splits
from kdsweep.data.imagefolder import ImageFolderData
from kdsweep.data.splits import (
    DataSet,
    DigitsData,
    SyntheticData,
    TensorSplits,
    load_digits_splits,
    load_splits,
    load_synthetic_splits,
)
from kdsweep.data.streamed import ImageSplit

__all__ = [
    "CifarData",
    "DataSet",
    "DigitsData",
    "ImageFolderData",
    "ImageSplit",
    "SyntheticData",
    "TensorSplits",
    "load_cifar_splits",
    "load_digits_splits",
    "load_splits",
    "load_synthetic_splits",
]
