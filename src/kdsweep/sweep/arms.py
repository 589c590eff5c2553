"""Which settings the confirmation stage compares (kdsweep.sweep.confirm): the search's
trials ranked, the top ones, the best recipe without its teacher (the ablation), the
reference setting and a CE student at the default recipe. After a search with costs
(several objectives) the arms are the front's points instead, each beside its ablation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from kdsweep.core.pareto import spread
from kdsweep.sweep.jobs import sets_loss

#: The arms of a front point and of its ablation: ``front-<trial>``, ``ablation-<trial>``,
#: named by the search trial they repeat, so that a rerun whose front moved confirms the
#: new points under new names and never counts an old point's runs for another.
FRONT_PREFIX, FRONT_ABLATION_PREFIX = "front-", "ablation-"


@dataclass(frozen=True)
class Arm:
    key: str  # top1, ablation, tutorial, ce_default; front-<trial>, ablation-<trial>
    label: str  # what the report calls it
    overrides: tuple[str, ...]  # on top of the sweep's fixed overrides
    source_trial: int | None = None  # the search trial it repeats
    # Trains another loss than the search's (loss=ce): the sweep's loss settings are not
    # its own (kdsweep.sweep.jobs.job_overrides).
    replaces_loss: bool = False

    def as_attr(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "overrides": list(self.overrides),
            "trial": self.source_trial,
            "replaces_loss": self.replaces_loss,
        }


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, best first: by value (the first objective's direction), ties broken
    by the val loss at the selected epoch (lower first). With 144-image val splits ties are
    common: three trials at 97.92 % differed on test."""
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (sign * float(t.values[0]), _val_loss(t), t.number))


def _val_loss(trial: optuna.trial.FrozenTrial) -> float:
    """The val loss at the epoch whose val accuracy is the trial's value (inf if unknown):
    what breaks a tie in the objective."""
    epoch = (trial.user_attrs.get("metrics") or {}).get("best_epoch")
    for record in trial.user_attrs.get("history") or []:
        if epoch is not None and int(record.get("epoch", -1)) == int(epoch):
            return float(record.get("val_loss", math.inf))
    return math.inf


def describe_params(params: dict[str, Any]) -> str:
    """``temperature=2.4, lr=0.0054``: a trial's parameters, short, at 3 significant digits."""
    short = {name.split(".")[-1]: value for name, value in params.items()}
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in short.items()
    )


def plan_arms(
    study: optuna.Study, top_k: int, enqueued: Sequence[dict[str, Any]], space: Sequence[str]
) -> list[Arm]:
    """The arms to confirm, from the search's results (deduplicated by overrides)."""
    arms: list[Arm] = []
    ranked = ranked_trials(study)
    for rank, trial in enumerate(ranked[:top_k], start=1):
        label = f"#{trial.number} ({describe_params(trial.params)})"
        arms.append(Arm(f"top{rank}", label, tuple(param_overrides(trial.params)), trial.number))
    if ranked:
        arms.append(_ablation("ablation", "same recipe, no teacher (CE)", ranked[0]))
    if enqueued:
        reference = {k: v for k, v in enqueued[0].items() if k in space}
        arms.append(
            Arm(
                "tutorial",
                f"reference ({describe_params(reference)})",
                tuple(param_overrides(reference)),
            )
        )
    arms.append(Arm("ce_default", "CE student, default recipe", ("loss=ce",), replaces_loss=True))
    unique: dict[tuple[str, ...], Arm] = {}
    for arm in arms:
        unique.setdefault(tuple(sorted(arm.overrides)), arm)
    return list(unique.values())


def is_multi_objective(study: optuna.Study) -> bool:
    """Whether the search weighed costs beside its objective (hydra.sweeper.costs)."""
    return len(study.directions) > 1


def cost_names(study: optuna.Study) -> list[str]:
    """The costs the search minimized beside its objective, in the order of its values
    (study user attr ``costs``; named cost1, cost2... for a study that recorded none)."""
    names = [str(n) for n in study.user_attrs.get("costs") or []]
    extra = len(study.directions) - 1
    return names if len(names) == extra else [f"cost{i}" for i in range(1, extra + 1)]


def trial_costs(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """A completed trial's costs, by name: its values after the objective."""
    return dict(zip(cost_names(study), (float(v) for v in trial.values[1:]), strict=True))


def minimized(study: optuna.Study, values: Sequence[float]) -> list[float]:
    """A trial's values with every objective turned to one minimized (maximized negated)."""
    directions = study.directions
    return [
        -float(v) if d == optuna.study.StudyDirection.MAXIMIZE else float(v)
        for v, d in zip(values, directions, strict=True)
    ]


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The search's front: the completed trials no other dominates (Optuna's
    ``best_trials``), cheapest first (by the costs in order, then the objective)."""
    front = [t for t in study.best_trials if all(math.isfinite(v) for v in t.values)]
    return sorted(front, key=lambda t: (*t.values[1:], minimized(study, t.values)[0], t.number))


def pick_front(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """At most ``k`` points of the front spread over the costs (kdsweep.core.pareto.spread):
    the most accurate point (today's single best: ties to the lower val loss) and the
    cheapest first, then each time the one farthest from those picked. Cheapest first."""
    front = front_trials(study)
    if not front:
        return []
    numbers = [t.number for t in front]
    best = next(t for t in ranked_trials(study) if t.number in numbers)
    first = [numbers.index(best.number), 0]
    picked = spread([t.values[1:] for t in front], k, first)
    return [front[i] for i in sorted(picked)]


def cost_amount(value: float) -> str:
    """A cost as people read it: ``12,345`` from 100 up, ``0.21`` below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def describe_costs(costs: dict[str, float]) -> str:
    """``params=12,345, latency_ms=0.21``: a point's costs, short."""
    return ", ".join(f"{name}={cost_amount(value)}" for name, value in costs.items())


def plan_front_arms(study: optuna.Study, front_k: int) -> list[Arm]:
    """The arms that confirm a search with costs: at most ``front_k`` points of its front
    (pick_front), each beside its ablation: the same student and recipe without the
    teacher (loss=ce), which tells whether the teacher helps at that size."""
    arms: list[Arm] = []
    for trial in pick_front(study, front_k):
        costs = describe_costs(trial_costs(study, trial))
        label = f"#{trial.number} ({describe_params(trial.params)}; {costs})"
        arms.append(
            Arm(
                f"{FRONT_PREFIX}{trial.number}",
                label,
                tuple(param_overrides(trial.params)),
                trial.number,
            )
        )
        label = f"#{trial.number} without teacher (CE)"
        arms.append(_ablation(f"{FRONT_ABLATION_PREFIX}{trial.number}", label, trial))
    return arms


def _ablation(key: str, label: str, trial: optuna.trial.FrozenTrial) -> Arm:
    """The trial's recipe without its teacher: its parameters less the loss's, with CE."""
    recipe = param_overrides({k: v for k, v in trial.params.items() if not sets_loss(k)})
    return Arm(key, label, (*recipe, "loss=ce"), trial.number, replaces_loss=True)


def param_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as the overrides that set them (``loss.temperature=2.4``)."""
    return [f"{name}={value}" for name, value in params.items()]
