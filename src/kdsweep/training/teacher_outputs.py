"""Precomputed outputs of a frozen teacher, cached on disk per (teacher, data, split).

A frozen teacher (eval mode: dropout off) on un-augmented data is a pure function of the
image, so its logits and hidden features can be computed once and indexed by batch in
every epoch, every trial and every process. The key is content-addressed: the teacher's
key (its weights) and the content of the inputs it ran on, so that another split of the
same data (``data.split_seed``) or changed images are other outputs, whatever the teacher
key covers (a user's checkpoint's key is its file's hash alone). Each file is sealed with a
checksum of its tensor and checked against it and against the shape this teacher gives on
these inputs when read; a file that fails is recomputed, with one warning.

A streamed split's outputs are not held in RAM: they are written batch by batch as raw
float32 rows (row i: sample i), memory-mapped when read, and verified through a sealed
header that holds their shape and the SHA-256 of their bytes.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import ExitStack
from pathlib import Path

import torch

from kdsweep.core.files import atomic_torch_save, atomic_write, file_lock, stable_hash
from kdsweep.core.integrity import content_digest, sealed, verified
from kdsweep.core.signals import check_interrupt
from kdsweep.data import ImageSplit
from kdsweep.nets import FeatureNet, pool_hidden
from kdsweep.training.batches import TeacherSource

log = logging.getLogger(__name__)


@torch.no_grad()
def compute_outputs(
    model: FeatureNet, inputs: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    # 256, not more: DeepNN's first activations are 0.5 MB per 32x32 image, so a batch of
    # 1024 alone held ~1.4 GB at its peak, for no speed gained on a CPU.
    model.eval()
    logits, hidden = [], []
    for start in range(0, len(inputs), batch_size):
        check_interrupt()
        out_logits, out_hidden = model.forward_with_hidden(inputs[start : start + batch_size])
        logits.append(out_logits.float())
        hidden.append(out_hidden.float())
    return torch.cat(logits), torch.cat(hidden)


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
    """A TeacherSource over precomputed outputs, computing and caching what is missing."""
    if isinstance(inputs, ImageSplit):
        return _mapped_source(
            model, teacher_key, split, inputs, cache_dir, need_logits, need_hidden, pool_kernel
        )
    key = stable_hash({"teacher": teacher_key, "split": split, "inputs": inputs_digest(inputs)})
    base = Path(cache_dir) / "teacher_outputs" / f"{split}-{key}"
    wanted = {"logits": need_logits, "hidden": need_hidden}
    paths = {kind: base.with_name(f"{base.name}-{kind}.pt") for kind, on in wanted.items() if on}
    loaded: dict[str, torch.Tensor] = {}
    with file_lock(base.with_name(base.name + ".lock")):
        expected = (
            _expected_shapes(model, inputs) if any(p.is_file() for p in paths.values()) else {}
        )
        for kind, path in paths.items():
            if path.is_file():
                try:
                    loaded[kind] = _read_outputs(path, expected[kind])
                except Exception as exc:  # a cache entry is disposable: recompute it
                    log.warning("teacher-output cache %s unusable (%s); recomputing", path, exc)
        missing = [kind for kind in paths if kind not in loaded]
        if missing:
            logits, hidden = compute_outputs(model, inputs)
            fresh = {"logits": logits, "hidden": hidden}
            for kind in missing:
                loaded[kind] = fresh[kind].cpu()
                atomic_torch_save(sealed({"outputs": loaded[kind]}), paths[kind])
            log.info("teacher outputs for %s computed once and cached (%s)", split, base.parent)
    device = inputs.device
    logits = loaded.get("logits")
    hidden = loaded.get("hidden")
    return TeacherSource(
        logits=None if logits is None else logits.to(device),
        hidden=None if hidden is None else pool_hidden(hidden, pool_kernel).to(device),
    )


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


def _read_outputs(path: Path, shape: list[int]) -> torch.Tensor:
    outputs = verified(torch.load(path, map_location="cpu", weights_only=True))["outputs"]
    if not isinstance(outputs, torch.Tensor) or list(outputs.shape) != shape:
        found = list(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"outputs of shape {found}, this teacher gives {shape}")
    return outputs


def _mapped_source(
    model: FeatureNet,
    teacher_key: str,
    split: str,
    inputs: ImageSplit,
    cache_dir: str | Path,
    need_logits: bool,
    need_hidden: bool,
    pool_kernel: int,
) -> TeacherSource:
    """cached_source for a streamed split: the outputs stay in memory-mapped files."""
    key = stable_hash(
        {"teacher": teacher_key, "split": split, "inputs": inputs_digest(inputs), "rows": "f32"}
    )
    base = Path(cache_dir) / "teacher_outputs" / f"{split}-{key}"
    wanted = [kind for kind, on in (("logits", need_logits), ("hidden", need_hidden)) if on]
    mapped: dict[str, torch.Tensor] = {}
    with file_lock(base.with_name(base.name + ".lock")):
        expected = _expected_shapes(model, inputs)
        for kind in wanted:
            if _header(base, kind).is_file():
                try:
                    mapped[kind] = _map_rows(base, kind, expected[kind])
                except Exception as exc:  # a cache entry is disposable: recompute it
                    log.warning("teacher-output cache %s unusable (%s); recomputing", base, exc)
        missing = [kind for kind in wanted if kind not in mapped]
        if missing:
            _write_rows(model, inputs, base, missing, expected)
            mapped.update({kind: _map_rows(base, kind, expected[kind]) for kind in missing})
            log.info("teacher outputs for %s computed once and cached (%s)", split, base.parent)
    hidden = mapped.get("hidden")
    if hidden is not None and pool_kernel > 1:  # pooled: a copy, pool_kernel times smaller
        hidden = pool_hidden(hidden, pool_kernel)
    return TeacherSource(logits=mapped.get("logits"), hidden=hidden)


def _header(base: Path, kind: str) -> Path:
    return base.with_name(f"{base.name}-{kind}.pt")


def _rows(base: Path, kind: str) -> Path:
    return base.with_name(f"{base.name}-{kind}.f32")


@torch.no_grad()
def _write_rows(
    model: FeatureNet,
    inputs: ImageSplit,
    base: Path,
    kinds: list[str],
    shapes: dict[str, list[int]],
) -> None:
    """The teacher's outputs on ``inputs``, in sample order, streamed to raw files."""
    model.eval()
    digests = {kind: hashlib.sha256() for kind in kinds}
    with ExitStack() as files:
        handles = {kind: files.enter_context(atomic_write(_rows(base, kind))) for kind in kinds}
        for _, images in inputs.batches(256):
            logits, hidden = model.forward_with_hidden(images)
            fresh = {"logits": logits, "hidden": hidden}
            for kind in kinds:
                data = fresh[kind].float().cpu().contiguous().numpy().tobytes()
                handles[kind].write(data)
                digests[kind].update(data)
    for kind in kinds:  # the header last: rows without their header are never read
        header = {"shape": shapes[kind], "rows_sha256": digests[kind].hexdigest()}
        atomic_torch_save(sealed(header), _header(base, kind))


def _map_rows(base: Path, kind: str, shape: list[int]) -> torch.Tensor:
    """The cached rows, memory-mapped (pages load as batches touch them), once their bytes
    match the sealed header's checksum and this teacher's output shape."""
    header = verified(torch.load(_header(base, kind), map_location="cpu", weights_only=True))
    if header["shape"] != shape:
        raise ValueError(f"outputs of shape {header['shape']}, this teacher gives {shape}")
    path = _rows(base, kind)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != header["rows_sha256"]:
        raise ValueError(f"{path.name} does not match its checksum")
    size = math.prod(shape)
    return torch.from_file(str(path), shared=False, size=size, dtype=torch.float32).view(shape)


def live_source(model: FeatureNet, pool_kernel: int = 1) -> TeacherSource:
    model.eval()
    return TeacherSource(model=model, pool_kernel=pool_kernel)
