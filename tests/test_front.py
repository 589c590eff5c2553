"""The front of a search with costs: dominance, the front's points picked for the
confirmation (spread over the costs, the most accurate among them), the hypervolume, and
the confirmed front the report leads with (the smallest student within tolerance of the
best confirmed val accuracy, and whether its teacher helps). Studies made by hand: two
directions, trials carrying the costs the sweep stores."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from kdsweep.core.errors import KdsweepError
from kdsweep.core.pareto import dominates, hypervolume, non_dominated, spread
from kdsweep.results.confirmed import confirmed_summary, unpaired
from kdsweep.results.front import confirmed_front, front_headline, front_hypervolume, front_rows
from kdsweep.sweep.arms import front_trials, pick_front, plan_front_arms
from kdsweep.sweep.confirm import TOLERANCE_ATTR
from kdsweep.sweep.settings import ConfirmSettings, FrontSettings, SweepSettings

WIDTH = {"model.width": FloatDistribution(0.1, 4.0), "optimizer.lr": FloatDistribution(1e-4, 1.0)}


def test_dominance_and_the_non_dominated_points() -> None:
    assert dominates([1, 2], [1, 3]) and not dominates([1, 3], [1, 3])
    assert not dominates([0, 4], [1, 3]) and not dominates([1, 3], [0, 4])
    points = [[1, 3], [0, 4], [2, 2], [2, 3], [1, 3]]
    assert non_dominated(points) == [0, 1, 2, 4]  # equal points both stay; [2, 3] is beaten


def test_hypervolume_in_two_and_three_dimensions() -> None:
    # A staircase: (1, 3), (2, 1) up to (4, 4): 3x1 + 2x2 = 7 (the overlap counted once).
    assert hypervolume([[1, 3], [2, 1]], [4, 4]) == pytest.approx(3 * 1 + 2 * 3 - 1 * 2 + 0)
    assert hypervolume([[1, 3], [2, 1], [3, 3.5]], [4, 4]) == pytest.approx(7.0)
    assert hypervolume([[5, 0]], [4, 4]) == 0.0  # outside the reference: nothing
    # Two boxes in 3-D: 1x1x1 at the corner and a 2x2x1 slab above it: 1 + 4 - overlap.
    cube = [[0.0, 0.0, 0.0]]
    assert hypervolume(cube, [1, 1, 1]) == pytest.approx(1.0)
    assert hypervolume([[0, 0, 1], [1, 1, 0]], [2, 2, 2]) == pytest.approx(4 + 2 - 1)


def test_spread_picks_the_given_points_then_the_farthest() -> None:
    costs = [[100.0], [200.0], [400.0], [800.0], [1600.0]]
    assert spread(costs, 3, first=[4, 0]) == [4, 0, 2]  # log scale: 400 is the middle
    assert spread(costs, 10) == [0, 4, 2, 1, 3]  # never more than there are
    assert spread(costs, 1, first=[4, 0]) == [4]
    assert spread([], 3) == []


def _search(
    points: list[tuple[float, float, float]], pruned: int = 2, run_ids: Sequence[str] = ()
) -> optuna.Study:
    """A two-direction study: (width, val acc, params) per completed trial, and some
    pruned trials carrying their costs and curve, as the sweep stores them."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("costs", ["params"])
    for i, (width, acc, params) in enumerate(points):
        attrs = {"costs": {"params": params}, "metrics": {"teacher_params": 1e6}}
        if run_ids:
            attrs["mlflow_run_id"] = run_ids[i]
        study.add_trial(
            create_trial(
                params={"model.width": width, "optimizer.lr": 0.01},
                distributions=WIDTH,
                values=[acc, params],
                user_attrs=attrs,
            )
        )
    for i in range(pruned):
        study.add_trial(
            create_trial(
                params={"model.width": 0.3 + i, "optimizer.lr": 0.5},
                distributions=WIDTH,
                state=TrialState.PRUNED,
                intermediate_values={0: 20.0},
                user_attrs={"costs": {"params": 1000.0 * (i + 1)}, "history": [{"epoch": 0}]},
            )
        )
    return study


# width, val acc, params: #3 is beaten by #1 (more accurate and smaller).
SEARCH = [(0.25, 80.0, 1000.0), (0.5, 90.0, 4000.0), (1.0, 95.0, 16000.0), (0.75, 85.0, 9000.0)]
SEARCH += [(2.0, 96.0, 64000.0), (4.0, 96.5, 256000.0)]


def test_the_front_and_its_picks_cheapest_first_with_the_best_among_them() -> None:
    study = _search(SEARCH)
    assert [t.number for t in front_trials(study)] == [0, 1, 2, 4, 5]
    picks = pick_front(study, 3)
    assert [t.number for t in picks] == [0, 2, 5]  # the extremes and the middle (log scale)
    assert [t.number for t in pick_front(study, 1)] == [5]  # today's single best
    arms = plan_front_arms(study, 2)
    assert [a.key for a in arms] == ["front-0", "ablation-0", "front-5", "ablation-5"]
    ablation = arms[1]
    assert ablation.replaces_loss and "loss=ce" in ablation.overrides
    assert "model.width=0.25" in ablation.overrides and "optimizer.lr=0.01" in ablation.overrides
    assert "params=1,000" in arms[0].label


def test_front_hypervolume_of_a_study() -> None:
    study = _search([(0.25, 80.0, 1000.0), (1.0, 90.0, 2000.0)])
    # Minimized: (-80, 1000), (-90, 2000) up to (0, 2200): 80x1200 + 10x200.
    assert front_hypervolume(study) == pytest.approx(80 * 1200 + 10 * 200)
    assert front_hypervolume(study, [0.0, 1500.0]) == pytest.approx(80 * 500)


def _confirm(
    study: optuna.Study,
    val: dict[int, float],
    gain: dict[int, float],
    seeds: tuple[int, ...] = (1000, 1001, 1002),
    tolerance: float | None = 1.0,
) -> optuna.Study:
    """The companion study after confirming ``val``'s front points: each point's KD runs
    at val[trial] (+ a seed's wiggle), test one point lower; its ablation gain[trial]
    points below on test."""
    companion = optuna.create_study(direction="maximize")
    arms = {}
    for arm in plan_front_arms(study, len(val)):
        arms[arm.key] = arm.as_attr()
    companion.set_user_attr("arms", arms)
    companion.set_user_attr("current_arms", list(arms))
    companion.set_user_attr("seeds", list(seeds))
    if tolerance is not None:
        companion.set_user_attr(TOLERANCE_ATTR, tolerance)
    for key, attr in arms.items():
        number = attr["trial"]
        for i, seed in enumerate(seeds):
            wiggle = 0.1 * i
            v = val[number] + wiggle
            test = v - 1 - (gain[number] + wiggle * (i % 2) if key.startswith("ablation") else 0)
            metrics = {"objective": v, "test_acc": test}
            if key.startswith("front"):
                metrics["teacher_params"] = 1_000_000.0
            companion.add_trial(
                create_trial(
                    value=v,
                    user_attrs={"arm": key, "seed": seed, "metrics": metrics},
                )
            )
    return companion


def test_the_confirmed_front_picks_the_smallest_within_tolerance() -> None:
    study = _search(SEARCH)
    picks = [t.number for t in pick_front(study, 3)]
    assert picks == [0, 2, 5]
    # Confirmed: #2 at 95.6, #5 at 96.0 (#2 within 1 point of it), #0 far below: #2, 16x
    # smaller than #5, is the pick.
    companion = _confirm(study, {0: 80.0, 2: 95.6, 5: 96.0}, {0: 3.0, 2: 2.0, 5: 0.0})
    confirmed = confirmed_summary(companion)
    assert confirmed is not None and unpaired(confirmed) is None
    front = confirmed_front(study, confirmed, companion)
    assert front is not None
    assert [p.alias for p in front.points] == ["front-1", "front-2", "front-3"]
    assert [p.trial for p in front.points] == [0, 2, 5]
    assert front.pick is not None and front.pick.trial == 2
    assert front.best_val == pytest.approx(96.1)
    assert front.pick.gain is not None and front.pick.gain.mean == pytest.approx(2.0, abs=0.1)
    text = front_headline(front, {"loss": "kd", "teacher": "deep", "model": "light"})
    assert text.startswith("Smallest confirmed student within 1 point of the best confirmed")
    assert "#2 (width=1, lr=0.01; params=16,000) (loss=kd, teacher=deep, model=light)" in text
    assert "16,000 parameters (1.6 % of the teacher's 1,000,000)" in text
    assert "test accuracy 94.70 % [95 % CI" in text and "3 fresh seed(s)" in text
    assert "p=" in text and "Wilcoxon" in text and "the teacher helps at that size" in text
    rows = front_rows(front)
    assert rows[1][0] == "front-2" and rows[1][-1] == "on the front (pick)"
    assert rows[2][-1] == "on the front"
    # A zero tolerance picks the most accurate; a wide one the smallest.
    companion.set_user_attr(TOLERANCE_ATTR, 0.0)
    front = confirmed_front(study, confirmed_summary(companion), companion)
    assert front is not None and front.pick is not None and front.pick.trial == 5
    companion.set_user_attr(TOLERANCE_ATTR, 50.0)
    front = confirmed_front(study, confirmed_summary(companion), companion)
    assert front is not None and front.pick is not None and front.pick.trial == 0


def test_a_point_the_confirmation_shows_dominated_is_marked() -> None:
    study = _search(SEARCH)
    # #5 is the search's best, but confirms below the smaller #2: dominated.
    companion = _confirm(study, {0: 80.0, 2: 95.6, 5: 94.0}, {0: 3.0, 2: 2.0, 5: 0.5})
    front = confirmed_front(study, confirmed_summary(companion), companion)
    assert front is not None
    assert [p.dominated for p in front.points] == [False, False, True]
    assert front_rows(front)[2][-1] == "dominated"
    assert front.pick is not None and front.pick.trial == 2
    # Without a gain: the teacher does not help at #5's size.
    no_gain = _confirm(study, {0: 80.0, 2: 95.6, 5: 96.0}, {0: 0.0, 2: 0.0, 5: 0.0})
    front = confirmed_front(study, confirmed_summary(no_gain), no_gain)
    assert front is not None
    assert "no significant gain from the teacher at that size" in front_headline(front)


def test_a_single_objective_study_has_no_front() -> None:
    study = optuna.create_study(direction="maximize")
    companion = _confirm(_search(SEARCH), {5: 80.0}, {5: 1.0})
    assert confirmed_front(study, confirmed_summary(companion), companion) is None


def test_front_k_and_tolerance_are_checked() -> None:
    def check(**kw: object) -> None:
        settings = SweepSettings(pruner={})
        settings.confirm = ConfirmSettings(front_k=kw.get("front_k", 5))  # type: ignore[arg-type]
        settings.front = FrontSettings(tolerance=kw.get("tolerance", 1.0))  # type: ignore[arg-type]
        settings.check()

    check()
    check(tolerance=0.0)
    with pytest.raises(KdsweepError, match=r"confirm.front_k=0: give the number of front"):
        check(front_k=0)
    for bad in (math.nan, math.inf, -0.5):
        with pytest.raises(KdsweepError, match="front.tolerance=.* must be a finite number >= 0"):
            check(tolerance=bad)


@pytest.mark.slow  # matplotlib and Optuna's plots: ~4 s
def test_the_report_leads_with_the_front_and_draws_both_fronts(tmp_path) -> None:  # noqa: ANN001
    from kdsweep.report import lead, summarize
    from kdsweep.report.plots import plot_confirmed_front, plot_search_front

    study = _search(SEARCH)
    companion = _confirm(study, {0: 80.0, 2: 95.6, 5: 94.0}, {0: 3.0, 2: 2.0, 5: 0.5})
    summary = summarize(study, companion)
    assert lead(summary).startswith("Smallest confirmed student within 1 point of")
    assert plot_confirmed_front(summary, tmp_path / "front.png") is None
    assert plot_search_front(study, summary, tmp_path / "search_front.png") is None
    assert (tmp_path / "front.png").stat().st_size > 1000
    assert (tmp_path / "search_front.png").stat().st_size > 1000


@pytest.mark.slow  # an MLflow store: ~5 s
@pytest.mark.usefixtures("tracked_workdir")  # tmp_path/mlflow.db seeded
def test_every_confirmed_point_is_a_registered_version_with_its_alias(tmp_path) -> None:  # noqa: ANN001
    from kdsweep.publish import champion_trial
    from kdsweep.registry import register_front, registry_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = registry_client(uri)
    experiment = client.create_experiment("front")
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    run_ids = [client.create_run(experiment).info.run_id for _ in SEARCH]
    for run_id in run_ids:
        client.log_artifact(run_id, str(tmp_path / "MLmodel"), "student")
    study = _search(SEARCH, run_ids=run_ids)
    companion = _confirm(study, {0: 80.0, 2: 95.6, 5: 94.0}, {0: 3.0, 2: 2.0, 5: 0.5})
    front = confirmed_front(study, confirmed_summary(companion), companion)
    assert front is not None and front.pick is not None
    aliases = register_front(client, "s", study, front, {"loss": "kd"})
    assert set(aliases) == {"front-1", "front-2", "front-3", "champion"}
    assert aliases["champion"] == aliases["front-2"]  # the first sentence's pick
    runs = {t.number: t.user_attrs.get("mlflow_run_id") for t in study.get_trials()}
    for point in front.points:
        version = client.get_model_version_by_alias("s-student", point.alias)
        assert version.run_id == runs[point.trial]
        assert version.tags["cost.params"] == f"{point.costs['params']:g}"
        assert version.tags["confirmed.test_acc"].startswith(f"{point.kd.test_stats.mean:.2f} ±")
        assert "confirmed.teacher_gain" in version.tags
        n = point.kd.test_stats.n
        assert (
            f"confirmed over {n} fresh seed(s): test acc {version.tags['confirmed.test_acc']} %"
            in (version.description)
        )
    assert client.get_model_version_by_alias("s-student", "front-3").tags["front.dominated"] == (
        "true"
    )
    assert champion_trial(study, None, companion).number == 2  # type: ignore[union-attr]
    # A rerun whose confirmed front is shorter: the same versions, no stale alias.
    two = _confirm(study, {0: 80.0, 5: 94.0}, {0: 3.0, 5: 0.5})
    shorter = confirmed_front(study, confirmed_summary(two), two)
    assert shorter is not None
    again = register_front(client, "s", study, shorter)
    assert set(again) == {"front-1", "front-2", "champion"}
    assert set(client.get_registered_model("s-student").aliases) == set(again)
    assert len(client.search_model_versions("name='s-student'")) == 3
