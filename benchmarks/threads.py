"""Row g of the benchmark: CPU threads for a tiny model, one against torch's default.

``trainer.threads=1`` against torch's default (``trainer.threads=0``): for ops this small,
handing work between threads can cost more than it saves, above all when other processes
hold the cores. This row times the same CE training run of the LightNN student on digits
with 1 thread and with torch's default, interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from _kdsweep_api import CrossEntropy, DigitsData, fit, light_nn, load_splits
from loops import LR, bench_trainer


def measure_threads(repeats: int, epochs: int, progress: Callable[[str], None]) -> dict:
    """Seconds per ``epochs``-epoch digits run with 1 thread and with torch's default."""
    data = load_splits(DigitsData())
    default_threads = torch.get_num_threads()
    trainer = bench_trainer(torch.device("cpu"), epochs)
    torch.manual_seed(0)
    init = light_nn(data.input_shape, data.num_classes).state_dict()

    def run(threads: int) -> float:
        torch.set_num_threads(threads)
        model = light_nn(data.input_shape, data.num_classes)
        model.load_state_dict(init)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        started = time.perf_counter()
        fit(model, CrossEntropy(), optimizer, data.train_x, data.train_y,
            data.val_x, data.val_y, trainer)  # fmt: skip
        return time.perf_counter() - started

    try:
        run(1), run(default_threads)  # warm-up
        one, default, ratios = [], [], []
        for repeat in range(1, repeats + 1):
            order = [1, default_threads] if repeat % 2 else [default_threads, 1]
            times = {threads: run(threads) for threads in order}
            one.append(times[1])
            default.append(times[default_threads])
            ratios.append(times[default_threads] / times[1])
            progress(f"g: repeat {repeat}/{repeats}: 1 thread {one[-1]:.3f} s,"
                     f" {default_threads} threads {default[-1]:.3f} s")  # fmt: skip
    finally:
        torch.set_num_threads(default_threads)
    return {
        "default_threads": default_threads,
        "one_thread_s": statistics.median(one),
        "default_threads_s": statistics.median(default),
        "speedup_median_of_pairs": statistics.median(ratios),
        "images_per_s_one_thread": epochs * len(data.train_x) / statistics.median(one),
    }
