"""Cached artifacts: computed once, sealed, saved atomically, verified on every read.

Every file kdsweep caches (a teacher checkpoint, a teacher's outputs, an image folder's
normalization statistics) is made the same way, here: under a lock on its path, so that
concurrent processes (sweep workers) compute it once; read back only when its checksum
(kdsweep.core.integrity) and the caller's own checks hold; otherwise computed, sealed and
saved atomically (kdsweep.core.files), with one warning when a file was there but
unusable. A cache file is disposable: a damaged one is never an error, only recomputed.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kdsweep.core.errors import KdsweepError, first_line
from kdsweep.core.files import atomic_torch_save, file_lock
from kdsweep.core.integrity import sealed, verified

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What ``torch.load(..., weights_only=True)`` raises on a file that is not a whole torch
#: file of plain values (read off torch/serialization.py and torch/_weights_only_unpickler.py):
#: RuntimeError (a damaged zip, a bad magic number), pickle.UnpicklingError (a refused
#: global, an unknown opcode), EOFError (cut short), ValueError, AssertionError and
#: TypeError (malformed records), LookupError (the unpickler's stack and memo) and OSError
#: (the file itself).
UNREADABLE_TORCH_FILE: tuple[type[Exception], ...] = (
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    AssertionError,
    TypeError,
    LookupError,
    OSError,
)

# The verified payloads this process read, by the file's identity (path, inode, size,
# mtime): under the basic launcher a sweep's trials and confirmation runs all run in one
# process and read the same teacher; reading and checksumming it costs ~0.1 s each time.
# A file replaced or rewritten since has another identity and is read again.
_VERIFIED: dict[tuple[str, int, int, int], dict[str, Any]] = {}
_MAX_VERIFIED = 8


def load_plain(path: Path) -> Any:
    """The torch file at ``path``, on the CPU, read with ``weights_only``: tensors and plain
    values only, so that no file kdsweep reads runs code. A file that is not one raises one
    of UNREADABLE_TORCH_FILE."""
    import torch  # here, not at the top: report and CLI tools use core without torch

    return torch.load(path, map_location="cpu", weights_only=True)


def read_sealed(path: Path) -> dict[str, Any]:
    """The content of the sealed torch file at ``path`` (IntegrityError if it changed
    since it was sealed; one of UNREADABLE_TORCH_FILE if it is not a torch file of plain
    values)."""
    stat = path.stat()
    identity = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if identity not in _VERIFIED:
        payload = verified(load_plain(path))
        if len(_VERIFIED) >= _MAX_VERIFIED:
            _VERIFIED.clear()
        _VERIFIED[identity] = payload
    return _VERIFIED[identity]


def cached_artifact(
    path: Path,
    make: Callable[[], Mapping[str, Any]],
    use: Callable[[dict[str, Any]], T],
    what: str,
) -> tuple[T, bool]:
    """``use(payload)`` of the sealed file at ``path``, and False; or, where it is missing
    or unusable (damaged, unsealed, or refused by ``use``: another shape, another
    network: ``use`` refuses by raising a ValueError, a LookupError or a KdsweepError),
    ``use`` of ``make()``'s fresh payload, sealed and saved atomically first, and
    True. ``make`` may write files of its own beside ``path`` (atomically) and seal their
    checksums into its payload: ``path`` is written last, so they are read only through it.
    ``use`` must not modify the payload (a read one is shared within the process)."""
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            try:
                return use(read_sealed(path)), False
            except (*UNREADABLE_TORCH_FILE, KdsweepError) as exc:  # recompute a faulty file
                log.warning("%s %s unusable (%s); recomputing", what, path, first_line(exc))
        payload = dict(make())
        atomic_torch_save(sealed(payload), path)
        return use(payload), True
