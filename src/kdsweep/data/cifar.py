"""CIFAR-10 / CIFAR-100 from torchvision's files on disk, and the one-line message that
says what is wrong with them when they cannot be read: missing (where to put them),
present but failing the checksum (``data.verify_checksum=false`` for a hand-made subset),
or present but unreadable. Nothing is downloaded unless ``data.download`` is true.
"""

from __future__ import annotations

import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdsweep.core.errors import DataError, first_line
from kdsweep.data.splits import DataSet, TensorSplits, assemble

CIFAR_TRAIN_IMAGES = 50000
CIFAR_HINT = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}

#: What torchvision's CIFAR classes raise on a copy they cannot use (read off
#: torchvision/datasets/cifar.py and utils.py): RuntimeError (missing or failing its
#: checksum), OSError (a file, a failed download: URLError), tarfile.TarError (a bad
#: archive), and what unpickling a malformed batch file raises (UnpicklingError, EOFError,
#: a missing key or class, a wrong type, an array that does not reshape to 3x32x32).
UNREADABLE_CIFAR: tuple[type[Exception], ...] = (
    RuntimeError,
    OSError,
    tarfile.TarError,
    pickle.UnpicklingError,
    EOFError,
    LookupError,
    AttributeError,
    ImportError,
    TypeError,
    ValueError,
)


@dataclass
class CifarData(DataSet):
    """CIFAR-10 / CIFAR-100 in torchvision's format under ``root``; never downloaded
    unless ``download`` is true."""

    name: str = "cifar10"
    root: str = "data"
    download: bool = False
    # torchvision checks the official archives' md5; a hand-made CIFAR-format subset
    # (or a test fixture) can switch that off.
    verify_checksum: bool = True
    # Use only the first N training images (quick experiments); null = all.
    train_subset: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name not in CIFAR_HINT:
            raise ValueError(f"data.name must be one of {sorted(CIFAR_HINT)}, got {self.name!r}")
        if self.train_subset is not None and self.train_subset < 2:
            raise ValueError(f"data.train_subset must be >= 2 or null, got {self.train_subset}")
        self.check_split(self.train_subset or CIFAR_TRAIN_IMAGES)

    def load(self) -> TensorSplits:
        return load_cifar_splits(self)


def load_cifar_splits(conf: CifarData) -> TensorSplits:
    from torchvision import datasets

    base = datasets.CIFAR10 if conf.name == "cifar10" else datasets.CIFAR100
    cls = base if conf.verify_checksum else _unverified(base)
    root = Path(conf.root).expanduser()
    try:
        train = cls(root=str(root), train=True, download=conf.download)
        test = cls(root=str(root), train=False, download=conf.download)
    except UNREADABLE_CIFAR as exc:
        raise _cifar_error(conf, base, root, exc) from None
    train_x = np.asarray(train.data).transpose(0, 3, 1, 2)
    train_y = np.asarray(train.targets)
    if conf.train_subset is not None:
        train_x, train_y = train_x[: conf.train_subset], train_y[: conf.train_subset]
    test_x = np.asarray(test.data).transpose(0, 3, 1, 2)
    num_classes = len(train.classes)
    return assemble(train_x, train_y, test_x, np.asarray(test.targets), conf, num_classes)


def _unverified(base: type) -> type:
    """A subclass, not a patch: only this loader skips the md5 of the official archive
    (data files via _check_integrity, the meta file via meta["md5"]=None)."""
    unverified = {"_check_integrity": _files_present, "meta": {**base.meta, "md5": None}}
    return type(base.__name__ + "Unverified", (base,), unverified)


def _files_present(self: object) -> bool:
    base = Path(self.root) / self.base_folder  # type: ignore[attr-defined]
    names = [name for name, _ in self.train_list + self.test_list]  # type: ignore[attr-defined]
    return all((base / name).is_file() for name in names)


def _cifar_files(base: type, root: Path) -> list[Path]:
    """Every file torchvision reads for this data set: the batches and the meta file."""
    folder = root / base.base_folder  # type: ignore[attr-defined]
    names = [name for name, _ in base.train_list + base.test_list]  # type: ignore[attr-defined]
    return [folder / name for name in [*names, base.meta["filename"]]]  # type: ignore[attr-defined]


# torchvision's advice, which kdsweep words itself (data.download=true, never by default).
_DOWNLOAD_ADVICE = re.compile(r"[.,;]?\s*You can use download=True to download it\.?", re.I)


def _reason(exc: BaseException) -> str:
    return _DOWNLOAD_ADVICE.sub("", first_line(exc)).strip().rstrip(".") or type(exc).__name__


def _cifar_error(conf: CifarData, base: type, root: Path, exc: BaseException) -> DataError:
    """One line that tells a missing copy from one that is there but fails its checksum
    (a hand-made subset in CIFAR's format) or does not parse."""
    where = root.resolve()
    folder, url = CIFAR_HINT[conf.name]
    missing = [path.name for path in _cifar_files(base, root) if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        return DataError(
            f"{conf.name} not found under {where}/{folder} ({_reason(exc)}; missing {shown}):"
            f" extract {url} into {where}, or set data.download=true where the network allows"
        )
    if conf.verify_checksum:
        try:  # every file is there: do they parse without the checksum?
            for train in (True, False):
                _unverified(base)(root=str(root), train=train, download=False)
        except UNREADABLE_CIFAR as unreadable:
            exc = unreadable
        else:
            return DataError(
                f"{conf.name} files under {where}/{folder} are present and readable but do not"
                " match the official archive's md5 checksums (a hand-made or modified copy):"
                " set data.verify_checksum=false to use them as they are, or replace them with"
                f" the contents of {url}"
            )
    return DataError(
        f"{conf.name} files under {where}/{folder} are present but unreadable"
        f" ({_reason(exc)}): replace them with the contents of {url}"
    )
