"""The seeds table: a plain multirun over seeds (``kdsweep -m trainer.seed=range(5)
loss=kd,ce``) summed up as each configuration's mean and 95 % interval over its seeds and,
with two or more configurations, the paired difference of each against a baseline
(kdsweep.core.stats). Written by the SeedsTable callback (kdsweep.multirun.callbacks)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kdsweep.config.parts import override_key
from kdsweep.core.formatting import DASH, mean_ci, p_value
from kdsweep.core.stats import SeededArm, verdict
from kdsweep.multirun.jobs import SEED_KEY, Job

log = logging.getLogger("kdsweep")


@dataclass
class Arm(SeededArm):
    """The jobs that differ only by seed: seed -> accuracy in %."""

    overrides: tuple[str, ...]
    losses: set[str] = field(default_factory=set)
    # Its jobs without a result, left out of its figures: "seed 3: FAILED".
    left_out: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.val)


def group_arms(jobs: Iterable[Job]) -> list[Arm]:
    """Arms in order of their first job; each keeps its finished runs by seed, and says
    which of its jobs have no result (an arm whose every job failed has n == 0)."""
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
            why = "no accuracy recorded" if job.finished else status
            arm.left_out.append(f"seed {seed if seed is not None else '?'}: {why}")
            continue
        if seed in arm.val:
            log.warning(
                "seeds table: job %s repeats seed %d of its arm; it replaces it", where, seed
            )
        arm.val[seed], arm.test[seed] = val, test
        arm.losses.add(str(job.params.get("loss.name", "?")))
    return list(arms.values())


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
    every_arm = group_arms(jobs)
    if max((arm.n for arm in every_arm), default=0) < 2:
        return None
    # Labelled among every arm, so an arm whose runs all failed is named apart from the rest.
    all_labels, common = _labels(every_arm)
    labelled = list(zip(every_arm, all_labels, strict=True))
    arms = [arm for arm, _ in labelled if arm.n]
    labels = [label for arm, label in labelled if arm.n]
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
        val, test = mean_ci(arm.val_stats), mean_ci(arm.test_stats)
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
            for split in ("val", "test"):
                d = arm.diff(arms[base], split)
                if d.n == 0:
                    cells = [DASH] * 4
                else:
                    ci = DASH if math.isnan(d.ci_low) else f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]"
                    cells = [f"{d.mean:+.2f}", ci, p_value(d.p_ttest), p_value(d.p_wilcoxon)]
                row = " | ".join([f"{label} - baseline", split, str(d.n), *cells, verdict(d)])
                lines.append(f"| {row} |")
    incomplete = [
        f"- {label}: {', '.join(arm.left_out)}" for arm, label in labelled if arm.left_out
    ]
    if incomplete:
        lines += ["", "Runs without a result, left out of every figure above:", "", *incomplete]
    return "\n".join(lines) + "\n"
