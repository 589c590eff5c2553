"""Hydra callbacks that end a plain multirun with a table, read from each job's results.json
(kdsweep.run.tracking.RunTracker writes it whether or not MLflow tracks the run), so they work
with any launcher, including ones that run the jobs in other processes.

- TutorialTable ends ``kdsweep -m 'experiment=glob(tutorial_*)'`` with the PyTorch KD
  tutorial's comparison table, beside the tutorial's published CIFAR-10 figures.
- SeedsTable ends a multirun over seeds (``kdsweep -m trainer.seed=range(5) loss=kd,ce``)
  with each configuration's mean and 95 % interval over its seeds and, with two or more
  configurations, the paired difference of each against a baseline (kdsweep.multirun.seeds_table).

Neither acts on kdsweep's own sweeps (they end with their report), and neither may crash a
multirun: a job whose files cannot be read is logged and left out.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from kdsweep.core.files import atomic_write_text
from kdsweep.core.formatting import DASH, mean_ci
from kdsweep.core.stats import arm_stats
from kdsweep.core.values import finite_number
from kdsweep.multirun.jobs import (
    FINISHED,
    as_mapping,
    collect_jobs,
    collect_results,
    is_kdsweep_sweep,
    objective_acc,
)
from kdsweep.multirun.seeds_table import seeds_table

log = logging.getLogger("kdsweep")


def _statuses(records: Iterable[Mapping[str, Any]]) -> str:
    counts = Counter(str(record.get("status", "?")) for record in records)
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
        v = objective_acc(metrics) if val == "objective" else finite_number(metrics.get(val))
        t = finite_number(metrics.get(test))
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
        cells = (mean_ci(arm_stats(vals)), mean_ci(arm_stats(tests)))
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


#: What a table's inputs raise when a job's record is damaged or partial (unreadable, not
#: JSON, a key or a config node missing, a value of another type) or its folder is not
#: writable: the table is skipped with a warning.
UNUSABLE_JOBS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    ArithmeticError,
    OmegaConfBaseException,
)


class MultirunTable(Callback):
    """A table a plain multirun ends with, written to ``file_name`` in the multirun
    directory and printed: ``table`` makes it from this multirun's jobs (None: this is not
    its kind of multirun). kdsweep's sweeps end with their own report instead. Remembers
    when the multirun started: a reused ``hydra.sweep.dir`` still holds the job folders of
    earlier multiruns, which must not count (kdsweep.multirun)."""

    started: float | None = None
    file_name: ClassVar[str]

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def table(self, config: DictConfig, sweep_dir: Path) -> str | None:
        raise NotImplementedError

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if is_kdsweep_sweep(config):
                return
            sweep_dir = Path(str(config.hydra.sweep.dir))
            table = self.table(config, sweep_dir)
            if table is None:
                return
            out = sweep_dir / self.file_name
            atomic_write_text(out, table)
        except UNUSABLE_JOBS as exc:  # a table must never fail the multirun that trained
            log.warning("%s not written: %s: %s", self.file_name, type(exc).__name__, exc)
            return
        print("\n" + table + f"\n(saved to {out})")


class TutorialTable(MultirunTable):
    file_name = "tutorial_comparison.md"

    def table(self, config: DictConfig, sweep_dir: Path) -> str | None:
        results = collect_results(sweep_dir, self.started)
        if not any(name in TUTORIAL_ROWS for name in results):
            return None  # not a tutorial multirun
        return tutorial_table(results, str(config.data.name))


class SeedsTable(MultirunTable):
    """A plain multirun that repeats configurations over trainer.seed: mean and 95 %
    interval per configuration."""

    file_name = "seeds_table.md"

    def table(self, config: DictConfig, sweep_dir: Path) -> str | None:
        return seeds_table(collect_jobs(sweep_dir, self.started))
