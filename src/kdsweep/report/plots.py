"""The figures of the sweep report. ``optuna.visualization.matplotlib`` draws the history,
the importances, the objective against each parameter and every trial's val accuracy per
epoch; the baselines, pruned trials and the best and tutorial trials are added to the Axes
it returns. The best trial's learning curves (losses too), which Optuna has no plot for,
are drawn by hand. Each ``plot_*`` writes one PNG and returns None,
or returns why it drew nothing: :func:`kdsweep.report.render.write_report_files` shows
those reasons as notes. matplotlib and Optuna's plots are imported only when drawing.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdsweep.core.errors import one_line
from kdsweep.core.files import atomic_save_figure
from kdsweep.core.values import finite_number
from kdsweep.results.summary import Summary, TrialRow
from kdsweep.sweep.arms import cost_names

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OBJECTIVE = "val acc (%)"
#: How the best and the tutorial-default trials stand out on a parameter's plot.
MARKS = {
    "best": {"marker": "*", "s": 180, "color": "#3a7d44"},
    "tutorial": {"marker": "D", "s": 50, "color": "#2e86c1"},
}


@contextlib.contextmanager
def _pyplot() -> Iterator[Any]:
    """pyplot on the Agg backend (the report writes files and never opens a window), in the
    ggplot style Optuna's plots use. Optuna's global ``plt.style.use`` is undone on exit,
    and every figure opened inside is closed, even when drawing fails half-way."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a process that chose its backend keeps it
        matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    opened = set(plt.get_fignums())
    try:
        with warnings.catch_warnings(), plt.style.context("ggplot"):
            # Optuna's matplotlib plots are marked experimental and would warn on every call.
            warnings.simplefilter("ignore", ExperimentalWarning)
            # Its slice plot of a single trial sets equal x limits, widened again after.
            warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
            yield plt
    finally:
        for number in set(plt.get_fignums()) - opened:
            plt.close(number)


def _first_objective(
    study: optuna.Study, minimized: bool = False
) -> Callable[[optuna.trial.FrozenTrial], float] | None:
    """What Optuna should plot: None for the objective, or the first of several (as the
    report); ``minimized`` turns a maximized one so that lower is better, as PED-ANOVA
    takes a target it is given."""
    if len(study.directions) == 1:
        return None
    sign = -1.0 if minimized and study.directions[0].name == "MAXIMIZE" else 1.0
    return lambda t: sign * t.values[0]


def _integer_x(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Figure, path: Path) -> None:
    # A tight box: Optuna's figures have no layout engine, and long names would be cut off.
    atomic_save_figure(
        lambda handle: fig.savefig(handle, format="png", dpi=100, bbox_inches="tight"), path
    )


def _finish(ax: Axes, title: str, path: Path, ylabel: str = OBJECTIVE) -> None:
    """The labels (y is val accuracy unless told), a legend; saved."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for points in ax.collections:  # Optuna labels its infeasible trials even when none is
        if not len(points.get_offsets()):
            points.set_label(None)
    ax.legend(fontsize=7, loc="best")
    _save(ax.figure, path)


def _pruned(summary: Summary) -> list[TrialRow]:
    """Pruned trials that reported a value: they are drawn at their last one."""
    return [r for r in summary.rows if r.state == "PRUNED" and r.intermediate]


def _mark_pruned(ax: Axes, rows: list[TrialRow], x: Callable[[TrialRow], Any], label: str) -> None:
    """Pruned trials as grey crosses at their last value."""
    ys = [r.intermediate[max(r.intermediate)] for r in rows]
    ax.scatter([x(r) for r in rows], ys, marker="x", color="#aaa", label=label)


def _baseline_lines(ax: Axes, summary: Summary) -> None:
    styles = (("teacher", "Teacher", "--", "#b03a2e"), ("student_ce", "CE student", ":", "#555"))
    for key, label, style, color in styles:
        val = summary.baselines.get(key, {}).get("val_acc")
        if val is not None:
            ax.axhline(val, ls=style, color=color, lw=1.2, label=f"{label} {val:.2f}")
    if summary.tutorial is not None and summary.tutorial.value is not None:
        val = summary.tutorial.value
        ax.axhline(val, ls="-.", color="#2e86c1", lw=1.2, label=f"tutorial KD {val:.2f}")


def plot_history(study: optuna.Study, summary: Summary, path: Path) -> str | None:
    done, pruned = summary.scored, _pruned(summary)
    if not done and not pruned:
        return "No optimization history: no trial has a value yet."
    from optuna.visualization.matplotlib import plot_optimization_history

    with _pyplot() as plt:
        if done:  # Optuna's history of completed trials and the best so far
            target = _first_objective(study)
            ax = plot_optimization_history(study, target=target, target_name=OBJECTIVE)
        else:  # (it would only warn that there is none)
            ax = plt.subplots()[1]
            ax.set_xlabel("Trial")
        if pruned:
            _mark_pruned(ax, pruned, lambda r: r.number, "pruned (last epoch)")
        _baseline_lines(ax, summary)
        low, high = zoom_band(summary)
        if low is not None and high is not None:
            # Trials below the band are shown on its edge, still counted.
            for points in ax.collections:
                points.set_offsets(np.maximum(points.get_offsets(), (-np.inf, low)))
            ax.set_ylim(low, high)
        _integer_x(ax)
        _finish(ax, "Optimization history", path)
    return None


def zoom_band(summary: Summary) -> tuple[float | None, float | None]:
    """The val accuracy band where the completed trials' upper half and the baselines lie,
    with a margin: pruned and poor trials far below would squeeze the differences that
    matter into a few pixels (they are drawn at the bottom edge instead)."""
    values = sorted(r.value for r in summary.scored)
    refs = [b.get("val_acc") for b in summary.baselines.values()]
    if summary.tutorial is not None:
        refs.append(summary.tutorial.value)
    refs = [v for v in refs if v is not None]
    if not values:
        return None, None
    upper_half = values[len(values) // 2 :]
    low, high = min(upper_half + refs), max(values + refs)
    margin = max(0.5, 0.1 * (high - low))
    return max(0.0, low - margin), min(100.0, high + margin)


#: Below this many completed trials an importance estimate (a model fitted to the trials)
#: ranks noise: with the 4 parameters of hparams_search=kd, 2 points a parameter.
MIN_TRIALS_FOR_IMPORTANCE = 8


def plot_importance(study: optuna.Study, summary: Summary, path: Path) -> str | None:
    done = summary.scored
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed"
            f" trials ({len(done)} so far): with fewer, the importance model is fitted to"
            " a handful of points and ranks noise."
        )
    # Only parameters every completed trial has (conditional ones are left out) and
    # that actually vary: a constant parameter has no importance to measure.
    shared = set.intersection(*(set(r.params) for r in done))
    varying = [
        p for p in summary.param_names if p in shared and len({repr(r.params[p]) for r in done}) > 1
    ]
    if len(varying) < 2:
        return "Parameter importances need at least 2 parameters that vary across trials."
    from optuna.visualization.matplotlib import plot_param_importances

    with _pyplot():
        # PED-ANOVA (Optuna's default) ranks what makes a target it is given low, and says so
        # on every call: a maximized one is turned (minimized=True).
        warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes", UserWarning)
        try:
            target = _first_objective(study, minimized=True)
            ax = plot_param_importances(study, params=varying, target=target, target_name=OBJECTIVE)
        except Exception as exc:
            return f"Parameter importances could not be computed: {one_line(exc, limit=200)}"
        _save(ax.figure, path)
    return None


def _readable_log_x(ax: Axes) -> None:
    """Label a log x axis at 1, 2 and 5 of each decade in plain numbers (0.0005, not
    5x10^-4), without the minor labels that would overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def param_file(name: str) -> str:
    return f"param_{re.sub(r'[^A-Za-z0-9_-]+', '_', name).strip('_') or 'param'}.png"


def plot_param(study: optuna.Study, summary: Summary, name: str, path: Path) -> str | None:
    """Objective against one parameter: Optuna's slice plot (log x for a log-sampled one,
    a strip per choice for a categorical one), pruned trials at their last value, and the
    best and tutorial-default trials marked."""
    if not any(name in r.params for r in summary.scored):
        return f"No completed trial has {name}."
    from matplotlib.category import UnitData
    from optuna.visualization.matplotlib import plot_slice

    with _pyplot():
        target = _first_objective(study)
        ax = plot_slice(study, params=[name], target=target, target_name=OBJECTIVE)
        # Optuna puts a categorical value on its axis by its repr.
        on_x = repr if isinstance(ax.xaxis.get_units(), UnitData) else (lambda value: value)
        # Pruned trials show where the search gave up, which the completed ones alone hide.
        pruned = [r for r in _pruned(summary) if name in r.params]
        if pruned:
            _mark_pruned(ax, pruned, lambda r: on_x(r.params[name]), "pruned (last value)")
        ax.autoscale(axis="x")  # pruned trials may lie outside the completed ones' range
        for label, row in (("best", summary.best), ("tutorial", summary.tutorial)):
            if row is not None and row.value is not None and name in row.params:
                x, y = on_x(row.params[name]), row.value
                ax.scatter([x], [y], zorder=4, label=label, **MARKS[label])
        if ax.get_xscale() == "log":
            _readable_log_x(ax)
        _finish(ax, f"Objective vs {name}", path)
    return None


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(finite_number(h.get("epoch")), finite_number(h.get(key))) for h in history]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_curves(summary: Summary, path: Path) -> str | None:
    best = summary.best
    if best is None or not (best.history or best.intermediate):
        return "No learning curves: the best trial has no recorded history."
    with _pyplot() as plt:
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(8.0, 3.2), layout="constrained")
        for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
            xs, ys = _series(best.history, key)
            if xs:
                loss_ax.plot(xs, ys, marker="o", ms=3, label=label)
        _integer_x(loss_ax)
        _integer_x(acc_ax)
        loss_ax.set_xlabel("epoch")
        loss_ax.set_title("Loss")
        if loss_ax.lines:
            loss_ax.legend(fontsize=7)
        else:
            loss_ax.text(0.5, 0.5, "no losses recorded", ha="center", transform=loss_ax.transAxes)
        xs, ys = _series(best.history, "val_acc")
        if not xs:
            xs, ys = list(best.intermediate), list(best.intermediate.values())
        acc_ax.plot(xs, ys, marker="o", ms=3, color="#3a7d44", label="val acc")
        _baseline_lines(acc_ax, summary)
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("%")
        acc_ax.set_title("Validation accuracy")
        acc_ax.legend(fontsize=7)
        fig.suptitle(f"Best trial #{best.number}: learning curves", fontsize=11)
        _save(fig, path)
    return None


#: How a trial's curve is drawn on the all-curves plot, by state: (line style, colour, alpha).
CURVE_STYLES = {"COMPLETE": ("-", "#1f77b4", 0.5), "PRUNED": ("--", "#999", 0.8)}
FAILED_STYLE = (":", "#b03a2e", 0.8)


def plot_all_curves(study: optuna.Study, summary: Summary, path: Path) -> str | None:
    """Optuna's intermediate values (the val accuracy each epoch reported) of every trial,
    restyled by state: pruned ones dashed where they stopped, the best trial in bold.
    Optuna leaves failed trials out; their partial curves are added."""
    if not any(row.intermediate for row in summary.rows):
        return "No per-epoch curves recorded."
    from optuna.visualization.matplotlib import plot_intermediate_values

    rows = {row.number: row for row in summary.rows}
    with _pyplot():
        ax = plot_intermediate_values(study)
        ax.figure.set_size_inches(5.6, 3.4)
        for row in summary.rows:
            if row.state == "FAIL" and row.intermediate:
                steps = sorted(row.intermediate)
                ax.plot(steps, [row.intermediate[s] for s in steps], label=f"Trial{row.number}")
        labelled: set[str] = set()
        for line in ax.get_lines():  # Optuna labels each trial's line "Trial<number>"
            row = rows.get(int(line.get_label().removeprefix("Trial")))
            state = row.state if row is not None else "RUNNING"
            if row is not None and row is summary.best:
                line.set(color="#3a7d44", lw=2.2, alpha=1.0, zorder=3, label=f"best #{row.number}")
            else:
                ls, color, alpha = CURVE_STYLES.get(state, FAILED_STYLE)
                label = state.lower() if state not in labelled else "_nolegend_"
                line.set(ls=ls, color=color, alpha=alpha, lw=1, label=label)
                labelled.add(state)
            line.set_marker("")
        _integer_x(ax)
        ax.set_xlabel("epoch")
        _finish(ax, "Validation accuracy per epoch, all trials", path)
    return None


def plot_confirmed_front(summary: Summary, path: Path) -> str | None:
    """The confirmed front: each point's KD test accuracy (mean, 95 % interval bars)
    against its first cost, the same students without the teacher under it, dominated
    points hollow and the first sentence's pick starred."""
    front = summary.front
    if front is None or not front.costs:
        return "No confirmed front: the search had no costs or nothing was confirmed."
    cost = front.costs[0]
    kd = [p for p in front.points if p.kd.test and cost in p.costs]
    if not kd:
        return "No confirmed front yet: no front point has a confirmation run."
    with _pyplot() as plt:
        ax = plt.subplots(figsize=(7, 4.5))[1]

        def curve(points: list, arms: list, label: str, **style: Any) -> None:
            xs = [p.costs[cost] for p in points]
            stats = [arm.test_stats for arm in arms]
            ys = [s.mean for s in stats]
            errors = [0.0 if s.n < 2 else s.half_width for s in stats]
            ax.errorbar(xs, ys, yerr=errors, capsize=3, label=label, **style)

        curve(kd, [p.kd for p in kd], "with the teacher (KD)", color="#3a7d44", marker="o")
        without = [p for p in kd if p.ablation is not None and p.ablation.test]
        if without:
            arms = [p.ablation for p in without]
            curve(without, arms, "same student, no teacher (CE)", color="#777", marker="s", ls="--")
        dominated = [p for p in kd if p.dominated]
        if dominated:
            ax.scatter(
                [p.costs[cost] for p in dominated],
                [p.kd.test_stats.mean for p in dominated],
                s=120,
                facecolors="none",
                edgecolors="#b03a2e",
                label="dominated when confirmed",
                zorder=3,
            )
        if front.pick is not None and front.pick in kd:
            ax.scatter(
                [front.pick.costs[cost]],
                [front.pick.kd.test_stats.mean],
                label=f"pick ({front.pick.alias})",
                zorder=4,
                **MARKS["best"],
            )
        if min(p.costs[cost] for p in kd) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(cost)
        _finish(ax, "Confirmed front", path, ylabel="test acc (%), mean and 95 % CI")
    return None


def plot_search_front(study: optuna.Study, summary: Summary, path: Path) -> str | None:
    """The search's own front, drawn by Optuna (plot_pareto_front): every completed
    trial's objective against its costs, the non-dominated ones highlighted."""
    if len(study.directions) < 2:
        return "No search front: the search had one objective."
    if not summary.scored:
        return "No search front: no trial completed."
    from optuna.visualization.matplotlib import plot_pareto_front

    names = [*cost_names(study), OBJECTIVE]
    if len(names) > 3:  # Optuna draws 2 or 3 objectives
        return "The search's front has more than 3 objectives: not drawn (see the table)."
    with _pyplot():
        # The costs on x (and y), the accuracy last: the front read as accuracy against size.
        ax = plot_pareto_front(
            study, targets=lambda t: (*t.values[1:], t.values[0]), target_names=names
        )
        if len(names) == 2:
            costs = [t.values[1] for t in study.best_trials]
            if costs and min(costs) > 0:  # sizes grow by factors, as on the confirmed front
                ax.set_xscale("log")
        _save(ax.figure, path)
    return None
