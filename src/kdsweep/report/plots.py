"""The figures of the sweep report, drawn with matplotlib (imported only when drawing).

Each ``plot_*`` writes one PNG and returns None, or returns why it drew nothing;
:func:`kdsweep.report.render.write_report_files` collects those reasons as notes in the
report. ``param_file`` names the PNG of one parameter's plot.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsweep.core.files import atomic_save_figure
from kdsweep.core.secrets import mask_secrets
from kdsweep.results.summary import Summary, TrialRow, finite

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure


def _figure(width: float = 5.6, height: float = 3.4, fixed: bool = False) -> Figure:
    """A bare Figure with an Agg canvas: no pyplot, no global backend switch, thread-safe.

    ``fixed`` margins instead of constrained layout halve the drawing time; they suit the
    simple one-axes plots drawn once per parameter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=None if fixed else "constrained")
    if fixed:
        fig.subplots_adjust(left=0.16, right=0.96, bottom=0.15, top=0.9)
    FigureCanvasAgg(fig)
    return fig


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Figure, path: Path) -> None:
    atomic_save_figure(lambda handle: fig.savefig(handle, format="png", dpi=100), path)


def _finish(fig: Figure, ax: Any, xlabel: str, title: str, path: Path) -> None:
    """Integer x ticks, the labels (y is always val accuracy), a legend; saved."""
    _integer_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val acc (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def _baseline_lines(ax: Any, summary: Summary) -> None:
    styles = (("teacher", "Teacher", "--", "#b03a2e"), ("student_ce", "CE student", ":", "#555"))
    for key, label, style, color in styles:
        val = summary.baselines.get(key, {}).get("val_acc")
        if val is not None:
            ax.axhline(val, ls=style, color=color, lw=1.2, label=f"{label} {val:.2f}")
    if summary.tutorial is not None and summary.tutorial.value is not None:
        val = summary.tutorial.value
        ax.axhline(val, ls="-.", color="#2e86c1", lw=1.2, label=f"tutorial KD {val:.2f}")


# Each plot_* writes its PNG and returns None, or returns why it drew nothing.


def plot_history(summary: Summary, path: Path) -> str | None:
    done = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
    pruned = [r for r in summary.rows if r.state == "PRUNED" and r.intermediate]
    if not done and not pruned:
        return "No optimization history: no trial has a value yet."
    fig = _figure()
    ax = fig.add_subplot()
    floor = zoom_band(summary)[0]
    if pruned:
        xs = [r.number for r in pruned]
        ys = [r.intermediate[max(r.intermediate)] for r in pruned]
        if floor is not None:  # below the band: shown on its edge, still counted
            ys = [max(y, floor) for y in ys]
        ax.scatter(xs, ys, marker="x", color="#aaa", label="pruned (last epoch)")
    if done:
        xs = [r.number for r in done]
        ys = [r.value for r in done]
        shown = [max(y, floor) for y in ys] if floor is not None else ys
        ax.scatter(xs, shown, color="#1f77b4", zorder=3, label="completed")
        pick = min if summary.direction == "minimize" else max
        running = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, running, where="post", color="#3a7d44", lw=2, label="best so far")
    _baseline_lines(ax, summary)
    low, high = zoom_band(summary)
    if low is not None and high is not None:
        ax.set_ylim(low, high)
    _finish(fig, ax, "trial", "Optimization history", path)
    return None


def zoom_band(summary: Summary) -> tuple[float | None, float | None]:
    """The val accuracy band where the completed trials' upper half and the baselines lie,
    with a margin: pruned and poor trials far below would squeeze the differences that
    matter into a few pixels (they are drawn at the bottom edge instead)."""
    values = sorted(r.value for r in summary.rows if r.state == "COMPLETE" and r.value is not None)
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
    done = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
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
    try:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
            importances = optuna.importance.get_param_importances(
                study, params=varying, target=target
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"Parameter importances could not be computed: {mask_secrets(first)[:200]}"
    names = list(importances)[::-1]
    fig = _figure(height=max(2.2, 0.45 * len(names) + 1))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (PED-ANOVA, normalized)")
    ax.set_title("Parameter importances")
    _save(fig, path)
    return None


def _is_log(study_rows: list[optuna.trial.FrozenTrial], name: str, xs: list[float]) -> bool:
    for trial in study_rows:
        dist = trial.distributions.get(name)
        if dist is not None:
            return bool(getattr(dist, "log", False))
    return name.endswith("lr") and min(xs) > 0


def _readable_log_x(ax: Any) -> None:
    """A log x axis labelled at 1, 2 and 5 of each decade in plain numbers (0.0005, not
    5x10^-4), without the minor labels that would overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def param_file(name: str) -> str:
    return f"param_{re.sub(r'[^A-Za-z0-9_-]+', '_', name).strip('_') or 'param'}.png"


def plot_param(
    trials: list[optuna.trial.FrozenTrial], summary: Summary, name: str, path: Path
) -> str | None:
    """Objective against one parameter: a scatter (log x for log-sampled ones), or a
    strip per choice for a categorical one."""
    done = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
    points = [(r.params[name], r.value, r) for r in done if name in r.params]
    if not points:
        return f"No completed trial has {name}."
    # Pruned trials at their last reported value, marked: they show where the search
    # gave up, which the completed ones alone hide.
    pruned = [
        (r.params[name], r.intermediate[max(r.intermediate)], r)
        for r in summary.rows
        if r.state == "PRUNED" and r.intermediate and name in r.params
    ]
    numeric = all(finite(x) is not None for x, _, _ in points)
    fig = _figure(width=4.4, height=3.2, fixed=True)
    ax = fig.add_subplot()
    numeric = numeric and all(finite(x) is not None for x, _, _ in pruned)
    if numeric:
        xs = [float(x) for x, _, _ in points]
        pxs = [float(x) for x, _, _ in pruned]
        if _is_log(trials, name, xs) and min(xs + pxs) > 0:
            _readable_log_x(ax)
    else:
        cats = sorted({str(x) for x, _, _ in points + pruned})
        xs = [float(cats.index(str(x))) for x, _, _ in points]
        pxs = [float(cats.index(str(x))) for x, _, _ in pruned]
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    if pruned:
        pys = [y for _, y, _ in pruned]
        ax.scatter(pxs, pys, marker="x", color="#aaa", label="pruned (last value)")
    ys = [y for _, y, _ in points]
    ax.scatter(xs, ys, color="#1f77b4", alpha=0.8, label="completed trial")
    for x, y, (_, _, r) in zip(xs, ys, points, strict=True):
        if r is summary.best:
            ax.scatter([x], [y], marker="*", s=180, color="#3a7d44", zorder=4, label="best")
        if r is summary.tutorial:
            ax.scatter([x], [y], marker="D", s=50, color="#2e86c1", zorder=4, label="tutorial")
    ax.set_xlabel(name)
    ax.set_ylabel("val acc (%)")
    ax.set_title(f"Objective vs {name}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return None


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(finite(h.get("epoch")), finite(h.get(key))) for h in history]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_curves(summary: Summary, path: Path) -> str | None:
    best = summary.best
    if best is None or not (best.history or best.intermediate):
        return "No learning curves: the best trial has no recorded history."
    fig = _figure(width=8.0, height=3.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
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


def _curve_of(row: TrialRow) -> tuple[list[float], list[float]]:
    xs, ys = _series(row.history, "val_acc")
    if not xs and row.intermediate:
        steps = sorted(row.intermediate)
        xs, ys = [float(s) for s in steps], [row.intermediate[s] for s in steps]
    return xs, ys


def plot_all_curves(summary: Summary, path: Path) -> str | None:
    curves = [(row, *_curve_of(row)) for row in summary.rows]
    curves = [c for c in curves if c[1]]
    if not curves:
        return "No per-epoch curves recorded."
    fig = _figure()
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for row, xs, ys in curves:
        if row is summary.best:
            continue
        style = {"COMPLETE": ("-", "#1f77b4", 0.5), "PRUNED": ("--", "#999", 0.8)}
        ls, color, alpha = style.get(row.state, (":", "#b03a2e", 0.8))
        label = row.state.lower() if row.state not in labelled else None
        labelled.add(row.state)
        ax.plot(xs, ys, ls=ls, color=color, alpha=alpha, lw=1, label=label)
    for row, xs, ys in curves:
        if row is summary.best:
            ax.plot(xs, ys, color="#3a7d44", lw=2.2, label=f"best #{row.number}")
    _finish(fig, ax, "epoch", "Validation accuracy per epoch, all trials", path)
    return None
