"""Data sets as tensors: train / val / test, normalized once, ready to index by batch.

Each data set is a dataclass whose fields are its config keys (``conf/data/<name>.yaml``
names it by ``_target_``; Hydra checks the types against it, ``__post_init__`` the
ranges). The whole set lives as one tensor (the airbench way): a training step indexes a
permutation instead of running a per-image DataLoader pipeline. The validation split is a
seeded fraction held out of the training set; the test set is never used to choose
anything. A seeded, class-stratified fraction of the training split may keep its labels
(``labelled_fraction``, the transfer-set setting): the others are marked UNLABELLED, and
the losses train on their images through the teacher only. torch is imported where
tensors are made, so a config is checked without it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from kdsweep.data.streamed import ImageSplit

# Colour images that random crop + flip make sense for.
AUGMENTABLE = ("cifar10", "cifar100", "synthetic", "imagefolder")
# Fewer training images than this is a mistake (val_fraction=0.99999), not an experiment.
MIN_TRAIN = 10
DIGITS_IMAGES = 1797
MAX_SEED = 2**32 - 1
# The label of a training image whose label is hidden (the losses treat any label < 0 so).
UNLABELLED = -1
# The seed of a test split held out of the training images (digits', an image folder's
# without test/): the test split never moves with data.split_seed, which reshuffles val.
TEST_SEED = 12345
# Mixed into split_seed so that which labels are kept is not tied to which images are val.
LABELS_STREAM = 20


@dataclass
class DataSet:
    """What every data set has: a seeded val split held out of its training images."""

    # True where the images are streamed from disk (ImageSplit), not held as tensors.
    streamed: ClassVar[bool] = False
    name: str = "dataset"
    val_fraction: float = 0.1
    split_seed: int = 0
    # On-device random crop (padding 4) and horizontal flip of the training batches.
    augment: bool = False
    # The share of the training split that keeps its labels (per class, fixed by
    # split_seed); the rest is images only the teacher's outputs cover. val and test stay
    # fully labelled.
    labelled_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.labelled_fraction <= 1.0:  # NaN fails the comparison too
            raise ValueError(
                f"data.labelled_fraction must be in (0, 1], got {self.labelled_fraction}"
            )
        if not 0 <= self.split_seed <= MAX_SEED:
            raise ValueError(f"data.split_seed must be in [0, {MAX_SEED}], got {self.split_seed}")
        if self.augment and self.name not in AUGMENTABLE:
            raise ValueError(
                f"data.augment=true is for 32x32 colour images (cifar10, cifar100, synthetic),"
                f" not data={self.name}"
            )

    def check_split(self, n_train: int) -> None:
        """Refuse a val_fraction that leaves fewer than MIN_TRAIN training images or no
        val image, for a set of ``n_train`` training images (known before loading)."""
        held = round(n_train * self.val_fraction)
        if held < 1 or n_train - held < MIN_TRAIN:
            raise ValueError(
                f"data.val_fraction={self.val_fraction} of {n_train} training images leaves"
                f" {n_train - held} to train on and {held} to validate: it needs at least"
                f" {MIN_TRAIN} and 1, pick a fraction in between"
            )

    def load(self) -> TensorSplits:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class DigitsData(DataSet):
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), bundled."""

    name: str = "digits"
    # 18 % of the 1,438 training images = 259 val images, one image = 0.39 points: fine
    # enough for a sweep's objective to tell settings apart (10 % was 144 images, 0.69 pt).
    val_fraction: float = 0.18
    # digits has no official test split: a seeded fraction is held out once, for good.
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        test = round(DIGITS_IMAGES * self.test_fraction)
        if test < 1:
            raise ValueError(
                f"data.test_fraction={self.test_fraction} of digits' {DIGITS_IMAGES} images"
                " leaves no test image: pick a larger fraction (default 0.2)"
            )
        if DIGITS_IMAGES - test <= MIN_TRAIN:  # no val_fraction could split what is left
            raise ValueError(
                f"data.test_fraction={self.test_fraction} of digits' {DIGITS_IMAGES} images"
                f" leaves {DIGITS_IMAGES - test} to train and validate on: pick a smaller"
                " fraction (default 0.2)"
            )
        self.check_split(DIGITS_IMAGES - test)

    def load(self) -> TensorSplits:
        return load_digits_splits(self)


@dataclass
class SyntheticData(DataSet):
    """Generated CIFAR-shaped images: class patterns plus noise (no files needed)."""

    name: str = "synthetic"
    size: int = 5000
    test_size: int = 1000
    num_classes: int = 10
    image_size: int = 32
    channels: int = 3
    noise: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("size", "test_size", "num_classes", "image_size", "channels"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_classes < 2:
            raise ValueError(f"data.num_classes must be >= 2, got {self.num_classes}")
        if self.image_size % 4:
            raise ValueError(f"data.image_size must be a multiple of 4, got {self.image_size}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"data.noise must be a finite number >= 0, got {self.noise}")
        self.check_split(self.size)

    def load(self) -> TensorSplits:
        return load_synthetic_splits(self)


@dataclass
class TensorSplits:
    """train / val / test: images as in-memory tensors, or streamed (ImageSplit: length,
    slices, batches) for data that do not fit in memory; labels always as tensors."""

    train_x: torch.Tensor | ImageSplit
    train_y: torch.Tensor
    val_x: torch.Tensor | ImageSplit
    val_y: torch.Tensor
    test_x: torch.Tensor | ImageSplit
    test_y: torch.Tensor
    num_classes: int
    fingerprint: str
    # The per-channel statistics every split was normalized with, x' = (x - mean) / std:
    # the training split's, on the data set's own pixel scale. A saved student needs them
    # to classify new images (kdsweep.student writes them into kdsweep.json).
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    PARTS: ClassVar[tuple[str, ...]] = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")

    def to(self, device: torch.device | str) -> TensorSplits:
        return replace(self, **{name: getattr(self, name).to(device) for name in self.PARTS})

    @property
    def nbytes(self) -> int:
        """Bytes the splits hold in memory (a streamed split's images hold none)."""
        return sum(getattr(self, name).nbytes for name in self.PARTS)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, held_out) index arrays; at least one sample on each side."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(max(1, round(n * fraction)), n - 1)
    return np.sort(order[held:]), np.sort(order[:held])


def hide_labels(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``labels`` with all but a seeded, class-stratified ``fraction`` of them UNLABELLED.

    Each class keeps round(fraction x its count) labels, at least one, the first ones of a
    permutation drawn from ``seed`` (data.split_seed): the same subset in every arm and
    every trainer.seed, and a larger fraction keeps a superset of a smaller one's.
    """
    if fraction >= 1.0:
        return labels
    import torch

    classes = labels.cpu().numpy()
    rng = np.random.default_rng((seed, LABELS_STREAM))
    kept = np.zeros(len(classes), dtype=bool)
    for label in np.unique(classes):  # sorted: the draws depend on the classes' sizes only
        members = rng.permutation(np.flatnonzero(classes == label))
        kept[members[: max(1, round(len(members) * fraction))]] = True
    hidden = torch.from_numpy(~kept).to(labels.device)
    return labels.masked_fill(hidden, UNLABELLED)


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        # The bytes of tobytes(), without the copy it makes (700 MB at CIFAR scale).
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()[:16]


def assemble(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    conf: DataSet,
    num_classes: int,
) -> TensorSplits:
    """Hold out val from train, normalize every split with the train statistics."""
    import torch

    keep, held = _split(len(train_x), conf.val_fraction, conf.split_seed)
    # Fancy indexing copies: these two arrays are ours, and are normalized in place.
    train_part, val_part = train_x[keep], train_x[held]
    # Every split's images and labels: the teacher picks its best epoch on val's labels
    # and records its test accuracy, so a relabelled file is other data too.
    fingerprint = _fingerprint(train_part, train_y[keep], val_part, train_y[held], test_x, test_y)
    train_part = train_part.astype(np.float32, copy=False)
    # Per-channel statistics of the training split alone: nothing leaks from val/test.
    mean = train_part.mean(axis=(0, 2, 3), keepdims=True)
    std = train_part.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def norm(x: np.ndarray, owned: bool) -> torch.Tensor:
        x = x.astype(np.float32, copy=not owned)  # the caller's arrays stay untouched
        x -= mean
        x /= std
        return torch.from_numpy(x)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return TensorSplits(
        train_x=norm(train_part, owned=True),
        train_y=labels(train_y[keep]),
        val_x=norm(val_part, owned=True),
        val_y=labels(train_y[held]),
        test_x=norm(test_x, owned=False),
        test_y=labels(test_y),
        num_classes=num_classes,
        fingerprint=fingerprint,
        input_mean=tuple(float(m) for m in mean.ravel()),
        input_std=tuple(float(s) for s in std.ravel()),
    )


def load_digits_splits(conf: DigitsData) -> TensorSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8).astype(np.float32)
    targets = bunch.target
    train_idx, test_idx = _split(len(images), conf.test_fraction, seed=TEST_SEED)
    return assemble(
        images[train_idx], targets[train_idx], images[test_idx], targets[test_idx], conf, 10
    )


def load_synthetic_splits(conf: SyntheticData) -> TensorSplits:
    """Learnable CIFAR-shaped data: each class is a smooth random pattern, each image that
    pattern with a random gain plus pixel noise. Deterministic for a given config."""
    rng = np.random.default_rng(conf.split_seed + 7919)
    side, channels = conf.image_size, conf.channels
    coarse = rng.normal(size=(conf.num_classes, channels, 4, 4)).astype(np.float32)
    # Upsample 4x4 -> side x side so patterns are smooth, as natural images are.
    prototypes = coarse.repeat(side // 4, axis=2).repeat(side // 4, axis=3)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, conf.num_classes, size=n)
        gain = rng.uniform(0.5, 1.5, size=(n, 1, 1, 1)).astype(np.float32)
        noise = rng.normal(scale=conf.noise, size=(n, channels, side, side)).astype(np.float32)
        return prototypes[y] * gain + noise, y

    train_x, train_y = draw(conf.size)
    test_x, test_y = draw(conf.test_size)
    return assemble(train_x, train_y, test_x, test_y, conf, conf.num_classes)


_LOADED: dict[str, TensorSplits] = {}


def load_splits(conf: DataSet) -> TensorSplits:
    """Load a data set's splits on the CPU. Cached per process: a sweep's in-process
    trials share one copy (the returned tensors are never modified in place)."""
    key = repr(conf)
    if key not in _LOADED:
        _LOADED.clear()  # one data set at a time is what a process uses; bound the memory
        _LOADED[key] = conf.load()
    return _LOADED[key]
