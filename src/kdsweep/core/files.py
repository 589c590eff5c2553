"""Crash-safe file writes, inter-process locks and content hashes.

Everything kdsweep persists (teacher checkpoints, teacher-output caches, reports) goes
through ``atomic_write``: the data land in a temporary file in the same directory, are
fsync'ed, then renamed over the target. A crash mid-write leaves the previous good file,
and a temporary file that the next write of the same target removes once it is old.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from kdsweep.core.signals import interruptible

# A temporary file this old was left by a writer that died (SIGKILL, power loss): a live
# writer's file is minutes old at most, since it is written in one go.
ORPHAN_AGE_S = 3600.0


def remove_orphaned_temporaries(target: Path, older_than_s: float = ORPHAN_AGE_S) -> int:
    """Delete ``target``'s temporary files that a dead writer left; return how many."""
    removed = 0
    now = time.time()
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a temporary file; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would,
        # so a cache shared by several users stays readable.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch  # here, not at the top: report and CLI tools use this module without torch

    with atomic_write(path) as handle:
        torch.save(obj, handle)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_save_figure(save: Callable[[IO[bytes]], None], path: str | Path) -> None:
    """``save`` writes the figure into the handle it is given (e.g. fig.savefig)."""
    with atomic_write(path) as handle:
        save(handle)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created with its folder if missing), shared by every
    process on this machine: filelock's FileLock (flock on Unix). Blocks until it is free."""
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    with interruptible():  # another process may hold it for minutes (training a teacher)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def stable_hash(payload: Any, length: int = 16) -> str:
    """A short hash of a JSON-able value, independent of dict order."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: str | Path, length: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


#: Below this much free space a directory kdsweep writes caches to counts as full.
MIN_FREE_BYTES = 64 << 20


def directory_problem(path: str | Path, min_free: int = MIN_FREE_BYTES) -> str | None:
    """Why ``path`` cannot be (created and) written as a directory, or None: the nearest
    existing ancestor is a file, is not writable (read-only file system or permissions), or
    its disk has less than ``min_free`` bytes free."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    free = shutil.disk_usage(probe).free
    if free < min_free:
        return f"its disk is full ({free >> 20} MB free)"
    return None


_UNSAFE_IN_NAME = re.compile(r"[^\w.-]+")
MAX_SAFE_NAME = 80


def safe_name(name: str) -> str:
    """``name`` as one file-name component that MLflow also accepts as a model name: every
    character outside ``[A-Za-z0-9_.-]`` becomes ``_``, leading and trailing dots and
    dashes go, and a changed or long name is cut and suffixed with a hash of the full one,
    so two names never map to the same result ("a/b" and "a_b" stay apart)."""
    safe = _UNSAFE_IN_NAME.sub("_", name).strip("._-") or "study"
    if safe != name or len(safe) > MAX_SAFE_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_SAFE_NAME]}-{digest}"
    return safe
