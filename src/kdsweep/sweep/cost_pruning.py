"""Pruning a study that weighs costs beside its objective (``hydra.sweeper.costs``).

Optuna cannot prune a study with several directions (``Trial.report`` raises there). In
such a study a large student's curve says nothing about whether a small one is worth
finishing: a trial is judged only against the trials that cost no more than it on every
cost, by its pruner's own rule (median by default, its ``n_startup_trials`` and
``n_warmup_steps`` included). The pruner sees an in-memory single-objective study of
those trials' curves and decides as it would in a study of them alone; so a cheap
student is never pruned for losing to a larger one, and before ``n_startup_trials`` of
its cheaper-or-equal peers have finished it is not pruned at all.

A trial's curve is its ``history`` user attribute (each epoch's val accuracy), never its
intermediate values: Optuna's TPE reads a pruned trial's intermediate values as a
single-objective study's, and fails in a study with several directions.

Pure: it reads finished trials (their ``costs`` and ``history`` user attributes) and
writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

#: The trial's user attribute holding its costs ({name: value}), set before it trains.
COSTS_ATTR = "costs"
#: Pruners whose decision rests on rung bookkeeping of their own (trial system attributes
#: and brackets keyed by trial number), which a study of the cheaper trials cannot carry.
RUNG_PRUNERS = (optuna.pruners.SuccessiveHalvingPruner, optuna.pruners.HyperbandPruner)


def curve(history: Sequence[Mapping[str, Any]] | None) -> dict[int, float]:
    """Val accuracy by epoch, from a trial's ``history`` (kdsweep.sweep.trial_hooks)."""
    return {int(record["epoch"]): float(record["val_acc"]) for record in history or []}


def costs_no_more(peer: Mapping[str, float] | None, costs: Mapping[str, float]) -> bool:
    """Whether ``peer`` costs no more than ``costs`` on every cost (a peer whose costs
    are unknown is no peer)."""
    if not peer:
        return False
    return all(name in peer and float(peer[name]) <= float(value) for name, value in costs.items())


def cheaper_or_equal(
    number: int, costs: Mapping[str, float], finished: Iterable[FrozenTrial]
) -> list[FrozenTrial]:
    """The finished trials (other than trial ``number``) that cost no more than ``costs``."""
    return [
        peer
        for peer in finished
        if peer.number != number
        and peer.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and costs_no_more(peer.user_attrs.get(COSTS_ATTR), costs)
    ]


def beaten_by_cheaper(
    pruner: optuna.pruners.BasePruner,
    direction: optuna.study.StudyDirection | str,
    number: int,
    so_far: Mapping[int, float],
    costs: Mapping[str, float],
    finished: Iterable[FrozenTrial],
) -> bool:
    """Whether ``pruner`` prunes trial ``number`` (its val accuracy by epoch so far:
    ``so_far``) in a study of the finished trials that cost no more than ``costs``, whose
    objective goes in ``direction``."""
    peers = cheaper_or_equal(number, costs, finished)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    try:
        view = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(previous)
    for peer in peers:
        complete = peer.state == TrialState.COMPLETE
        view.add_trial(
            optuna.trial.create_trial(
                state=peer.state,
                value=float(peer.values[0]) if complete else None,
                intermediate_values=curve(peer.user_attrs.get("history")),
            )
        )
    view.add_trial(
        optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values=dict(so_far))
    )
    judged = view.get_trials(deepcopy=False)[-1]
    return bool(pruner.prune(view, judged))
