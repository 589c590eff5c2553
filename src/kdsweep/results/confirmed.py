"""The confirmed comparison: what a sweep's confirmation stage measured, and the words the
report may use for it.

Read from the companion study ``<study>:confirm`` (kdsweep.sweep.confirm): one arm per
candidate, several paired seeds each. Per arm: mean and 95 % interval of test and val
accuracy; per distillation arm: the paired test difference against the same recipe
without a teacher (the ablation) and against the reference setting. The headline states
only what the interval supports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from kdsweep.core.formatting import mean_ci
from kdsweep.core.stats import PairedDiff, SeededArm
from kdsweep.core.values import finite_number
from kdsweep.sweep.arms import FRONT_ABLATION_PREFIX, FRONT_PREFIX
from kdsweep.sweep.confirm import arm_seed, confirmed_results

if TYPE_CHECKING:
    import optuna

#: The arms a distillation claim is measured against, in the order the table shows them.
BASELINES = (("ablation", "same recipe without teacher"), ("tutorial", "reference setting"))


@dataclass
class ArmResult(SeededArm):
    """An arm's test accuracy and its val accuracy (the objective) by seed."""

    key: str
    label: str
    diffs: dict[str, PairedDiff] = field(default_factory=dict)  # baseline key -> test diff
    trial: int | None = None  # the search trial it repeats


@dataclass
class Confirmed:
    arms: list[ArmResult]
    seeds: list[int]
    teacher_seed: Any
    planned: int
    done: int
    val_size: int | None
    test_size: int | None
    # "ablation seed 1000" -> why it failed, for each planned run that failed and has no
    # completed rerun.
    failures: dict[str, str] = field(default_factory=dict)

    def arm(self, key: str) -> ArmResult | None:
        return next((a for a in self.arms if a.key == key), None)


def confirmed_summary(study: optuna.Study | None) -> Confirmed | None:
    """The confirmation stage's results, or None if the sweep has none."""
    if study is None:
        return None
    attrs = study.user_attrs
    recorded = attrs.get("arms") or {}
    keys = [k for k in attrs.get("current_arms") or [] if k in recorded]
    seeds = [int(s) for s in attrs.get("seeds") or []]
    if not keys:
        return None
    results = confirmed_results(study)
    arms = []
    sizes: dict[str, int] = {}
    for key in keys:
        runs = {seed: m for seed, m in results.get(key, {}).items() if seed in seeds}
        test, val = (
            {s: v for s, m in runs.items() if (v := finite_number(m.get(name))) is not None}
            for name in ("test_acc", "objective")
        )
        for m in runs.values():
            for name in ("val_size", "test_size"):
                if (size := finite_number(m.get(name))) is not None:
                    sizes[name] = int(size)
        label = str(recorded[key].get("label", key))
        arms.append(ArmResult(key, label, val=val, test=test, trial=recorded[key].get("trial")))
    by_key = {a.key: a for a in arms}
    for arm in arms:
        if arm.key.startswith("top") or arm.key == "tutorial":
            for base_key, _ in BASELINES:
                if base_key != arm.key and base_key in by_key:
                    arm.diffs[base_key] = arm.diff(by_key[base_key], "test")
        own_ablation = by_key.get(_front_ablation(arm.key))
        if own_ablation is not None:  # a front point against itself without the teacher
            arm.diffs["ablation"] = arm.diff(own_ablation, "test")
    done = sum(len(a.test) for a in arms)
    failures = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        arm, seed = arm_seed(trial)
        if arm in keys and seed in seeds and seed not in by_key[arm].test:
            failures.setdefault(f"{arm} seed {seed}", str(trial.user_attrs.get("error", "")))
    return Confirmed(
        arms,
        seeds,
        attrs.get("teacher_seed"),
        len(keys) * len(seeds),
        done,
        sizes.get("val_size"),
        sizes.get("test_size"),
        failures,
    )


def mean_vals(arms: Sequence[SeededArm]) -> list[float]:
    """Each arm's mean val accuracy over the seeds all of them completed (each arm's own
    seeds where they share none); every arm must have a val run."""
    shared = set.intersection(*(set(a.val) for a in arms)) or None
    means = []
    for arm in arms:
        seeds = shared or arm.val
        means.append(sum(arm.val[s] for s in seeds) / len(seeds))
    return means


def best_confirmed(c: Confirmed) -> ArmResult | None:
    """The search's candidate (a top arm) that confirmed best: the highest mean val
    accuracy (the objective, not test: test stays unseen by every choice) over the seeds
    all candidates completed, ties to the search's order. None if no candidate has a run."""
    tops = [a for a in c.arms if a.key.startswith("top") and a.val and a.trial is not None]
    if not tops:
        return None
    means = mean_vals(tops)
    return tops[max(range(len(tops)), key=lambda i: (means[i], -i))]


def parts_text(parts: Mapping[str, str] | None) -> str:
    """``loss=kd, teacher=deep, model=light``: what a sweep distilled, from what into what
    (kdsweep.config.parts, recorded by the sweep); empty for a study that recorded none."""
    parts = parts or {}
    return ", ".join(
        f"{part}={parts[part]}" for part in ("loss", "teacher", "model") if part in parts
    )


def _front_ablation(key: str) -> str | None:
    """The ablation arm of front point ``front-<trial>``: ``ablation-<trial>``."""
    if not key.startswith(FRONT_PREFIX):
        return None
    return FRONT_ABLATION_PREFIX + key[len(FRONT_PREFIX) :]


def unpaired(c: Confirmed) -> str | None:
    """Why the confirmation cannot state its comparison: the best configuration (every
    front point, after a search with costs) and its ablation share fewer seeds than an
    interval needs (2, or the one asked for), their runs having failed. None when the
    comparison stands (or there is none to make)."""
    pairs = [("top1", "ablation")] + [
        (a.key, key) for a in c.arms if (key := _front_ablation(a.key)) is not None
    ]
    for arm_key, ablation_key in pairs:
        arm, ablation = c.arm(arm_key), c.arm(ablation_key)
        if arm is None or ablation is None:
            continue
        diff = arm.diffs.get("ablation")
        paired = diff.n if diff is not None else 0
        if paired >= min(2, len(c.seeds)):
            continue
        failed = next(iter(c.failures.items()), None)
        why = f" ({failed[0]}: {failed[1]})" if failed else ""
        return (
            f"the confirmation could not pair its seeds: {arm_key} and its ablation share"
            f" {paired} of {len(c.seeds)} seed(s), {len(c.failures)} run(s) failed{why}; no"
            " champion is registered: fix what failed (the report, MLflow tag 'error') and"
            " rerun the command"
        )
    return None


def ci(diff: PairedDiff) -> str:
    if diff.n < 2:
        return f"{diff.mean:+.2f} pt (n={diff.n})"
    return (
        f"{diff.mean:+.2f} pt [95 % CI {diff.ci_low:+.2f}, {diff.ci_high:+.2f}],"
        f" p={diff.p_ttest:.2g} (paired t), p={diff.p_wilcoxon:.2g} (Wilcoxon)"
    )


def gain_verdict(diff: PairedDiff, who: str, where: str, without: str) -> str:
    """What a paired gain over the same run without the teacher supports, in words:
    ``who`` helps or hurts (``where``), or no significant gain from it."""
    if not diff.significant:
        return f"no significant gain from {who}{where}"
    if diff.mean > 0:
        return f"{who} helps{where}"
    return f"{who} hurts{where}: {without} is better"


def confirmed_headline(c: Confirmed, parts: Mapping[str, str] | None = None) -> str:
    """The sentence a paper may quote: the best search config (with the sweep's ``parts``)
    vs the same recipe without the teacher, over the paired fresh seeds, and what that
    interval supports."""
    top, ablation = c.arm("top1"), c.arm("ablation")
    who = f" with {parts_text(parts)}" if parts else ""
    if top is None or ablation is None or "ablation" not in top.diffs:
        return f"Confirmation incomplete: {c.done} of {c.planned} runs done."
    diff = top.diffs["ablation"]
    if diff.n < 2:
        return (
            f"Confirmation incomplete: {diff.n} paired seed(s) of {top.label}{who} and its"
            f" teacher-less ablation ({c.done} of {c.planned} runs done)."
        )
    verdict = gain_verdict(diff, "distillation", "", "the same recipe without the teacher")
    text = (
        f"{top.label}{who} vs the same recipe without a teacher: {ci(diff)}, {diff.n} paired"
        f" seeds (test accuracy): {verdict}."
    )
    if "tutorial" in top.diffs and top.diffs["tutorial"].n >= 2:
        text += f" Against the reference setting: {ci(top.diffs['tutorial'])}."
    return text


def resolution(c: Confirmed) -> str:
    """What one image is worth on the splits the comparison is measured on."""
    parts = []
    for name, size in (("val", c.val_size), ("test", c.test_size)):
        if size:
            parts.append(f"{name} {size} images (one image = {100 / size:.2f} pt)")
    return "; ".join(parts)


def confirmed_rows(c: Confirmed) -> list[list[str]]:
    """The table: arm, seeds, test and val mean ± 95 % CI half-width, paired differences."""
    rows = []
    for arm in c.arms:
        cells = [arm.key, arm.label, str(arm.test_stats.n)]
        cells += [mean_ci(arm.test_stats), mean_ci(arm.val_stats)]
        for base_key, _ in BASELINES:
            diff = arm.diffs.get(base_key)
            cells.append(ci(diff) if diff is not None else "")
        rows.append(cells)
    return rows


CONFIRMED_HEAD = [
    "arm",
    "setting",
    "seeds",
    "test acc % (mean ± 95 % CI)",
    "val acc %",
    *(f"Δ test vs {label}" for _, label in BASELINES),
]
