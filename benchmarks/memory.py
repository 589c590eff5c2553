"""Row e of the benchmark: peak memory of a cached KD trial vs the data set's size.

torch allocates outside Python's heap (tracemalloc sees none of it), so the figure is the
process's peak resident set (VmHWM in /proc/self/status), taken in a fresh subprocess so
that nothing the benchmark did before counts. The peak is reset (``clear_refs`` 5) after
the imports, so what is measured is the growth caused by the trial: loading the data,
building the models, loading (or computing) the teacher's outputs, one KD epoch. (A toy
forward/backward pass before the reset keeps torch's one-time start-up out of it.)

Run as ``python benchmarks/memory.py --size N --cache-dir DIR``; it prints one JSON object
on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from _kdsweep_api import (
    SyntheticData,
    cached_source,
    deep_nn,
    fit,
    light_nn,
    load_splits,
)
from loops import KD, LR, bench_trainer

KIB = 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_now() -> int:
    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss * KIB
    import resource  # no /proc: fall back to the lifetime peak, which is all we can get

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def _peak() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * KIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def _warm_up(device: torch.device) -> None:
    """Start torch's per-process machinery (kernels, thread pools, allocator arenas) on a
    toy batch: a fixed cost of any torch process, not something that grows with the data."""
    model = light_nn((3, 32, 32), 10).to(device)
    model(torch.zeros(2, 3, 32, 32, device=device)).sum().backward()


def trial(size: int, test_size: int, cache_dir: str, device_name: str) -> dict[str, float]:
    """Load synthetic data, build teacher and student, get the cached teacher outputs
    (computing them if the cache is empty), train one KD epoch; report memory figures."""
    device = torch.device(device_name)
    _warm_up(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = _rss_now()
    reset = _reset_peak()
    if not reset:
        baseline = _peak()  # growth is then measured from the lifetime peak so far

    data = load_splits(SyntheticData(size=size, test_size=test_size)).to(device)
    after_load_peak = _peak()
    cache_present = any(Path(cache_dir).glob("teacher_outputs/train-*-logits.pt"))
    torch.manual_seed(0)
    teacher = deep_nn(data.input_shape, data.num_classes).to(device).eval()
    student = light_nn(data.input_shape, data.num_classes).to(device)
    train_src = cached_source(
        teacher, "bench-memory-teacher", "train", data.train_x, cache_dir, True, False
    )
    val_src = cached_source(
        teacher, "bench-memory-teacher", "val", data.val_x, cache_dir, True, False
    )
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    fit(
        student, KD, optimizer, data.train_x, data.train_y,
        data.val_x, data.val_y, bench_trainer(device), train_src, val_src,
    )  # fmt: skip
    peak = _peak()
    out = {
        "data_nbytes": float(data.nbytes),
        "baseline_rss_bytes": float(baseline),
        "peak_rss_bytes": float(peak),
        "growth_bytes": float(peak - baseline),
        "load_growth_bytes": float(after_load_peak - baseline),
        "ratio": (peak - baseline) / data.nbytes,
        "peak_reset": float(reset),
        "cache_was_present": float(cache_present),
    }
    if device.type == "cuda":
        out["cuda_peak_allocated_bytes"] = float(torch.cuda.max_memory_allocated(device))
    return out


def measure_in_subprocess(
    size: int, test_size: int, cache_dir: str | Path, device: str, timeout: float
) -> dict[str, float]:
    """Run ``trial`` in a fresh interpreter; its JSON line is the result."""
    command = [
        sys.executable, str(Path(__file__).resolve()),
        "--size", str(size), "--test-size", str(test_size),
        "--cache-dir", str(cache_dir), "--device", device,
    ]  # fmt: skip
    return json_line_of(command, timeout, "memory subprocess")


def json_line_of(command: list[str], timeout: float, what: str) -> dict[str, float]:
    """Run a measuring script in a fresh interpreter (its own peak RSS); the JSON object
    on its last stdout line is the result."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{what} exited {done.returncode}: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = trial(args.size, args.test_size, args.cache_dir, args.device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
