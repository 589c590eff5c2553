"""kdsweep's pruning of a study with costs (kdsweep.sweep.cost_pruning): a trial is judged
by its pruner's rule over the finished trials that cost no more than it on every cost.
Pure: frozen trials in, a decision out."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from kdsweep.sweep.cost_pruning import beaten_by_cheaper, cheaper_or_equal, curve

MEDIAN = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)


def trial(
    number: int,
    accuracies: list[float],
    params: float,
    state: TrialState = TrialState.COMPLETE,
    **costs: float,
) -> FrozenTrial:
    """A trial with this val-accuracy curve (epochs 1, 2, ...) and these costs, as
    kdsweep stores them (user attributes history and costs)."""
    all_costs = {"params": params, **costs}
    done = state == TrialState.COMPLETE
    history = [{"epoch": e, "val_acc": acc} for e, acc in enumerate(accuracies, start=1)]
    frozen = optuna.trial.create_trial(
        state=state,
        values=[accuracies[-1], *all_costs.values()] if done else None,
        user_attrs={"costs": all_costs, "history": history},
    )
    frozen.number = number
    return frozen


def pruned(judged: FrozenTrial, finished: list[FrozenTrial], pruner=MEDIAN) -> bool:
    so_far = curve(judged.user_attrs["history"])
    costs = judged.user_attrs["costs"]
    return beaten_by_cheaper(pruner, "maximize", judged.number, so_far, costs, finished)


def test_a_cheap_student_is_never_pruned_for_losing_to_larger_ones() -> None:
    large = [trial(n, [90, 95, 97], params=20_000) for n in range(6)]
    cheap = trial(10, [20, 30], params=2_000)
    assert not pruned(cheap, large)
    # the same curve at the large students' size is pruned by them
    assert pruned(trial(11, [20, 30], params=20_000), large)


def test_the_median_is_over_the_cheaper_or_equal_trials_only() -> None:
    cheaper = [trial(0, [40, 50], params=1_000), trial(1, [50, 60], params=2_000)]
    equal = [trial(2, [60, 70], params=5_000)]
    larger = [trial(n, [95, 99], params=50_000) for n in range(3, 9)]
    finished = cheaper + equal + larger
    peers = cheaper_or_equal(9, {"params": 5_000}, finished)
    assert [t.number for t in peers] == [0, 1, 2]
    # the cheaper-or-equal curves at epoch 2 are 50, 60, 70: median 60
    assert pruned(trial(10, [50, 55], params=5_000), finished)
    assert not pruned(trial(11, [50, 65], params=5_000), finished)
    # at the larger ones' size they count too (median 99): the same curve is pruned
    assert pruned(trial(12, [50, 65], params=50_000), finished)


def test_a_peer_must_cost_no_more_on_every_cost() -> None:
    """Cheaper in parameters but slower is no peer: it cannot prune the faster trial."""
    finished = [trial(n, [90, 95], params=1_000, latency_ms=9.0) for n in range(4)]
    fast = trial(10, [10, 20], params=5_000, latency_ms=1.0)
    assert cheaper_or_equal(fast.number, fast.user_attrs["costs"], finished) == []
    assert not pruned(fast, finished)
    slow = trial(11, [10, 20], params=5_000, latency_ms=9.0)
    assert pruned(slow, finished)


@pytest.mark.parametrize(
    ("peers", "accuracies", "expected"),
    [
        (1, [10, 20], False),  # one cheaper trial finished: under n_startup_trials=2
        (2, [10, 20], True),
        (4, [10], False),  # epoch 1: under n_warmup_steps=2 (steps are epochs 1, 2, ...)
    ],
)
def test_the_pruners_startup_and_warmup_hold_among_the_cheaper(
    peers: int, accuracies: list[float], expected: bool
) -> None:
    finished = [trial(n, [90, 95], params=1_000) for n in range(peers)]
    finished += [trial(n, [90, 95], params=9_000) for n in range(10, 20)]  # larger: no count
    assert pruned(trial(30, accuracies, params=1_000), finished) is expected


def test_pruned_peers_do_not_count_as_finished_for_the_median() -> None:
    """MedianPruner's own rule: its median is over completed trials; a pruned peer's curve
    is kept but not counted (as in a single-objective study)."""
    finished = [trial(n, [90, 95], params=1_000, state=TrialState.PRUNED) for n in range(5)]
    assert not pruned(trial(10, [10, 20], params=1_000), finished)
