"""Rows a and b of the benchmark: training epochs timed side by side, in process.

a. A KD epoch the kdsweep way (teacher outputs computed once and cached, data as one
   tensor indexed by a permutation, ``kdsweep.train.fit``) against the seed notes' way
   (a DataLoader over per-image tensors, the teacher's forward pass on every batch, the
   softmax().log() formula, ``loss.item()`` every batch).
b. ``fit`` with plain CE against a bare PyTorch loop over the same tensors, the same
   permutation indexing and the same optimizer: what the framework itself costs.

Both sides of a comparison get the same data, the same initial weights and the same
number of images; repeats alternate A, B, A, B after a warm-up, and the median is taken.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _kdsweep_api import (
    CrossEntropy,
    KnowledgeDistillation,
    SeedNet,
    TeacherSource,
    TensorSplits,
    TrainerConf,
    cached_source,
    deep_nn,
    fit,
    light_nn,
)

Progress = Callable[[str], None]

# The seed tutorial's KD recipe: Adam lr 1e-3, batch 128, T=2, weights 0.25 / 0.75.
LR = 1e-3
BATCH = 128
KD = KnowledgeDistillation(temperature=2.0, soft_target_weight=0.25, ce_weight=0.75)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], object]) -> float:
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


def bench_trainer(device: torch.device, epochs: int = 1) -> TrainerConf:
    return TrainerConf(
        epochs=epochs, batch_size=BATCH, device=str(device), progress="none", objective="best"
    )


@dataclass
class Models:
    teacher: SeedNet
    student_init: dict[str, torch.Tensor]

    def student(self, data: TensorSplits, device: torch.device) -> SeedNet:
        model = light_nn(data.input_shape, data.num_classes).to(device)
        model.load_state_dict(self.student_init)
        return model


def make_models(data: TensorSplits, device: torch.device, seed: int = 0) -> Models:
    """A randomly initialised DeepNN teacher (its weights do not change the cost of a
    forward pass) and one LightNN initialisation that every timed student starts from."""
    torch.manual_seed(seed)
    teacher = deep_nn(data.input_shape, data.num_classes).to(device).eval()
    student = light_nn(data.input_shape, data.num_classes).to(device)
    return Models(teacher, copy.deepcopy(student.state_dict()))


# --- a. the seed notes' KD loop ---------------------------------------------------------


def seed_loader(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> DataLoader:
    """The seed's input pipeline: per-image tensors, collated into batches of 128 on the
    host. num_workers=0: on a 2-core machine worker processes only compete with the
    training threads (the tutorial's num_workers=2 is slower here, not faster)."""
    dataset = TensorDataset(x.cpu(), y.cpu())
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=generator)


def seed_kd_epoch(
    teacher: nn.Module,
    student: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> float:
    """One epoch of the seed's ``train_knowledge_distillation``, as written there."""
    T = KD.temperature
    ce_loss = nn.CrossEntropyLoss()
    teacher.eval()
    student.train()
    running_loss = 0.0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        student_logits = student(inputs)
        soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
        soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
        soft_targets_loss = (
            torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * T**2
        )
        label_loss = ce_loss(student_logits, labels)
        loss = KD.soft_target_weight * soft_targets_loss + KD.ce_weight * label_loss
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return running_loss / len(loader)


def measure_kd_epoch(
    data: TensorSplits, device: torch.device, repeats: int, progress: Progress
) -> dict[str, float]:
    """Row a: images/s of one KD epoch, kdsweep's cached path vs the seed's loop."""
    models = make_models(data, device)
    n = len(data.train_x)
    with tempfile.TemporaryDirectory(prefix="kdsweep-bench-cache-") as cache_dir:
        progress(f"a: computing the teacher's outputs once ({n + len(data.val_x)} images)")
        started = time.perf_counter()
        train_src = cached_source(
            models.teacher, "bench-teacher", "train", data.train_x, cache_dir, True, False
        )
        val_src = cached_source(
            models.teacher, "bench-teacher", "val", data.val_x, cache_dir, True, False
        )
        _sync(device)
        cache_seconds = time.perf_counter() - started

    objective = KD

    def kdsweep_epoch(x: torch.Tensor, y: torch.Tensor, source: TeacherSource) -> None:
        student = models.student(data, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=LR)
        fit(
            student, objective, optimizer, x, y, data.val_x, data.val_y,
            bench_trainer(device), source, val_src,
        )  # fmt: skip

    def seed_epoch(x: torch.Tensor, y: torch.Tensor) -> None:
        student = models.student(data, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=LR)
        seed_kd_epoch(models.teacher, student, seed_loader(x, y), optimizer, device)

    # Warm-up on a slice: first-call allocations and kernel selection stay out of the timings.
    m = min(n, 4 * BATCH)
    assert train_src.logits is not None
    warm_src = TeacherSource(logits=train_src.logits[:m])
    kdsweep_epoch(data.train_x[:m], data.train_y[:m], warm_src)
    seed_epoch(data.train_x[:m], data.train_y[:m])

    seed_times, kd_times = [], []
    for repeat in range(1, repeats + 1):
        # Alternate which side goes first, so a slow drift on a shared machine hits both.
        sides = [
            (seed_times, lambda: seed_epoch(data.train_x, data.train_y)),
            (kd_times, lambda: kdsweep_epoch(data.train_x, data.train_y, train_src)),
        ]
        for times, work in sides if repeat % 2 else sides[::-1]:
            times.append(timed(device, work))
        progress(
            f"a: repeat {repeat}/{repeats}: seed {n / seed_times[-1]:,.0f} img/s,"
            f" kdsweep {n / kd_times[-1]:,.0f} img/s"
        )
    seed_s, kd_s = statistics.median(seed_times), statistics.median(kd_times)
    return {
        "images": float(n),
        "repeats": float(repeats),
        "kdsweep_images_per_s": n / kd_s,
        "seed_images_per_s": n / seed_s,
        "speedup": seed_s / kd_s,
        "speedup_median_of_pairs": statistics.median(
            s / k for s, k in zip(seed_times, kd_times, strict=True)
        ),
        "speedup_of_minimums": min(seed_times) / min(kd_times),
        "kdsweep_epoch_s": kd_s,
        "seed_epoch_s": seed_s,
        "teacher_cache_s": cache_seconds,
        # What a single epoch costs if it also pays for the one-time teacher pass.
        "speedup_incl_cache_1_epoch": seed_s / (kd_s + cache_seconds),
    }


# --- b. fit vs a bare loop --------------------------------------------------------------


@torch.no_grad()
def _bare_eval(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(x), batch):
        logits = model(x[start : start + batch])
        loss_sum += F.cross_entropy(logits, y[start : start + batch], reduction="sum")
        correct += (logits.argmax(dim=1) == y[start : start + batch]).sum()
    model.train()
    return 100.0 * correct.item() / len(x)


def bare_ce_fit(
    model: nn.Module, data: TensorSplits, trainer: TrainerConf, optimizer: torch.optim.Optimizer
) -> float:
    """What a careful hand-written loop does for ``trainer.epochs`` epochs: permutation
    indexing, one host sync per epoch, a validation pass after each epoch, keep the best."""
    x, y = data.train_x, data.train_y
    n, device = len(x), x.device
    generator = torch.Generator(device=device).manual_seed(trainer.seed)
    best_acc, best_state = -1.0, None
    for epoch in range(1, trainer.epochs + 1):
        model.train()
        order = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, n, trainer.batch_size):
            index = order[start : start + trainer.batch_size]
            xb, yb = x.index_select(0, index), y.index_select(0, index)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
        _ = loss_sum.item() / n
        acc = _bare_eval(model, data.val_x, data.val_y, trainer.eval_batch_size)
        if acc > best_acc:
            best_acc = acc
            # As fit does: copy the weights only if a later epoch could overwrite them.
            best_state = copy.deepcopy(model.state_dict()) if epoch < trainer.epochs else None
    if best_state is not None:
        model.load_state_dict(best_state)
    return best_acc


def measure_overhead(
    data: TensorSplits, device: torch.device, repeats: int, epochs: int, progress: Progress
) -> dict[str, float]:
    """Row b: seconds per CE training run of ``epochs`` epochs, fit vs bare loop."""
    models = make_models(data, device)
    trainer = bench_trainer(device, epochs)
    objective = CrossEntropy()

    def run_fit(d: TensorSplits, conf: TrainerConf) -> None:
        student = models.student(data, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=LR)
        fit(student, objective, optimizer, d.train_x, d.train_y, d.val_x, d.val_y, conf)

    def run_bare(d: TensorSplits, conf: TrainerConf) -> None:
        student = models.student(data, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=LR)
        bare_ce_fit(student, d, conf, optimizer)

    m = min(len(data.train_x), 4 * BATCH)
    warm = TensorSplits(
        data.train_x[:m], data.train_y[:m], data.val_x, data.val_y,
        data.test_x, data.test_y, data.num_classes, data.fingerprint,
    )  # fmt: skip
    run_fit(warm, bench_trainer(device, 1))
    run_bare(warm, bench_trainer(device, 1))

    fit_times, bare_times = [], []
    for repeat in range(1, repeats + 1):
        # Alternate which side goes first, so a slow drift on a shared machine hits both.
        order = [("fit", run_fit), ("bare", run_bare)]
        if repeat % 2 == 0:
            order.reverse()
        for name, work in order:
            seconds = timed(device, lambda w=work: w(data, trainer))
            (fit_times if name == "fit" else bare_times).append(seconds)
        progress(
            f"b: repeat {repeat}/{repeats}: fit {fit_times[-1]:.3f} s,"
            f" bare {bare_times[-1]:.3f} s ({epochs} epoch(s) each)"
        )
    fit_s, bare_s = statistics.median(fit_times), statistics.median(bare_times)
    # The median of per-pair ratios is less sensitive to drift than the ratio of medians.
    pair_ratio = statistics.median(f / b for f, b in zip(fit_times, bare_times, strict=True))
    return {
        "images": float(len(data.train_x)),
        "epochs": float(epochs),
        "repeats": float(repeats),
        "fit_s": fit_s,
        "bare_s": bare_s,
        "ratio": fit_s / bare_s,
        "ratio_median_of_pairs": pair_ratio,
        # Noise on a shared machine only ever adds time: the fastest runs are the cleanest.
        "ratio_of_minimums": min(fit_times) / min(bare_times),
    }
