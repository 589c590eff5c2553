"""Row f of the benchmark: the GPU levers, measured on a GPU only.

Epochs through ``fit`` with the trainer's GPU switches: fp32, then bf16 autocast +
channels_last, then the same with ``torch.compile``; for two workloads: the cached KD epoch
of row a (LightNN student, batch 128) and the teacher's CE training (DeepNN, batch 512).
Each variant trains one model: a full warm-up epoch first (compilation, autotuning and
the smaller last batch stay out of the timings), then timed epochs.

It also counts host synchronisations during a fit with CUDA's sync debug mode: the loop
is meant to sync once per epoch (the epoch's loss) plus the val pass, never per batch.
"""

from __future__ import annotations

import statistics
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch

from _kdsweep_api import (
    CrossEntropy,
    TensorSplits,
    TrainerConf,
    cached_source,
    deep_nn,
    fit,
)
from loops import BATCH, KD, LR, Progress, bench_trainer, make_models, timed

VARIANTS = {
    "fp32": {},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "bf16+channels_last+compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


# (label, what trains, batch size): the tutorial's student at its batch of 128, where a
# small model is bound by kernel launches, and the teacher at 512, where the math shows.
WORKLOADS = (("student", "LightNN, KD from cached outputs", 128), ("teacher", "DeepNN, CE", 512))


def measure_gpu_levers(
    data: TensorSplits, device: torch.device, repeats: int, progress: Progress
) -> dict[str, float]:
    """Images/s per variant for each workload, and host syncs per KD epoch."""
    if device.type != "cuda":
        raise RuntimeError("row f measures the GPU levers: run it with --device cuda")
    models = make_models(data, device)
    kd, ce = KD, CrossEntropy()
    n = len(data.train_x)
    with tempfile.TemporaryDirectory(prefix="kdsweep-bench-cache-") as cache_dir:
        train_src = cached_source(
            models.teacher, "bench-teacher", "train", data.train_x, cache_dir, True, False
        )
        val_src = cached_source(
            models.teacher, "bench-teacher", "val", data.val_x, cache_dir, True, False
        )

    def epoch(label: str, model: torch.nn.Module, trainer: TrainerConf) -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        sources = (train_src, val_src) if label == "student" else (None, None)
        fit(
            model, kd if label == "student" else ce, optimizer, data.train_x, data.train_y,
            data.val_x, data.val_y, trainer, *sources,
        )  # fmt: skip

    def fresh(label: str) -> torch.nn.Module:
        if label == "student":
            return models.student(data, device)
        return deep_nn(data.input_shape, data.num_classes).to(device)

    figures: dict[str, float] = {"images": float(n), "repeats": float(repeats)}
    for label, _, batch in WORKLOADS:
        for name, switches in VARIANTS.items():
            trainer = replace(bench_trainer(device), batch_size=batch, **switches)
            model = fresh(label)
            epoch(label, model, trainer)  # warm-up
            times = [
                timed(device, lambda w=label, m=model, t=trainer: epoch(w, m, t))
                for _ in range(repeats)
            ]
            key = f"{label}_{name}_images_per_s"
            figures[key] = n / statistics.median(times)
            progress(f"f: {label} (batch {batch}) {name}: {figures[key]:,.0f} img/s")
        fp32, last = figures[f"{label}_fp32_images_per_s"], "bf16+channels_last"
        for short, name in (("bf16", last), ("compile", f"{last}+compile")):
            figures[f"{label}_speedup_{short}"] = figures[f"{label}_{name}_images_per_s"] / fp32

    epochs = 2
    syncs = count_host_syncs(
        lambda: epoch("student", fresh("student"), bench_trainer(device, epochs))
    )
    figures["host_syncs_per_epoch"] = syncs / epochs
    figures["batches_per_epoch"] = float(-(-n // BATCH))
    return figures


def count_host_syncs(work: Callable[[], object]) -> int:
    """How many synchronising CUDA calls ``work()`` makes (CUDA's sync debug mode warns on
    each one; the warnings are counted, not shown)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchronizing" in str(w.message) for w in caught)
