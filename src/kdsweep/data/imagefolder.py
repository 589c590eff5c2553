"""The user's own images: torchvision's ImageFolder over ``root/train`` and optional
``root/val`` and ``root/test`` (``<split>/<class>/<image>``), streamed (kdsweep.data.streamed).

A missing val/ or test/ is a seeded share of train/: test with a fixed seed, so that
``split_seed`` reshuffles val and never test. Images are resized to ``image_size`` and,
with ``augment``, randomly cropped and flipped by torchvision's transforms v2 in the
DataLoader workers. The per-channel normalization statistics are the training split's,
computed once and cached (sealed) under ``cache_dir``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import logging
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kdsweep.core.cache import cached_artifact
from kdsweep.core.errors import DataError, first_line
from kdsweep.core.files import stable_hash
from kdsweep.data.splits import TEST_SEED, DataSet, TensorSplits, _split
from kdsweep.data.streamed import ImageSplit

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HOW_TO_PROVIDE = "a folder holding train/<class>/<images> (val/ and test/ alike, optional)"


@dataclass
class ImageFolderData(DataSet):
    """Images in class subfolders under ``root``, streamed from disk."""

    streamed: ClassVar[bool] = True
    name: str = "imagefolder"
    root: str | None = None
    # Every image is resized to image_size x image_size.
    image_size: int = 32
    # The share of train/ held out as the test split when there is no test/ folder.
    test_fraction: float = 0.1
    # DataLoader worker processes (0: decode in the training process).
    workers: int = 2
    # Where the normalization statistics are cached (the run's cache_dir).
    cache_dir: str = ".kdsweep_cache"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.root:
            raise ValueError(f"data.root is not set: give data.root=DIR, {HOW_TO_PROVIDE}")
        train = Path(self.root).expanduser() / "train"
        if not train.is_dir():
            raise ValueError(
                f"data.root={self.root} has no train/ folder ({train.resolve()}):"
                f" give data.root=DIR, {HOW_TO_PROVIDE}"
            )
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.workers}")

    def load(self) -> TensorSplits:
        return load_imagefolder_splits(self)


# What torchvision.io decodes, straight to a uint8 tensor: about twice as fast as PIL and
# ToImage on small PNGs (benchmarks/bench.py row h). Other formats go through PIL.
FAST_DECODE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# What a file with one of those names may hold for torchvision.io to decode it (as PIL
# names formats: MPO is a camera's multi-picture JPEG).
FAST_DECODE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF"})
# The PIL modes load_image turns into RGB faithfully; the others (32-bit integer "I",
# floating-point "F", the LAB and HSV colour spaces) PIL's convert("RGB") clips, zeroes
# or copies channel by channel: silently other pixels, so they are refused at load.
PIL_RGB_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
    | {"I;16", "I;16L", "I;16B", "I;16N"}  # 16-bit grey, scaled down to 8 bits
)
# Not images, skipped wherever they are: macOS's AppleDouble resource forks (._x.png beside
# x.png) and .DS_Store, every other hidden file or folder, and Windows' thumbnail caches.
LITTER = frozenset({"Thumbs.db", "desktop.ini"})


def _litter(name: str) -> bool:
    return name.startswith(".") or name in LITTER


# Where in its C++ source torchvision.io failed: "decode_jpeg, /__w/.../decode_jpeg.cpp:171, "
TORCHVISION_SOURCE = re.compile(r"^\w+, \S+\.cpp:\d+, ")


#: What PIL and torchvision.io raise on bytes they cannot decode (read off PIL's ImageFile
#: and format plugins, torchvision/io/image.py): OSError (PIL's decoders, a missing file;
#: UnidentifiedImageError), SyntaxError (a broken PNG or JPEG structure), ValueError,
#: EOFError, TypeError, LookupError and struct.error (malformed headers and tag tables),
#: RuntimeError (torchvision's C++ decoders; PIL's NotImplementedError).
UNDECODABLE: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    TypeError,
    LookupError,
    struct.error,
    RuntimeError,
)


def _unreadable(path: str, exc: BaseException) -> DataError:
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = TORCHVISION_SOURCE.sub("", first_line(exc))
    return DataError(
        f"cannot read {path} ({reason}): data.root's images must stay in place, readable"
        " and whole while kdsweep reads them"
    )


def load_image(path: str) -> torch.Tensor:
    """The image at ``path`` as a 3 x H x W uint8 RGB tensor (alpha dropped, grey
    repeated, 16-bit scaled down, a GIF's first frame), however it is stored. A file that
    cannot be read or decoded (gone, changed since it was checked) is a DataError naming it."""
    from PIL import Image

    try:
        return _decoded(path)
    except (*UNDECODABLE, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def _decoded(path: str) -> torch.Tensor:
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional

    if path.lower().endswith(FAST_DECODE_SUFFIXES):
        # Read here, not by torchvision.io.read_file: a missing or unreadable file is an
        # OSError naming its cause, not a message quoting torchvision's C++ source.
        with open(path, "rb") as handle:
            data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        image = decode_image(data, mode=ImageReadMode.RGB)
    else:
        from PIL import Image

        with Image.open(path) as opened:
            if opened.mode.startswith("I"):  # 16-bit grey: convert("RGB") clips it to white
                grey = np.asarray(opened).clip(0, 65535).astype(np.uint16) >> 8
                image = torch.from_numpy(grey.astype(np.uint8)).expand(3, -1, -1).clone()
            else:
                image = functional.pil_to_tensor(opened.convert("RGB"))
    if image.dtype != torch.uint8:
        image = functional.to_dtype(image, torch.uint8, scale=True)
    return image


def _check_image(path: str, data: bytes) -> None:
    """Refuse, naming the file, what would fail or decode wrongly later: not an image
    (empty, random bytes, a PNG cut short: PIL's verify() checks a PNG's chunk checksums
    without decoding pixels), more pixels than PIL's decompression-bomb limit
    (Image.MAX_IMAGE_PIXELS: a small TIFF can unpack to gigabytes), an image whose name
    sends it to the wrong decoder, or a mode with no faithful RGB conversion."""
    from PIL import Image

    fix = "replace it with a whole copy, or move it out of data.root"
    if not data:
        raise DataError(f"{path} is empty (0 bytes): {fix}")
    try:
        with warnings.catch_warnings():  # PIL warns between 1x and 2x its limit, then decodes
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                mode, kind = image.mode, image.format
                image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{path} is too large to decode safely ({first_line(exc).split(', could')[0]}):"
            " resize it, or move it out of data.root"
        ) from None
    except Image.UnidentifiedImageError:
        raise DataError(
            f"{path} is not an image PIL recognizes (another kind of file, or cut short): {fix}"
        ) from None
    except UNDECODABLE as exc:
        raise DataError(f"{path} is a broken image ({first_line(exc)}): {fix}") from None
    if path.lower().endswith(FAST_DECODE_SUFFIXES):
        if kind not in FAST_DECODE_FORMATS:
            raise DataError(
                f"{path} holds a {kind} image under another format's name: convert it to"
                " PNG, or rename it with its format's extension"
            )
    elif mode not in PIL_RGB_MODES and (mode, kind) != ("I", "PPM"):  # a 16-bit PGM is I
        raise DataError(
            f"{path} is a {kind} image in PIL mode {mode}, which has no faithful RGB"
            " conversion: convert it to 8- or 16-bit RGB or greyscale"
        )


class ResizedTo:
    """Resize to ``size`` x ``size``; an image already that size is passed as it is,
    where Resize would still interpolate it (the common case of a prepared data set)."""

    def __init__(self, size: int) -> None:
        from torchvision.transforms import v2

        self.size = size
        self.resize = v2.Resize((size, size), antialias=True)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        return self.resize(image)


def _folder(path: Path, transform: Any) -> Any:
    from torchvision import datasets

    _check_class_folders(path)
    try:
        return datasets.ImageFolder(
            str(path),
            transform=transform,
            loader=load_image,
            is_valid_file=functools.partial(_is_image, str(path)),
        )
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"no images under {path.resolve()} ({first_line(exc).rstrip('.')}):"
            f" data.root needs {HOW_TO_PROVIDE}"
        ) from None


def _given(split: Path) -> bool:
    """Whether data.root has this split's folder. Something else under its name (a file,
    a broken link) is refused: taking a share of train/ instead would be silent."""
    if os.path.lexists(split) and not split.is_dir():
        raise DataError(
            f"{split} is not a folder: data.root's {split.name}/ holds <class>/<images>;"
            f" remove it to hold out a share of train/ as {split.name}"
        )
    return split.is_dir()


def _check_class_folders(split: Path) -> None:
    """Only class folders stand in a split folder: a file there (an image outside any
    class, a class folder that is a file) or a hidden folder (which ImageFolder would
    make a class) is refused rather than silently left out or learned."""
    try:
        entries = sorted(os.scandir(split), key=lambda entry: entry.name)
    except OSError as exc:
        raise _unreadable(str(split), exc) from None
    for entry in entries:
        if entry.is_dir() and entry.name.startswith("."):
            raise DataError(
                f"{entry.path} is a hidden folder where {split.name}/ holds class folders:"
                " move it out of data.root"
            )
        if not entry.is_dir() and not _litter(entry.name):
            raise DataError(
                f"{entry.path} is a file where {split.name}/ holds class folders: move it"
                f" into {split.name}/<class>/ or out of data.root"
            )


def _is_image(split: str, path: str) -> bool:
    """ImageFolder's filter: litter (hidden, AppleDouble, .DS_Store, Thumbs.db, inside
    hidden folders) is skipped; any other file must be named as an image, or it would be
    left out silently (a file with no extension, one misnamed)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if any(_litter(part) for part in Path(os.path.relpath(path, split)).parts):
        return False
    if path.lower().endswith(IMG_EXTENSIONS):
        return True
    if not os.path.isfile(path):  # a link loop's end (too many levels): _content names it
        return False
    raise DataError(
        f"{path} is not named as an image (its name ends in none of"
        f" {' '.join(IMG_EXTENSIONS)}): rename it with its format's extension, or move"
        " it out of data.root"
    )


def _same_classes(train: Any, other: Any, split: str) -> None:
    if other.classes != train.classes:
        raise DataError(
            f"{split}/ has classes {other.classes}, train/ has {train.classes}: every folder"
            " under data.root needs the same class subfolders"
        )


def _subset(folder: Any, indices: np.ndarray) -> tuple[Any, np.ndarray]:
    from torch.utils.data import Subset

    return Subset(folder, indices.tolist()), np.asarray(folder.targets)[indices]


def _read_file(path: str) -> tuple[tuple[int, int], str]:
    """(device, inode) and SHA-256 of the file at ``path``: which file it is and what it
    holds (bytes, not size and time: an image rewritten in place keeps both). The bytes
    read for the digest are checked as an image too (_check_image), before anything
    trains: 5,000 32x32 PNGs take 0.15-0.2 s more (0.23 s to 0.39 s, a busy 2-core CPU)."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:  # vanished since it was listed, unreadable
        raise _unreadable(path, exc) from None
    _check_image(path, data)
    return (stat.st_dev, stat.st_ino), hashlib.sha256(data).hexdigest()


def _content(conf: ImageFolderData, folders: list[Any]) -> dict[str, str]:
    """Each image's content digest, by path; every file once. The same file met twice
    (a symbolic link loop, which ImageFolder follows about 40 levels deep, or a link to
    an image already listed, in this split or another) is refused: it would count that
    image several times, or leak it from train into test."""
    paths = list(dict.fromkeys(path for folder in folders for path, _ in folder.samples))
    # One by one: 5,000 32x32 PNGs (20 MB) take 0.16 s, against 0.02 s for their stat();
    # a thread pool was no faster on small files (measured, warm page cache).
    read = [_read_file(path) for path in paths]
    first: dict[tuple[int, int], str] = {}
    root = Path(conf.root).expanduser()  # type: ignore[arg-type]
    for path, (identity, _) in zip(paths, read, strict=True):
        seen = first.setdefault(identity, path)
        if seen != path:
            raise DataError(
                f"{Path(path).relative_to(root)} is the same file as"
                f" {Path(seen).relative_to(root)} under data.root={conf.root} (a symbolic"
                " link loop, or a link to an image already there): remove the link, every"
                " image must be in the data once"
            )
    return {path: digest for path, (_, digest) in zip(paths, read, strict=True)}


def _split_digests(
    conf: ImageFolderData, parts: dict[str, tuple[Any, np.ndarray]], content: dict[str, str]
) -> dict[str, str]:
    """What each split's images are: their paths under data.root (the class folder
    included, which is the label) and content, and the size they are resized to."""
    root = Path(conf.root).expanduser()  # type: ignore[arg-type]
    digests = {}
    for split, (subset, _) in parts.items():
        files = [subset.dataset.samples[i][0] for i in subset.indices]
        listing = [(str(Path(f).relative_to(root)), content[f]) for f in files]
        digests[split] = stable_hash({"files": listing, "image_size": conf.image_size})
    return digests


def _statistics(conf: ImageFolderData, train: Any, key: str) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (0-255 scale), a cached artifact
    (kdsweep.core.cache) keyed by the training split's content."""
    import torch

    path = Path(conf.cache_dir) / "data_stats" / f"imagefolder-{key}.pt"

    def compute() -> dict[str, list[float]]:
        split = ImageSplit(train, (0.0,), (1.0,), key, conf.workers)
        total = torch.zeros(3, dtype=torch.float64)
        squares = torch.zeros(3, dtype=torch.float64)
        for _, images in split.batches(512):  # on the 0-255 scale: mean 0, std 1 above
            pixels = images.double().transpose(0, 1).flatten(1)
            total += pixels.sum(dim=1)
            squares += pixels.square().sum(dim=1)
        count = len(split) * conf.image_size**2
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt() + 1e-6
        log.info("normalization statistics of %s computed once and cached (%s)", conf.root, path)
        return {"mean": mean.tolist(), "std": std.tolist()}

    def read(stats: dict[str, Any]) -> tuple[list[float], list[float]]:
        return list(stats["mean"]), list(stats["std"])

    return cached_artifact(path, compute, read, "normalization statistics")[0]


def _transforms(conf: ImageFolderData) -> tuple[Any, Any]:
    """(plain, augmented) per-image transforms: decoded to uint8, resized, and (augmented)
    randomly cropped with reflected padding and flipped, as the in-memory sets are."""
    from torchvision.transforms import v2

    plain = [ResizedTo(conf.image_size)]
    augment = [
        v2.RandomCrop(conf.image_size, padding=conf.image_size // 8, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
    ]
    return v2.Compose(plain), v2.Compose(plain + augment)


def load_imagefolder_splits(conf: ImageFolderData) -> TensorSplits:
    import torch

    root = Path(conf.root).expanduser()  # type: ignore[arg-type]
    plain, augmented = _transforms(conf)
    train_folder = _folder(root / "train", plain)
    every = np.arange(len(train_folder))
    given = {split: _given(root / split) for split in ("val", "test")}
    parts: dict[str, tuple[Any, np.ndarray]] = {}
    folders = []  # val/ and test/, where given

    def own_folder(split: str) -> tuple[Any, np.ndarray]:
        folder = _folder(root / split, plain)
        _same_classes(train_folder, folder, split)
        folders.append(folder)
        return _subset(folder, np.arange(len(folder)))

    if given["test"]:
        parts["test"] = own_folder("test")
    else:
        every, held = _split(len(every), conf.test_fraction, TEST_SEED)
        parts["test"] = _subset(train_folder, held)
    if given["val"]:
        parts["val"] = own_folder("val")
    else:
        try:
            conf.check_split(len(every))
        except ValueError as exc:
            raise DataError(f"{exc} (data.root={conf.root})") from None
        keep, held = _split(len(every), conf.val_fraction, conf.split_seed)
        every, parts["val"] = every[keep], _subset(train_folder, every[held])
    parts["train"] = _subset(train_folder, every)
    digests = _split_digests(conf, parts, _content(conf, [train_folder, *folders]))
    fingerprint = stable_hash(digests)
    mean, std = _statistics(conf, parts["train"][0], digests["train"])
    if conf.augment:  # the same files, another transform: only the training split's
        parts["train"] = _subset(copy.copy(train_folder), every)
        parts["train"][0].dataset.transform = augmented

    splits: dict[str, Any] = {}
    for name, (subset, labels) in parts.items():
        splits[f"{name}_x"] = ImageSplit(
            subset, tuple(mean), tuple(std), digests[name], conf.workers
        )
        splits[f"{name}_y"] = torch.from_numpy(labels.astype(np.int64))
    return TensorSplits(
        **splits,
        num_classes=len(train_folder.classes),
        fingerprint=fingerprint,
        input_mean=tuple(mean),
        input_std=tuple(std),
    )
