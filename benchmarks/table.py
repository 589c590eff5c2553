"""The table the benchmark prints: one row per figure, its target and result, then a
note per row on how it was measured (sizes, robust alternatives to the headline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    key: str
    measure: str
    target: str
    kdsweep: str = "-"
    baseline: str = "-"
    figure: float | None = None  # the number the target is about
    figure_text: str = "-"
    passed: bool | None = None  # None: reported only, or not measured
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def result(self) -> str:
        if self.error:
            return "ERROR"
        if self.figure is None:
            return "-"
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "FAIL"


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


# --- output -----------------------------------------------------------------------------


def format_table(rows: list[Row], header: list[str]) -> str:
    columns = ["row", "measure", "kdsweep", "baseline", "figure", "target", "result"]
    cells = [
        [r.key, r.measure, r.kdsweep, r.baseline, r.figure_text, r.target, r.result] for r in rows
    ]
    widths = [max(len(c[i]) for c in [columns, *cells]) for i in range(len(columns))]
    lines = list(header)
    lines.append("  ".join(name.ljust(w) for name, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for cell in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())
    for row in rows:
        if row.error:
            lines.append(f"{row.key}: error: {row.error}")
    return "\n".join(lines)


def notes(rows: list[Row]) -> list[str]:
    by_key = {r.key: r for r in rows}
    out = []
    if (a := by_key.get("a")) and a.details:
        d = a.details
        out.append(
            f"a: {d['images']:.0f} training images, median of {d['repeats']:.0f}; the teacher's"
            f" one-time pass took {d['teacher_cache_s']:.1f} s (a single epoch including it:"
            f" {d['speedup_incl_cache_1_epoch']:.1f}x); kdsweep's time includes its val pass;"
            f" median of per-pair ratios {d['speedup_median_of_pairs']:.1f}x, ratio of the"
            f" fastest runs {d['speedup_of_minimums']:.1f}x"
        )
    if (b := by_key.get("b")) and b.details:
        d = b.details
        out.append(
            f"b: {d['repeats']:.0f} interleaved pairs of runs on {d['images']:.0f} images,"
            f" figure = median of per-pair ratios (times: medians); ratio of medians"
            f" {d['ratio']:.3f}x, ratio of the fastest runs {d['ratio_of_minimums']:.3f}x;"
            " fit and the bare loop compute"
            " the same weights (tests/test_bench.py)"
        )
    if (c := by_key.get("c1")) and c.details:
        d = c.details
        out.append(
            f"c: {d['trials']} trials x {d['epochs_per_trial']} epochs on digits (30% of"
            " it held out for val), hparams_search=kd's pruner settings; trial states"
            f" {d['states_pruned']} vs {d['states_unpruned']}; sweep walls (teacher"
            f" trained beforehand) {d['wall_s_pruned']:.0f} s vs {d['wall_s_unpruned']:.0f} s"
        )
    if (i := by_key.get("i1")) and i.details:
        d = i.details
        ways = "; ".join(
            f"{name} {d[name]['states']}, search {d[name]['search_wall_s']:.0f} s,"
            f" utilization {d[name]['utilization']:.2f}, ask-to-tell occupancy"
            f" {d[name]['ask_to_tell_occupancy']:.2f}, mean trial run"
            f" {d[name]['mean_trial_run_s']:.1f} s"
            for name in ("workers2", "joblib2", "workers1")
        )
        out.append(
            f"i: {d['trials']} trials x {d['epochs_per_trial']} epochs on digits, median"
            " pruner, no baseline or confirmation, teacher trained beforehand; wall = the"
            " whole command (process start-ups included); utilization = the trials' MLflow"
            " runs' time / (slots x first run start to last run end); occupancy = the same"
            f" from Optuna's ask-to-tell times (job set-up included); {ways}"
        )
    if (d_row := by_key.get("d")) and d_row.details:
        d = d_row.details
        walls = ", ".join(f"{w:.1f}" for w in d["wall_s"])
        median = d.get("overhead_median_of_trials_s")
        out.append(
            f"d: sweep walls {walls} s for {d['trial_counts']} trials; overhead = (wall"
            " difference - run-time difference) per extra trial, run time = the trials'"
            " metrics.wall_seconds (which itself includes per-epoch MLflow/Optuna logging);"
            f" with the mean run time instead {d['overhead_with_mean_run_s']:.2f} s"
            + (
                f"; median over single trials (next start - start - run) {median:.2f} s"
                if median is not None
                else ""
            )
        )
    e_rows = [by_key[k] for k in ("e1", "e2") if k in by_key and by_key[k].details]
    if e_rows:
        loads = ", ".join(f"{mb(r.details['load_growth_bytes'])}" for r in e_rows)
        out.append(
            "e: VmHWM growth in a fresh process after imports and a toy warm-up step (data"
            f" load, models, teacher outputs, one KD epoch; loading the data alone: {loads});"
            " host memory only"
            + ("" if e_rows[0].details.get("peak_reset") else " (no peak reset: lifetime peak)")
        )
        cuda = [r.details.get("cuda_peak_allocated_bytes") for r in e_rows]
        if all(c is not None for c in cuda):
            out.append("e: CUDA peak allocated " + ", ".join(mb(c) for c in cuda))
    if (f := by_key.get("f1")) and f.details:
        d = f.details
        out.append(
            f"f: {d['images']:.0f} training images, median of {d['repeats']:.0f} epochs per"
            " variant after a warm-up epoch; f1 is row a's cached KD epoch; syncs counted"
            " with torch.cuda.set_sync_debug_mode('warn') over a 2-epoch fit (val pass"
            " included)"
        )
    if (h := by_key.get("h1")) and h.details:
        d = h.details
        out.append(
            f"h: {d['images']:.0f} training PNGs of 3x32x32, {d['workers']:.0f} DataLoader"
            f" workers, median of {d['repeats']:.0f} KD epochs per side after a warm-up, sides"
            " rotated; streamed = data=imagefolder through fit with the teacher's outputs"
            " cached by index (memory-mapped); seed loop = the seed notes' loop over"
            " ImageFolder + ToTensor + Normalize with the live teacher; in memory = the same"
            " images decoded once into a tensor"
        )
    if (h3 := by_key.get("h3")) and h3.details:
        d = h3.details
        out.append(
            "h3: in a fresh interpreter after a warm-up fit; growth = the larger of the peak's"
            f" rise ({mb(d['peak_above_warm_up_peak_bytes'])}) and the RSS kept"
            f" ({mb(d['rss_kept_bytes'])}); decoded = the training split as float32; the"
            f" largest worker's peak RSS {mb(d['largest_worker_peak_rss_bytes'])} (not counted)"
        )
    return out
