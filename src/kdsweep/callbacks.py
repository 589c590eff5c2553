"""Hydra callbacks that end a plain multirun with a table, read from each job's results.json
(kdsweep.tracking.RunTracker writes it whether or not MLflow tracks the run), so they work
with any launcher, including ones that run the jobs in other processes.

- TutorialTable ends ``kdsweep -m 'experiment=glob(tutorial_*)'`` with the PyTorch KD
  tutorial's comparison table, beside the tutorial's published CIFAR-10 figures.
- SeedsTable ends a multirun over seeds (``kdsweep -m trainer.seed=range(5) loss=kd,ce``)
  with each configuration's mean and 95 % interval over its seeds and, with two or more
  configurations, the paired difference of each against a baseline (kdsweep.report.stats).

Neither acts on kdsweep's own sweeps (they end with their report), and neither may crash a
multirun: a job whose files cannot be read is logged and left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdsweep.files import atomic_write_text
from kdsweep.multirun import (
    FINISHED,
    SEED_KEY,
    Job,
    as_mapping,
    collect_jobs,
    collect_results,
    is_kdsweep_sweep,
    number,
    objective_acc,
    override_key,
)
from kdsweep.report.stats import arm_stats, paired_diff, verdict

log = logging.getLogger("kdsweep")

# --- formatting ----------------------------------------------------------------------------

DASH = "–"


def _mean_ci(values: Sequence[float]) -> str:
    """'97.41 ± 0.52' (mean ± 95 % Student-t half-width); the mean alone for one value."""
    if not values:
        return DASH
    stats = arm_stats(values)
    if stats.n < 2:
        return f"{stats.mean:.2f}"
    return f"{stats.mean:.2f} ± {stats.half_width:.2f}"


def _p(value: float) -> str:
    return DASH if math.isnan(value) else f"{value:.3g}"


def _statuses(records: Iterable[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for record in records:
        status = str(record.get("status", "?"))
        counts[status] = counts.get(status, 0) + 1
    if list(counts) == [FINISHED]:
        return FINISHED
    return ", ".join(f"{n} {status}" for status, n in counts.items())


# --- the tutorial's table ------------------------------------------------------------------

# run name -> (row label, the tutorial's published CIFAR-10 test accuracy in %, or None).
# The tutorial trains one DeepNN with CE and distils from it. Here the KD and cosine
# students learn from the teacher kdsweep trains and caches (teacher.*; teacher.seed
# follows trainer.seed unless set) and report its accuracies in their records: that is the
# teacher row, beside the tutorial's teacher figure. The tutorial_teacher experiment is a
# separate run that trains a DeepNN as the student (its own training, which no student
# learns from). Its row is kept, since the user ran it and it shows what the teacher's
# recipe reaches as a plain run, but it is labelled as what it is, with no published
# figure beside it: it is not the teacher of the table's students.
TEACHER_LABEL = "Teacher (DeepNN, CE): teacher of the KD/cosine/hint runs"
TEACHER_PUBLISHED = 75.10
TEACHER_SOURCES = ("tutorial-kd", "tutorial-cosine", "tutorial-hint")
TUTORIAL_ROWS: dict[str, tuple[str, float | None]] = {
    "tutorial-student-ce": ("Student without teacher (LightNN, CE)", 69.86),
    "tutorial-kd": ("Student with CE + KD", 70.80),
    "tutorial-cosine": ("Student with CE + cosine", 71.50),
    # The tutorial prints this run's accuracy too; its figure is not quoted here.
    "tutorial-hint": ("Student with CE + hint (regressor MSE)", None),
    "tutorial-teacher": ("DeepNN trained as a student, CE (tutorial_teacher)", None),
}
TEACHER_METRICS = ("teacher_val_acc", "teacher_test_acc")


def _accuracies(
    records: Sequence[Mapping[str, Any]], val: str, test: str
) -> tuple[list[float], list[float]]:
    """(val, test) accuracies of the finished records that have both."""
    vals, tests = [], []
    for record in records:
        metrics = as_mapping(record.get("metrics"))
        v = objective_acc(metrics) if val == "objective" else number(metrics, val)
        t = number(metrics, test)
        if record.get("status") == FINISHED and v is not None and t is not None:
            vals.append(v)
            tests.append(t)
    return vals, tests


def _teachers(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The distinct teachers the KD/cosine runs used, as records of their metrics. A
    cached teacher serves every run of its recipe and seed (the KD and the cosine run of a
    seed share one; a fixed teacher.seed makes all seeds share one), so runs that report
    identical teacher metrics count as one teacher."""
    seen: dict[tuple, dict[str, Any]] = {}
    for name in TEACHER_SOURCES:
        for record in results.get(name, []):
            metrics = as_mapping(record.get("metrics"))
            teacher = {k: v for k, v in metrics.items() if str(k).startswith("teacher_")}
            if record.get("status") != FINISHED or not all(k in teacher for k in TEACHER_METRICS):
                continue
            key = tuple(sorted((k, repr(v)) for k, v in teacher.items()))
            seen.setdefault(key, {"status": FINISHED, "metrics": teacher})
    return list(seen.values())


def tutorial_table(results: Mapping[str, Sequence[Mapping[str, Any]]], data_name: str) -> str:
    lines = [
        "| run | n | val acc % | test acc % | status | tutorial, CIFAR-10 test acc % |",
        "|---|---:|---:|---:|---|---:|",
    ]

    def row(label: str, n: int, vals: list, tests: list, status: str, published: Any) -> None:
        paper = f"{published:.2f}" if isinstance(published, float) else DASH
        cells = (_mean_ci(vals), _mean_ci(tests))
        lines.append(f"| {label} | {n} | {cells[0]} | {cells[1]} | {status} | {paper} |")

    students = [results.get(name, []) for name in TEACHER_SOURCES]
    teachers = _teachers(results)
    if teachers:
        vals, tests = _accuracies(teachers, *TEACHER_METRICS)
        row(TEACHER_LABEL, len(teachers), vals, tests, FINISHED, TEACHER_PUBLISHED)
    else:
        why = "no teacher metrics" if any(students) else "not run"
        row(TEACHER_LABEL, 0, [], [], why, TEACHER_PUBLISHED)
    for run_name, (label, published) in TUTORIAL_ROWS.items():
        records = results.get(run_name, [])
        if not records:
            row(label, 0, [], [], "not run", published)
            continue
        vals, tests = _accuracies(records, "objective", "test_acc")
        row(label, len(vals), vals, tests, _statuses(records), published)
    header = f"Tutorial comparison on data={data_name} (tutorial figures: CIFAR-10, 10 epochs)"
    notes = (
        "n: finished runs (seeds) per row, mean ± 95 % Student-t half-width when n >= 2; for"
        " the teacher, the distinct teachers the KD/cosine/hint runs learned from"
        " (teacher.seed follows trainer.seed unless set; the runs of a seed share one)."
    )
    return header + "\n\n" + "\n".join(lines) + "\n\n" + notes + "\n"


class TutorialTable(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if is_kdsweep_sweep(config):
                return
            sweep_dir = Path(str(config.hydra.sweep.dir))
            results = collect_results(sweep_dir)
            if not any(name in TUTORIAL_ROWS for name in results):
                return  # not a tutorial multirun
            table = tutorial_table(results, str(config.data.name))
            out = sweep_dir / "tutorial_comparison.md"
            atomic_write_text(out, table)
            print("\n" + table + f"\n(saved to {out})")
        except Exception as exc:  # a table must never fail the multirun that trained
            log.warning("tutorial table not written: %s: %s", type(exc).__name__, exc)


# --- the seeds table -----------------------------------------------------------------------


@dataclass
class Arm:
    """The jobs that differ only by seed: seed -> accuracy in %."""

    overrides: tuple[str, ...]
    val: dict[int, float] = field(default_factory=dict)
    test: dict[int, float] = field(default_factory=dict)
    losses: set[str] = field(default_factory=set)

    @property
    def n(self) -> int:
        return len(self.val)


def group_arms(jobs: Iterable[Job]) -> list[Arm]:
    """Arms in order of their first job; each keeps its finished runs by seed."""
    arms: dict[tuple[str, ...], Arm] = {}
    for job in jobs:
        if job.in_kdsweep_sweep:
            continue
        where = job.directory.name
        if job.overrides is None:
            log.warning("seeds table: skipping job %s (no readable .hydra/overrides.yaml)", where)
            continue
        overrides = tuple(o for o in job.overrides if override_key(o) != SEED_KEY)
        arm = arms.setdefault(tuple(sorted(overrides)), Arm(overrides))
        seed, val, test = job.seed, job.val_acc(), job.metric("test_acc")
        if not job.finished or seed is None or val is None or test is None:
            status = job.record.get("status", "?")
            log.warning("seeds table: skipping job %s (status %s, no accuracy)", where, status)
            continue
        if seed in arm.val:
            log.warning(
                "seeds table: job %s repeats seed %d of its arm; it replaces it", where, seed
            )
        arm.val[seed], arm.test[seed] = val, test
        arm.losses.add(str(job.params.get("loss.name", "?")))
    return [arm for arm in arms.values() if arm.n]


def _labels(arms: Sequence[Arm]) -> tuple[list[str], list[str]]:
    """Each arm's overrides that not all arms share, and those they all share."""
    common = [o for o in arms[0].overrides if all(o in arm.overrides for arm in arms)]
    if len(arms) == 1:
        return [" ".join(arms[0].overrides) or "(defaults)"], []
    labels = [" ".join(o for o in arm.overrides if o not in common) or "(defaults)" for arm in arms]
    return labels, common


def choose_baseline(arms: Sequence[Arm]) -> tuple[int, str]:
    """The arm the others are compared with: the one arm whose student trained with
    loss=ce (the student without teacher) if exactly one did, else the first arm."""
    ce = [i for i, arm in enumerate(arms) if arm.losses == {"ce"}]
    if len(ce) == 1:
        return ce[0], "the only loss=ce arm: the student without teacher"
    return 0, "the first arm"


def seeds_table(jobs: Sequence[Job]) -> str | None:
    """The markdown table of a multirun over seeds; None when no configuration ran with
    more than one seed (nothing to add to the multirun's output)."""
    arms = group_arms(jobs)
    if not arms or max(arm.n for arm in arms) < 2:
        return None
    labels, common = _labels(arms)
    base, why = choose_baseline(arms) if len(arms) > 1 else (0, "")
    lines = [
        f"Seeds table: {len(arms)} configuration(s) over {SEED_KEY}; accuracy in %, mean ±"
        " 95 % Student-t half-width over the seeds.",
    ]
    if common:
        lines.append(f"Shared by every row: {' '.join(common)}")
    lines += [
        "",
        "| configuration | n seeds | seeds | val acc % | test acc % |",
        "|---|---:|---|---:|---:|",
    ]
    for i, (arm, label) in enumerate(zip(arms, labels, strict=True)):
        mark = " (baseline)" if len(arms) > 1 and i == base else ""
        seeds = ",".join(str(s) for s in sorted(arm.val))
        val, test = (_mean_ci(list(arm.val.values())), _mean_ci(list(arm.test.values())))
        lines.append(f"| {label}{mark} | {arm.n} | {seeds} | {val} | {test} |")
    if len(arms) > 1:
        lines += [
            "",
            f"Paired differences against the baseline `{labels[base]}` ({why}), in points,"
            " over the seeds both have; 95 % CI, two-sided paired t-test and Wilcoxon"
            " signed-rank p:",
            "",
            "| configuration | split | pairs | difference | 95 % CI | p (t) | p (Wilcoxon)"
            " | verdict |",
            "|---|---|---:|---:|---|---:|---:|---|",
        ]
        for i, (arm, label) in enumerate(zip(arms, labels, strict=True)):
            if i == base:
                continue
            for split, mine, theirs in (
                ("val", arm.val, arms[base].val),
                ("test", arm.test, arms[base].test),
            ):
                d = paired_diff(mine, theirs)
                if d.n == 0:
                    cells = [DASH] * 4
                else:
                    ci = DASH if math.isnan(d.ci_low) else f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]"
                    cells = [f"{d.mean:+.2f}", ci, _p(d.p_ttest), _p(d.p_wilcoxon)]
                row = " | ".join([f"{label} - baseline", split, str(d.n), *cells, verdict(d)])
                lines.append(f"| {row} |")
    return "\n".join(lines) + "\n"


class SeedsTable(Callback):
    """Ends a plain multirun that repeats configurations over trainer.seed with
    ``seeds_table.md`` in the multirun directory (and on stdout)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if is_kdsweep_sweep(config):
                return  # kdsweep's sweeps end with their own report
            sweep_dir = Path(str(config.hydra.sweep.dir))
            table = seeds_table(collect_jobs(sweep_dir))
            if table is None:
                return
            out = sweep_dir / "seeds_table.md"
            atomic_write_text(out, table)
            print("\n" + table + f"\n(saved to {out})")
        except Exception as exc:  # a table must never fail the multirun that trained
            log.warning("seeds table not written: %s: %s", type(exc).__name__, exc)
