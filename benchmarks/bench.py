"""The benchmark's entry point: kdsweep's performance claims, measured side by side in one run.

Run from a clone with kdsweep installed (``pip install -e .``); it is not part of the package:

    python benchmarks/bench.py                 # default sizes: about 5-10 minutes on a 2-core CPU
    python benchmarks/bench.py --smoke         # tiny sizes: checks that every figure is produced
    python benchmarks/bench.py --cifar-scale   # 50,000 synthetic CIFAR-shaped images (for a GPU)
    python benchmarks/bench.py --only ab --json bench.json

Rows (targets and measured figures: docs/performance.md):
  a  KD epoch images/s: cached teacher outputs + ``fit`` vs the seed notes' loop  >= 8x
  b  CE training time: ``fit`` vs a bare PyTorch loop on the same tensors          <= 1.10x
  c  KD sweep with the median pruner vs none: epochs trained, best val acc        <= 50%, -1 pt
  d  Hydra + Optuna + MLflow overhead per sweep trial (basic launcher)            < 1 s
  e  peak RSS growth of a cached KD trial / the data set's size                   (reported)
  f  GPU only: bf16 + channels_last (+ compile) vs fp32 img/s for the student (KD,
     batch 128) and the teacher (CE, batch 512); host syncs per KD epoch
  g  CPU: a digits run (8x8, LightNN) with 1 torch thread vs torch's default          (reported)
  i  a pruned 20-trial KD sweep on 2 CPU slots: hydra.sweeper.workers=2 (1 thread each)
     i1 wall time vs Hydra's joblib launcher, 2 jobs per batch (1 thread each)       >= 1.2x
     i2 slot utilization with workers: trial runs' time / (2 x the search's wall)   >= 0.9
     i3 wall time vs one sweep loop (workers=1, torch's default threads)          (reported)
  h  a generated ImageFolder of 3x32x32 PNGs (>= 20,000 by default), KD epoch img/s:
     h1 streamed (teacher outputs cached by index, memory-mapped) vs the seed loop  >= 3x
     h2 streamed vs the same images decoded into memory                            >= 0.5x
     h3 the streamed run's peak RSS growth / the decoded training split            < 0.25
  j  the accuracy-vs-size search (hparams_search=kd_front, costs [params]), same seed:
     j1 epochs saved by kdsweep's cost-aware pruning vs the same sweep unpruned      >= 40%
     j2 hypervolume of the pruned sweep's front / the unpruned one's                >= 0.98
     j3 measuring a trial's costs (params, macs) / one digits trial's wall time      < 5%

Rows a, b and e run on synthetic 3x32x32 data (kdsweep's ``synthetic`` data group);
c, d, i and j run the real ``kdsweep -m`` command line on ``digits`` as subprocesses; h writes
its image folder into the work directory (``data=imagefolder``, streamed.py).
Progress goes to stderr, the table to stdout. Timings are medians of interleaved repeats
after a warm-up, but a shared machine is noisy: rerun before believing a FAIL.

The modules beside this file import each other as top-level modules: this file puts its own
folder on ``sys.path`` (running it as a script does that too). They take kdsweep's Python
API from ``_kdsweep_api.py`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# The benchmark's modules (table.py, loops.py, ...) are imported from this file's folder.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from table import Row, format_table, mb, notes  # noqa: E402

ROW_KEYS = "abcdefghij"


@dataclass(frozen=True)
class Sizes:
    images: int  # synthetic data set for rows a, b, e (train + val; 10% is val)
    test_images: int
    kd_repeats: int
    ce_repeats: int
    ce_epochs: int
    sweep_trials: int
    sweep_epochs: int
    overhead_trials: tuple[int, int]
    sweep_timeout_s: float
    folder_images: int  # row h's generated ImageFolder (train/; test/ is a tenth of it)
    folder_repeats: int


MODES = {
    "smoke": Sizes(320, 64, 1, 2, 1, 3, 1, (1, 3), 600.0, 600, 1),
    # Sweeps train trainer.epochs' default (10, the tutorial's recipe) per trial.
    "default": Sizes(3000, 500, 5, 7, 2, 30, 10, (2, 12), 1800.0, 20_000, 3),
    "cifar-scale": Sizes(50_000, 10_000, 3, 5, 1, 30, 10, (2, 12), 3600.0, 50_000, 3),
}


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


PROGRAM = "python benchmarks/bench.py"


def command_line(argv: list[str] | None) -> str:
    """The command as the user would type it again."""
    program = PROGRAM
    if argv is None:
        argv = sys.argv[1:]
        if Path(sys.argv[0]).name == "bench.py":
            program = f"python {shlex.quote(sys.argv[0])}"
    return " ".join([program, *(shlex.quote(a) for a in argv)])


# --- the rows ---------------------------------------------------------------------------


def row_a(data: Any, device: Any, sizes: Sizes) -> Row:
    from loops import measure_kd_epoch

    row = Row("a", "KD epoch img/s: cached teacher + fit vs seed loop", ">= 8x")
    fig = measure_kd_epoch(data, device, sizes.kd_repeats, progress)
    row.kdsweep = f"{fig['kdsweep_images_per_s']:,.0f} img/s"
    row.baseline = f"{fig['seed_images_per_s']:,.0f} img/s"
    row.figure = fig["speedup"]
    row.figure_text = f"{row.figure:.1f}x"
    row.passed = row.figure >= 8.0
    row.details = fig
    return row


def row_b(data: Any, device: Any, sizes: Sizes) -> Row:
    from loops import measure_overhead

    row = Row("b", f"CE training time ({sizes.ce_epochs} ep): fit vs bare loop", "<= 1.10x")
    fig = measure_overhead(data, device, sizes.ce_repeats, sizes.ce_epochs, progress)
    row.kdsweep = f"{fig['fit_s']:.3f} s"
    row.baseline = f"{fig['bare_s']:.3f} s"
    # Each repeat times fit and the bare loop back to back: the median of those pairs'
    # ratios cancels the slow drifts of a shared machine that a ratio of medians keeps.
    row.figure = fig["ratio_median_of_pairs"]
    row.figure_text = f"{row.figure:.3f}x"
    row.passed = row.figure <= 1.10
    row.details = fig
    return row


def rows_c(workdir: Path, device: Any, sizes: Sizes, args: argparse.Namespace) -> list[Row]:
    from sweeps import measure_pruning

    epochs_row = Row("c1", f"sweep epochs: {args.pruner} pruner vs none", "<= 50%")
    acc_row = Row("c2", "best val acc %: pruned vs unpruned sweep", ">= -1.0 pt")
    try:
        fig = measure_pruning(
            workdir,
            workdir / "cache",
            sizes.sweep_trials,
            sizes.sweep_epochs,
            args.pruner,
            args.seed,
            [f"trainer.device={device}"],
            sizes.sweep_timeout_s,
            progress,
        )
    except Exception as exc:
        epochs_row.error = acc_row.error = _one_line(exc)
        return [epochs_row, acc_row]
    epochs_row.kdsweep = str(fig["epochs_pruned"])
    epochs_row.baseline = str(fig["epochs_unpruned"])
    epochs_row.figure = float(fig["epoch_fraction"])
    epochs_row.figure_text = f"{100 * epochs_row.figure:.0f}%"
    epochs_row.passed = epochs_row.figure <= 0.5
    epochs_row.details = fig
    acc_row.kdsweep = f"{fig['best_acc_pruned']:.2f}"
    acc_row.baseline = f"{fig['best_acc_unpruned']:.2f}"
    acc_row.figure = float(fig["acc_diff_points"])
    acc_row.figure_text = f"{acc_row.figure:+.2f} pt"
    acc_row.passed = acc_row.figure >= -1.0
    return [epochs_row, acc_row]


def row_d(workdir: Path, device: Any, sizes: Sizes) -> Row:
    from sweeps import measure_trial_overhead

    low, high = sizes.overhead_trials
    row = Row("d", f"overhead per trial (sweeps of {low} vs {high} trials)", "< 1 s")
    fig = measure_trial_overhead(
        workdir,
        workdir / "cache",
        sizes.overhead_trials,
        [f"trainer.device={device}"],
        sizes.sweep_timeout_s,
        progress,
    )
    row.kdsweep = f"{fig['per_trial_wall_s']:.2f} s/trial"
    row.baseline = f"{fig['extra_trial_run_s']:.2f} s run"
    row.figure = float(fig["overhead_per_trial_s"])
    row.figure_text = f"{row.figure:.2f} s"
    row.passed = row.figure < 1.0
    row.details = fig
    return row


def rows_i(workdir: Path, device: Any, sizes: Sizes, args: argparse.Namespace) -> list[Row]:
    from sweeps import measure_workers

    trials = min(sizes.sweep_trials, 20)
    speed = Row("i1", f"KD sweep, {trials} trials: workers=2 vs joblib 2/batch", ">= 1.2x")
    busy = Row("i2", "slot utilization: workers=2 (joblib 2/batch)", ">= 0.9")
    single = Row("i3", "KD sweep wall: workers=2 vs workers=1", "report")
    rows = [speed, busy, single]
    try:
        fig = measure_workers(
            workdir,
            workdir / "cache",
            trials,
            sizes.sweep_epochs,
            args.seed,
            [f"trainer.device={device}"],
            sizes.sweep_timeout_s,
            progress,
        )
    except Exception as exc:
        for row in rows:
            row.error = _one_line(exc)
        return rows
    workers, joblib, one = fig["workers2"], fig["joblib2"], fig["workers1"]
    speed.kdsweep, speed.baseline = f"{workers['wall_s']:.0f} s", f"{joblib['wall_s']:.0f} s"
    speed.figure = joblib["wall_s"] / workers["wall_s"]
    speed.figure_text = f"{speed.figure:.2f}x"
    speed.passed = speed.figure >= 1.2
    speed.details = fig
    busy.kdsweep, busy.baseline = f"{workers['utilization']:.2f}", f"{joblib['utilization']:.2f}"
    busy.figure = float(workers["utilization"])
    busy.figure_text = f"{busy.figure:.2f}"
    busy.passed = busy.figure >= 0.9
    single.kdsweep, single.baseline = f"{workers['wall_s']:.0f} s", f"{one['wall_s']:.0f} s"
    single.figure = one["wall_s"] / workers["wall_s"]
    single.figure_text = f"{single.figure:.2f}x"
    return rows


def row_g(sizes: Sizes) -> Row:
    from threads import measure_threads

    row = Row("g", "digits CE run (10 ep): 1 torch thread vs default", "report")
    fig = measure_threads(sizes.ce_repeats, 10, progress)
    row.kdsweep = f"{fig['one_thread_s']:.3f} s"
    row.baseline = f"{fig['default_threads_s']:.3f} s ({fig['default_threads']} thr)"
    row.figure = fig["speedup_median_of_pairs"]
    row.figure_text = f"{row.figure:.2f}x"
    row.details = fig
    return row


def rows_e(workdir: Path, device: Any, sizes: Sizes) -> list[Row]:
    from memory import measure_in_subprocess

    cache = workdir / "memory-cache"
    rows = []
    # First trial on a data set computes the teacher's outputs; every later one loads them.
    for key, what in (("e1", "computed in the trial"), ("e2", "loaded from the cache")):
        row = Row(key, f"peak RSS growth / data size, teacher outputs {what}", "report")
        try:
            fig = measure_in_subprocess(
                sizes.images, sizes.test_images, cache, str(device), sizes.sweep_timeout_s
            )
        except Exception as exc:
            row.error = _one_line(exc)
            rows.append(row)
            continue
        progress(f"{key}: peak growth {mb(fig['growth_bytes'])}, data {mb(fig['data_nbytes'])}")
        row.kdsweep = mb(fig["growth_bytes"])
        row.baseline = mb(fig["data_nbytes"])
        row.figure = fig["ratio"]
        row.figure_text = f"{row.figure:.1f}x"
        row.details = fig
        rows.append(row)
    return rows


def rows_f(data: Any, device: Any, sizes: Sizes) -> list[Row]:
    from gpu import WORKLOADS

    levers = [
        Row(f"f{i}", f"{what} (batch {batch}): bf16+CL (+compile) vs fp32", "report")
        for i, (_, what, batch) in enumerate(WORKLOADS, start=1)
    ]
    syncs = Row(f"f{len(levers) + 1}", "host syncs per KD epoch (sync debug mode)", "<= 10")
    rows = [*levers, syncs]
    if device.type != "cuda":
        for row in rows:
            row.kdsweep = "needs a GPU"
        return rows
    from gpu import measure_gpu_levers

    fig = measure_gpu_levers(data, device, sizes.kd_repeats, progress)
    for row, (label, _, _) in zip(levers, WORKLOADS, strict=True):
        per_s = {k.removeprefix(f"{label}_"): v for k, v in fig.items() if k.startswith(label)}
        row.kdsweep = (
            f"{per_s['bf16+channels_last_images_per_s']:,.0f} /"
            f" {per_s['bf16+channels_last+compile_images_per_s']:,.0f} img/s"
        )
        row.baseline = f"{per_s['fp32_images_per_s']:,.0f} img/s"
        row.figure = per_s["speedup_bf16"]
        row.figure_text = f"{per_s['speedup_bf16']:.2f}x / {per_s['speedup_compile']:.2f}x"
        row.details = fig
    syncs.kdsweep = f"{fig['host_syncs_per_epoch']:.1f}"
    syncs.baseline = f"{fig['batches_per_epoch']:.0f} batches"
    syncs.figure = fig["host_syncs_per_epoch"]
    syncs.figure_text = f"{syncs.figure:.1f}"
    syncs.passed = syncs.figure <= 10
    return rows


def rows_h(workdir: Path, sizes: Sizes, workers: int) -> list[Row]:
    from streamed import measure_streamed, memory_in_subprocess, write_folder

    n = sizes.folder_images
    seed_row = Row("h1", f"ImageFolder KD epoch img/s: streamed vs seed loop ({n} PNGs)", ">= 3x")
    memory_row = Row("h2", "ImageFolder KD epoch img/s: streamed vs in memory", ">= 0.5x")
    rss_row = Row("h3", "streamed peak RSS growth / decoded train split", "< 0.25")
    progress(f"h: writing {n} PNG images of 3x32x32 (+ a test/ tenth) under {workdir}")
    root = write_folder(workdir / "imagefolder", n)
    cache = workdir / "imagefolder-cache"
    fig = measure_streamed(root, cache, workers, sizes.folder_repeats, progress)
    seed_row.kdsweep = memory_row.kdsweep = f"{fig['streamed_images_per_s']:,.0f} img/s"
    seed_row.baseline = f"{fig['seed_images_per_s']:,.0f} img/s"
    memory_row.baseline = f"{fig['in_memory_images_per_s']:,.0f} img/s"
    seed_row.figure, memory_row.figure = fig["vs_seed"], fig["vs_in_memory"]
    seed_row.figure_text = f"{fig['vs_seed']:.1f}x"
    memory_row.figure_text = f"{fig['vs_in_memory']:.2f}x"
    seed_row.passed, memory_row.passed = fig["vs_seed"] >= 3.0, fig["vs_in_memory"] >= 0.5
    seed_row.details = memory_row.details = fig
    try:
        memory = memory_in_subprocess(root, cache, workers, sizes.sweep_timeout_s)
    except Exception as exc:
        rss_row.error = _one_line(exc)
        return [seed_row, memory_row, rss_row]
    rss_row.kdsweep = mb(memory["growth_bytes"])
    rss_row.baseline = mb(memory["decoded_bytes"])
    rss_row.figure = memory["ratio"]
    rss_row.figure_text = f"{rss_row.figure:.2f}"
    rss_row.passed = rss_row.figure < 0.25
    rss_row.details = memory
    return [seed_row, memory_row, rss_row]


def rows_j(workdir: Path, device: Any, sizes: Sizes, args: argparse.Namespace) -> list[Row]:
    from fronts import measure_cost_measurement, measure_front_pruning

    epochs_row = Row("j1", "front sweep epochs saved: cost-aware median vs none", ">= 40%")
    volume_row = Row("j2", "front hypervolume: pruned / unpruned sweep", ">= 0.98")
    costs_row = Row("j3", "measuring a trial's costs / a digits trial", "< 5%")
    rows = [epochs_row, volume_row, costs_row]
    try:
        fig = measure_front_pruning(
            workdir,
            workdir / "cache",
            sizes.sweep_trials,
            sizes.sweep_epochs,
            args.seed,
            [f"trainer.device={device}"],
            sizes.sweep_timeout_s,
            progress,
        )
        fig.update(measure_cost_measurement(max(3, sizes.ce_repeats), progress))
    except Exception as exc:
        for row in rows:
            row.error = _one_line(exc)
        return rows
    epochs_row.kdsweep = str(fig["epochs_pruned"])
    epochs_row.baseline = str(fig["epochs_unpruned"])
    epochs_row.figure = float(fig["epochs_saved"])
    epochs_row.figure_text = f"{100 * epochs_row.figure:.0f}%"
    epochs_row.passed = epochs_row.figure >= 0.40
    volume_row.kdsweep = f"{fig['hypervolume_pruned']:,.0f}"
    volume_row.baseline = f"{fig['hypervolume_unpruned']:,.0f}"
    volume_row.figure = float(fig["hypervolume_ratio"])
    volume_row.figure_text = f"{volume_row.figure:.3f}"
    volume_row.passed = volume_row.figure >= 0.98
    trial_s = float(fig["trial_wall_s_median"])
    costs_row.kdsweep = f"{1000 * fig['trial_costs_s']:.1f} ms"
    costs_row.baseline = f"{trial_s:.2f} s/trial"
    costs_row.figure = float(fig["trial_costs_s"]) / trial_s
    costs_row.figure_text = f"{100 * costs_row.figure:.2f}%"
    costs_row.passed = costs_row.figure < 0.05
    for row in rows:
        row.details = fig
    return rows


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Measure kdsweep's performance levers side by side and print ratios"
        " against their targets.",
        epilog="Rows, targets and measured figures: docs/performance.md."
        " Run from a clone with kdsweep installed (pip install -e .).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes: every row, fast")
    size.add_argument(
        "--cifar-scale", action="store_true", help="50,000 synthetic images (meant for a GPU)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps"
    )
    parser.add_argument("--only", default=ROW_KEYS, help="rows to run, e.g. 'ab' (default all)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--pruner", default="median", help="row c's pruner (default median)")
    parser.add_argument("--seed", type=int, default=42, help="rows c, i and j's sampler seed")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats of rows a and b (default: per mode)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="row h's DataLoader workers (default 2)"
    )
    parser.add_argument(
        "--workdir", help="keep sweep files here (default: a temporary directory, removed)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(ROW_KEYS)
    if unknown:
        parser.error(f"--only takes letters from {ROW_KEYS}, got {''.join(sorted(unknown))}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def run_bench(argv: list[str] | None = None) -> tuple[list[Row], dict[str, Any]]:
    """Run the selected rows; return them and the JSON-able report (also used by tests)."""
    args = _parse(argv)
    import torch

    from _kdsweep_api import SyntheticData, load_splits, resolve_device

    mode = "smoke" if args.smoke else "cifar-scale" if args.cifar_scale else "default"
    sizes = MODES[mode]
    if args.repeats:
        sizes = replace(sizes, kd_repeats=args.repeats, ce_repeats=args.repeats)
    device = resolve_device(args.device)
    command = command_line(argv)
    progress(f"{command}  (mode {mode}, device {device})")
    started = time.perf_counter()

    rows: list[Row] = []
    data = None
    if set("abf") & set(args.only):
        conf = SyntheticData(size=sizes.images, test_size=sizes.test_images)
        data = load_splits(conf).to(device)

    def guarded(key: str, measure: str, target: str, work: Callable[[], Any]) -> None:
        progress(f"{key}: {measure}")
        try:
            result = work()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            rows.append(Row(key, measure, target, error=_one_line(exc)))
            return
        rows.extend(result if isinstance(result, list) else [result])

    with tempfile.TemporaryDirectory(prefix="kdsweep-bench-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if args.workdir:  # a kept workdir may hold an earlier run: use a fresh subfolder
            workdir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
        if "a" in args.only:
            guarded("a", "KD epoch", ">= 8x", lambda: row_a(data, device, sizes))
        if "b" in args.only:
            guarded("b", "framework overhead", "<= 1.10x", lambda: row_b(data, device, sizes))
        if "c" in args.only:
            guarded("c", "pruning", "<= 50%", lambda: rows_c(workdir, device, sizes, args))
        if "d" in args.only:
            guarded("d", "per-trial overhead", "< 1 s", lambda: row_d(workdir, device, sizes))
        if "e" in args.only:
            guarded("e", "peak memory", "report", lambda: rows_e(workdir, device, sizes))
        if "f" in args.only:
            guarded("f", "GPU levers", "report", lambda: rows_f(data, device, sizes))
        if "g" in args.only and device.type == "cpu":
            guarded("g", "CPU threads", "report", lambda: row_g(sizes))
        if "i" in args.only:
            guarded("i", "sweep workers", ">= 1.2x", lambda: rows_i(workdir, device, sizes, args))
        if "h" in args.only:
            guarded(
                "h", "streamed ImageFolder", ">= 3x", lambda: rows_h(workdir, sizes, args.workers)
            )
        if "j" in args.only:
            guarded("j", "front sweep", ">= 40%", lambda: rows_j(workdir, device, sizes, args))

    elapsed = time.perf_counter() - started
    threads = torch.get_num_threads()
    header = [
        f"command: {command}",
        f"benchmark, mode {mode}: device {device}, torch {torch.__version__},"
        f" {threads} threads, {os.cpu_count()} CPUs, python {platform.python_version()},"
        f" {elapsed:.0f} s",
    ]
    report = {
        "command": command,
        "mode": mode,
        "device": str(device),
        "torch": torch.__version__,
        "threads": threads,
        "cpus": os.cpu_count(),
        "seconds": elapsed,
        "sizes": asdict(sizes),
        "header": header,
        "notes": notes(rows),
        "rows": [dict(asdict(r), result=r.result) for r in rows],
    }
    return rows, report


def main(argv: list[str] | None = None) -> int:
    rows, report = run_bench(argv)
    text = format_table(rows, report["header"])
    print(text)
    for line in report["notes"]:
        print(line)
    if (args := _parse(argv)).json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        progress(f"figures written to {args.json}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
