"""Row h of the benchmark: a KD epoch over an image folder, streamed from disk.

A generated ImageFolder (3x32x32 PNGs: class patterns plus noise) is written to a
temporary folder. On its images, one KD epoch (LightNN student, DeepNN teacher, as in
row a) three ways, repeats alternated after a warm-up, medians taken:

- streamed: ``data=imagefolder`` (DataLoader workers decode; the teacher's outputs on the
  un-augmented images cached by sample index in a memory-mapped file) through ``fit``;
- seed loop: the seed notes' KD loop over a DataLoader of the same folder, the teacher's
  forward pass on every batch (row a's ``seed_kd_epoch``);
- in memory: the same images decoded once into one tensor, with cached teacher outputs
  (row a's kdsweep path).

And the streamed run's peak RSS growth in a fresh interpreter against the decoded
training split's size as the in-memory path holds it (float32). A warm-up fit on a few
random in-memory images first holds what every run holds whatever the data's size (torch,
torchvision, an eval batch's activations: ~150 MB at LightNN's batch of 1024); the growth
is the larger of the peak's rise above the warm-up's peak and the RSS the run keeps.

Run as ``python benchmarks/streamed.py --root DIR --cache-dir DIR`` for the memory figure
alone; it prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from _kdsweep_api import (
    ImageFolderData,
    TeacherSource,
    cached_source,
    deep_nn,
    fit,
    light_nn,
)
from loops import BATCH, KD, LR, Progress, bench_trainer, seed_kd_epoch, timed
from memory import _peak, _rss_now, _warm_up, json_line_of

CLASSES = 10
TEACHER_KEY = "bench-streamed-teacher"


def write_folder(root: Path, images: int, seed: int = 0) -> Path:
    """``root/train/<class>/<i>.png`` (``images`` of them) and a test/ folder a tenth as
    large: smooth class patterns with a random gain plus noise, as uint8 RGB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    patterns = rng.uniform(40, 215, size=(CLASSES, 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)
    for split, count in (("train", images), ("test", max(CLASSES, images // 10))):
        labels = np.arange(count) % CLASSES
        for label in range(CLASSES):
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(labels):
            gain = rng.uniform(0.6, 1.4)
            pixels = patterns[label] * gain + rng.normal(0, 25, size=(32, 32, 3))
            path = root / split / f"class{label}" / f"{i}.png"
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return root


def _streamed_data(root: Path, cache_dir: Path, workers: int):  # noqa: ANN202
    return ImageFolderData(root=str(root), workers=workers, cache_dir=str(cache_dir)).load()


def measure_streamed(
    root: Path, cache_dir: Path, workers: int, repeats: int, progress: Progress
) -> dict[str, float]:
    """Images/s of one KD epoch: streamed vs seed loop vs in memory, on the same images."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    device = torch.device("cpu")
    data = _streamed_data(root, cache_dir, workers)
    n = len(data.train_y)
    torch.manual_seed(0)
    teacher = deep_nn(data.input_shape, data.num_classes).eval()
    student_init = light_nn(data.input_shape, data.num_classes).state_dict()
    progress(f"h: caching the teacher's outputs by index ({n + len(data.val_y)} images)")
    streamed = {
        split: cached_source(teacher, TEACHER_KEY, split, x, cache_dir, True, False)
        for split, x in (("train", data.train_x), ("val", data.val_x))
    }
    progress(f"h: decoding the same images into memory ({n} training images)")
    train_x, val_x = data.train_x[:n], data.val_x[: len(data.val_y)]
    # The same outputs, in RAM: the in-memory path's cached tensors.
    in_memory = {split: TeacherSource(logits=src.logits.clone()) for split, src in streamed.items()}
    # The seed's pipeline on the same files: per-image decode, ToTensor, Normalize.
    seed_set = datasets.ImageFolder(
        str(root / "train"),
        transforms.Compose(
            [
                transforms.ToTensor(),
                transforms.Normalize(
                    [m / 255 for m in data.input_mean], [s / 255 for s in data.input_std]
                ),
            ]
        ),
    )
    seed_set = torch.utils.data.Subset(seed_set, data.train_x.dataset.indices)

    def student() -> torch.nn.Module:
        model = light_nn(data.input_shape, data.num_classes)
        model.load_state_dict(student_init)
        return model

    def streamed_epoch() -> None:
        model = student()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        fit(
            model, KD, optimizer, data.train_x, data.train_y, data.val_x, data.val_y,
            bench_trainer(device), streamed["train"], streamed["val"],
        )  # fmt: skip

    def memory_epoch() -> None:
        model = student()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        fit(
            model, KD, optimizer, train_x, data.train_y, val_x, data.val_y,
            bench_trainer(device), in_memory["train"], in_memory["val"],
        )  # fmt: skip

    def seed_epoch() -> None:
        model = student()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        generator = torch.Generator().manual_seed(0)
        loader = DataLoader(
            seed_set, batch_size=BATCH, shuffle=True, generator=generator, num_workers=workers
        )
        seed_kd_epoch(teacher, model, loader, optimizer, device)

    # Warm-up on a slice: first-call allocations and kernel selection stay out of the timings.
    m = 4 * BATCH
    warm = in_memory["train"].logits
    fit(
        student(), KD, torch.optim.Adam(student().parameters(), lr=LR), train_x[:m],
        data.train_y[:m], val_x, data.val_y, bench_trainer(device),
        TeacherSource(logits=warm[:m]), in_memory["val"],
    )  # fmt: skip
    sides = {"streamed": streamed_epoch, "seed": seed_epoch, "in_memory": memory_epoch}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(1, repeats + 1):
        # Rotate which side goes first, so a slow drift on a shared machine hits all.
        names = list(sides)
        names = names[repeat % 3 :] + names[: repeat % 3]
        for name in names:
            times[name].append(timed(device, sides[name]))
        progress(
            f"h: repeat {repeat}/{repeats}: "
            + ", ".join(f"{name} {n / times[name][-1]:,.0f} img/s" for name in sides)
        )
    per_s = {name: n / statistics.median(t) for name, t in times.items()}
    return {
        "images": float(n),
        "workers": float(workers),
        "repeats": float(repeats),
        "streamed_images_per_s": per_s["streamed"],
        "seed_images_per_s": per_s["seed"],
        "in_memory_images_per_s": per_s["in_memory"],
        "vs_seed": per_s["streamed"] / per_s["seed"],
        "vs_in_memory": per_s["streamed"] / per_s["in_memory"],
    }


def _warm_up_fit(device: torch.device) -> None:
    """What any run costs whatever the data's size, kept out of the growth: torchvision's
    import and a fit on a few random images, whose eval pass holds a full eval batch's
    activations (the same in memory or streamed)."""
    import torchvision.transforms.v2  # noqa: F401

    trainer = bench_trainer(device)
    n = 2 * trainer.eval_batch_size
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, CLASSES, (n,))
    source = TeacherSource(logits=torch.randn(n, CLASSES))
    model = light_nn((3, 32, 32), CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    fit(model, KD, optimizer, x, y, x, y, trainer, source, source)


def streamed_trial(root: Path, cache_dir: Path, workers: int) -> dict[str, float]:
    """One streamed KD epoch in this (fresh) interpreter: peak RSS growth vs the decoded
    training split's size (float32, what the in-memory path holds)."""
    device = torch.device("cpu")
    _warm_up(device)
    _warm_up_fit(device)
    # Growth above the warm-up's peak, not its current RSS: an eval batch's activations
    # (LightNN, 1024 images: ~150 MB) come back in every run, whatever the data's size.
    baseline, warm_rss = _peak(), _rss_now()
    data = _streamed_data(root, cache_dir, workers)
    torch.manual_seed(0)
    teacher = deep_nn(data.input_shape, data.num_classes).eval()
    model = light_nn(data.input_shape, data.num_classes)
    sources = [
        cached_source(teacher, TEACHER_KEY, split, x, cache_dir, True, False)
        for split, x in (("train", data.train_x), ("val", data.val_x))
    ]
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    fit(
        model, KD, optimizer, data.train_x, data.train_y, data.val_x, data.val_y,
        bench_trainer(device), *sources,
    )  # fmt: skip
    peak, end_rss = _peak(), _rss_now()
    # The larger of the two: a transient above the warm-up's peak, or what the run keeps.
    growth = max(peak - baseline, end_rss - warm_rss)
    decoded = len(data.train_y) * 3 * 32 * 32 * 4
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "growth_bytes": float(growth),
        "decoded_bytes": float(decoded),
        "ratio": growth / decoded,
        "peak_above_warm_up_peak_bytes": float(peak - baseline),
        "rss_kept_bytes": float(end_rss - warm_rss),
        "warm_up_peak_rss_bytes": float(baseline),
        "warm_up_rss_bytes": float(warm_rss),
        "largest_worker_peak_rss_bytes": float(workers_peak),
    }


def memory_in_subprocess(
    root: Path, cache_dir: Path, workers: int, timeout: float
) -> dict[str, float]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--root", str(root),
        "--cache-dir", str(cache_dir), "--workers", str(workers),
    ]  # fmt: skip
    return json_line_of(command, timeout, "streamed memory subprocess")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(streamed_trial(Path(args.root), Path(args.cache_dir), args.workers)))


if __name__ == "__main__":
    main()
