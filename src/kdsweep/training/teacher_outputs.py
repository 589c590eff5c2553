"""Precomputed outputs of a frozen teacher, cached on disk per (teacher, data, split).

A frozen teacher (eval mode: dropout off) on un-augmented data is a pure function of the
image, so its logits and hidden features can be computed once and indexed by batch in
every epoch, every trial and every process. The key is content-addressed: the teacher's
key already covers its weights' recipe and data fingerprint. Each file is sealed with a
checksum of its tensor and checked against it and against the shape this teacher gives on
these inputs when read; a file that fails is recomputed, with one warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdsweep.core.files import atomic_torch_save, file_lock, stable_hash
from kdsweep.core.integrity import sealed, verified
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
        out_logits, out_hidden = model.forward_with_hidden(inputs[start : start + batch_size])
        logits.append(out_logits.float())
        hidden.append(out_hidden.float())
    return torch.cat(logits), torch.cat(hidden)


def cached_source(
    model: FeatureNet,
    teacher_key: str,
    split: str,
    inputs: torch.Tensor,
    cache_dir: str | Path,
    need_logits: bool,
    need_hidden: bool,
    pool_kernel: int = 1,
) -> TeacherSource:
    """A TeacherSource over precomputed outputs, computing and caching what is missing."""
    key = stable_hash({"teacher": teacher_key, "split": split, "n": len(inputs)})
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


@torch.no_grad()
def _expected_shapes(model: FeatureNet, inputs: torch.Tensor) -> dict[str, list[int]]:
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


def live_source(model: FeatureNet, pool_kernel: int = 1) -> TeacherSource:
    model.eval()
    return TeacherSource(model=model, pool_kernel=pool_kernel)
