"""Data sets as tensors: train / val / test, normalized once, ready to index by batch.

The whole set lives as one tensor (the airbench way): a training step indexes a
permutation instead of running a per-image DataLoader pipeline. The validation split is a
seeded fraction held out of the training set; the test set is never used to choose
anything.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.config import CifarDataConf, DataConf, DigitsDataConf, SyntheticDataConf
from kdsweep.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TensorSplits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    fingerprint: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device) -> TensorSplits:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return TensorSplits(**moved, num_classes=self.num_classes, fingerprint=self.fingerprint)

    @property
    def nbytes(self) -> int:
        return sum(
            t.element_size() * t.nelement()
            for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)
        )


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, held_out) index arrays; at least one sample on each side."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(max(1, round(n * fraction)), n - 1)
    return np.sort(order[held:]), np.sort(order[:held])


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        # The bytes of tobytes(), without the copy it makes (700 MB at CIFAR scale).
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()[:16]


def _assemble(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    conf: DataConf,
    num_classes: int,
) -> TensorSplits:
    """Hold out val from train, normalize every split with the train statistics."""
    keep, held = _split(len(train_x), conf.val_fraction, conf.split_seed)
    # Fancy indexing copies: these two arrays are ours, and are normalized in place.
    train_part, val_part = train_x[keep], train_x[held]
    fingerprint = _fingerprint(train_part, train_y[keep], val_part, test_x)
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
    )


def load_digits_splits(conf: DigitsDataConf) -> TensorSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8).astype(np.float32)
    targets = bunch.target
    # Fixed seed for the test split: changing split_seed reshuffles val, never test.
    train_idx, test_idx = _split(len(images), conf.test_fraction, seed=12345)
    return _assemble(
        images[train_idx], targets[train_idx], images[test_idx], targets[test_idx], conf, 10
    )


def load_synthetic_splits(conf: SyntheticDataConf) -> TensorSplits:
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
    return _assemble(train_x, train_y, test_x, test_y, conf, conf.num_classes)


CIFAR_HINT = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def load_cifar_splits(conf: CifarDataConf) -> TensorSplits:
    from torchvision import datasets

    base = datasets.CIFAR10 if conf.name == "cifar10" else datasets.CIFAR100
    cls = base
    if not conf.verify_checksum:
        # A subclass, not a patch: only this loader skips the md5 of the official archive
        # (data files via _check_integrity, the meta file via meta["md5"]=None).
        unverified = {"_check_integrity": _files_present, "meta": {**base.meta, "md5": None}}
        cls = type(base.__name__ + "Unverified", (base,), unverified)
    root = Path(conf.root).expanduser()
    folder, url = CIFAR_HINT[conf.name]
    try:
        train = cls(root=str(root), train=True, download=conf.download)
        test = cls(root=str(root), train=False, download=conf.download)
    except Exception as exc:  # torchvision raises RuntimeError; a failed download, URLError
        where = root.resolve()
        raise DataError(
            f"{conf.name} not found or unreadable under {where}/{folder}"
            f" ({_first_line(exc)}): extract {url} into {where},"
            " or set data.download=true where the network allows"
        ) from None
    train_x = np.asarray(train.data).transpose(0, 3, 1, 2)
    train_y = np.asarray(train.targets)
    if conf.train_subset is not None:
        train_x, train_y = train_x[: conf.train_subset], train_y[: conf.train_subset]
    test_x = np.asarray(test.data).transpose(0, 3, 1, 2)
    num_classes = len(train.classes)
    return _assemble(train_x, train_y, test_x, np.asarray(test.targets), conf, num_classes)


def _files_present(self: object) -> bool:
    base = Path(self.root) / self.base_folder  # type: ignore[attr-defined]
    names = [name for name, _ in self.train_list + self.test_list]  # type: ignore[attr-defined]
    return all((base / name).is_file() for name in names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_LOADED: dict[str, TensorSplits] = {}


def load_splits(conf: DataConf) -> TensorSplits:
    """Load a data group's splits on the CPU. Cached per process: a sweep's in-process
    trials share one copy (the returned tensors are never modified in place)."""
    key = repr(conf)
    if key not in _LOADED:
        _LOADED.clear()  # one data set at a time is what a process uses; bound the memory
        _LOADED[key] = _load_uncached(conf)
    return _LOADED[key]


def _load_uncached(conf: DataConf) -> TensorSplits:
    if isinstance(conf, DigitsDataConf):
        return load_digits_splits(conf)
    if isinstance(conf, SyntheticDataConf):
        return load_synthetic_splits(conf)
    if isinstance(conf, CifarDataConf):
        return load_cifar_splits(conf)
    raise DataError(f"unknown data set {conf.name!r}")
