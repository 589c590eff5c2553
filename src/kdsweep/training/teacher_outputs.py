"""Precomputed outputs of a frozen teacher, cached on disk per (teacher, data, split).

A frozen teacher (eval mode: dropout off) on un-augmented data is a pure function of the
image, so its logits and hidden features can be computed once and indexed by batch in
every epoch, every trial and every process. The key is content-addressed: the teacher's
key (its weights) and the content of the inputs it ran on, so that another split of the
same data (``data.split_seed``) or changed images are other outputs, whatever the teacher
key covers (a user's checkpoint's key is its file's hash alone).

One format for every split, in memory or streamed: the outputs are written batch by
batch as raw float32 rows (row i: sample i), so they are never all held in RAM while
computed, and memory-mapped when read (``torch.from_file``: pages load as batches touch
them); an in-memory split's are then moved to its device. Each kind (logits, hidden) is a
cached artifact (kdsweep.core.cache) whose sealed header holds the rows' shape and
SHA-256, checked on every read with the shape this teacher gives on these inputs; rows
that fail are recomputed, with one warning.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kdsweep.core.cache import cached_artifact
from kdsweep.core.files import atomic_write, file_hash, stable_hash
from kdsweep.core.integrity import content_digest
from kdsweep.data import ImageSplit
from kdsweep.nets import FeatureNet, pool_hidden
from kdsweep.training.batches import TeacherSource, batches_of

KINDS = ("logits", "hidden")
# 256 images a batch, not more: DeepNN's first activations are 0.5 MB per 32x32 image,
# so a batch of 1024 alone held ~1.4 GB at its peak, for no speed gained on a CPU.
BATCH = 256


def cached_source(
    model: FeatureNet,
    teacher_key: str,
    split: str,
    inputs: torch.Tensor | ImageSplit,
    cache_dir: str | Path,
    need_logits: bool,
    need_hidden: bool,
    pool_kernel: int = 1,
) -> TeacherSource:
    """A TeacherSource over precomputed outputs, computing and caching what is missing.
    Each kind needed is its own artifact: a loss that needs both (none of kdsweep's)
    pays a second pass over the split the first time."""
    key = stable_hash({"teacher": teacher_key, "split": split, "inputs": inputs_digest(inputs)})
    base = Path(cache_dir) / "teacher_outputs" / f"{split}-{key}"
    shapes = _expected_shapes(model, inputs)
    wanted = [kind for kind, on in zip(KINDS, (need_logits, need_hidden), strict=True) if on]
    outputs = {kind: _cached_rows(model, inputs, base, kind, shapes[kind]) for kind in wanted}
    logits, hidden = outputs.get("logits"), outputs.get("hidden")
    if hidden is not None and pool_kernel > 1:  # pooled: a copy, pool_kernel times smaller
        hidden = pool_hidden(hidden, pool_kernel)
    if isinstance(inputs, torch.Tensor):  # indexed on the split's device, batch by batch
        logits, hidden = (None if t is None else t.to(inputs.device) for t in (logits, hidden))
    return TeacherSource(logits=logits, hidden=hidden)


def inputs_digest(inputs: torch.Tensor | ImageSplit) -> str:
    """What a teacher's outputs on ``inputs`` are computed from, besides the teacher: the
    images as the teacher sees them. A tensor's bytes (0.26 s for CIFAR's training split);
    a streamed split's files' content digest and the statistics it is normalized with."""
    if isinstance(inputs, ImageSplit):
        return stable_hash({"files": inputs.content, "mean": inputs.mean, "std": inputs.std})
    return content_digest(inputs)


@torch.no_grad()
def _expected_shapes(model: FeatureNet, inputs: torch.Tensor | ImageSplit) -> dict[str, list[int]]:
    """The shapes this teacher's outputs on ``inputs`` have: one image tells."""
    model.eval()
    logits, hidden = model.forward_with_hidden(inputs[:1])
    n = len(inputs)
    return {"logits": [n, *logits.shape[1:]], "hidden": [n, *hidden.shape[1:]]}


def _cached_rows(
    model: FeatureNet,
    inputs: torch.Tensor | ImageSplit,
    base: Path,
    kind: str,
    shape: list[int],
) -> torch.Tensor:
    """The teacher's ``kind`` outputs on ``inputs``, from the cache or computed now."""
    rows = base.with_name(f"{base.name}-{kind}.f32")

    def compute() -> dict[str, Any]:
        digest = hashlib.sha256()
        with atomic_write(rows) as handle:
            for batch in _output_batches(model, inputs, kind):
                data = memoryview(batch.numpy()).cast("B")
                handle.write(data)
                digest.update(data)
        return {"shape": shape, "rows_sha256": digest.hexdigest()}

    def mapped(header: dict[str, Any]) -> torch.Tensor:
        """The rows, memory-mapped, once their bytes match the sealed header's checksum
        and this teacher's output shape."""
        if header["shape"] != shape:
            raise ValueError(f"outputs of shape {header['shape']}, this teacher gives {shape}")
        if file_hash(rows, length=64) != header["rows_sha256"]:
            raise ValueError(f"{rows.name} does not match its checksum")
        size = math.prod(shape)
        return torch.from_file(str(rows), shared=False, size=size, dtype=torch.float32).view(shape)

    outputs, _ = cached_artifact(
        base.with_name(f"{base.name}-{kind}.pt"), compute, mapped, "teacher-output cache"
    )
    return outputs


@torch.no_grad()
def _output_batches(
    model: FeatureNet, inputs: torch.Tensor | ImageSplit, kind: str
) -> Iterator[torch.Tensor]:
    """The teacher's ``kind`` outputs on ``inputs``, in sample order, as float32 CPU
    batches."""
    model.eval()
    for _, batch in batches_of(inputs, BATCH):
        logits, hidden = model.forward_with_hidden(batch)
        yield (logits if kind == "logits" else hidden).float().cpu().contiguous()


def live_source(model: FeatureNet, pool_kernel: int = 1) -> TeacherSource:
    model.eval()
    return TeacherSource(model=model, pool_kernel=pool_kernel)
