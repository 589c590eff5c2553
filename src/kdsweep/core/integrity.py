"""Content checksums for the files kdsweep caches (teacher checkpoints, teacher outputs).

A cache file can be damaged inside a container that still loads: zeroed or NaN weights,
a tensor of another shape, a garbled metrics field. torch.load cannot tell, so each file
carries a SHA-256 of its content, computed when it is written and checked when it is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

CHECKSUM_KEY = "sha256"


class IntegrityError(ValueError):
    """A cached file's content does not match its checksum (or has none)."""


def content_digest(payload: Any) -> str:
    """SHA-256 over a tree of dicts, lists, tensors and JSON values: every tensor's dtype,
    shape and bytes, every key, every other value."""
    import torch

    digest = hashlib.sha256()

    def feed(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            tensor = node.detach().cpu().contiguous()
            digest.update(f"tensor:{tensor.dtype}:{list(tensor.shape)}:".encode())
            # Bytes through uint8, which every dtype (bfloat16 included) can be viewed as;
            # read in place, not copied (a data split's images are hundreds of MB).
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(node, Mapping):
            digest.update(b"{")
            for key in sorted(node, key=str):
                digest.update(json.dumps(str(key)).encode())
                feed(node[key])
            digest.update(b"}")
        elif isinstance(node, (list, tuple)):
            digest.update(b"[")
            for item in node:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(json.dumps(node, sort_keys=True, default=str).encode())

    feed(payload)
    return digest.hexdigest()


def sealed(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with its checksum added, ready to save."""
    return {**payload, CHECKSUM_KEY: content_digest(payload)}


def verified(payload: Any) -> dict[str, Any]:
    """The payload of a sealed file, without its checksum; IntegrityError if the content
    changed since it was sealed, or if it was never sealed."""
    if not isinstance(payload, Mapping) or CHECKSUM_KEY not in payload:
        raise IntegrityError("no checksum (written by an older kdsweep, or not by kdsweep)")
    content = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
    if content_digest(content) != payload[CHECKSUM_KEY]:
        raise IntegrityError("its content does not match its checksum (the file was damaged)")
    return content
