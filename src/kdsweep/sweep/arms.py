"""Which settings the confirmation stage compares (kdsweep.sweep.confirm): the search's
trials ranked, the top ones, the best recipe without its teacher (the ablation), the
reference setting and a CE student at the default recipe."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState


@dataclass(frozen=True)
class Arm:
    key: str  # top1, ablation, tutorial, ce_default
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
        arms.append(Arm(f"top{rank}", label, tuple(_overrides(trial.params)), trial.number))
    if ranked:
        best = ranked[0]
        recipe = _overrides({k: v for k, v in best.params.items() if not k.startswith("loss")})
        arms.append(
            Arm(
                "ablation",
                "same recipe, no teacher (CE)",
                (*recipe, "loss=ce"),
                best.number,
                replaces_loss=True,
            )
        )
    if enqueued:
        reference = {k: v for k, v in enqueued[0].items() if k in space}
        arms.append(
            Arm(
                "tutorial",
                f"reference ({describe_params(reference)})",
                tuple(_overrides(reference)),
            )
        )
    arms.append(Arm("ce_default", "CE student, default recipe", ("loss=ce",), replaces_loss=True))
    unique: dict[tuple[str, ...], Arm] = {}
    for arm in arms:
        unique.setdefault(tuple(sorted(arm.overrides)), arm)
    return list(unique.values())


def _overrides(params: dict[str, Any]) -> list[str]:
    return [f"{name}={value}" for name, value in params.items()]
