"""The multirun report of a sweep, rebuilt from the stored Optuna study alone (no training).

``write_report(study, out_dir)`` writes into ``out_dir``:

- ``index.html``: headline (best trial against the teacher, the CE-only student and the
  tutorial-default KD student), the best trial's parameters, the plots, all trials;
- ``report.md``: the same headline and trial table in Markdown;
- ``trials.csv``: one row per trial;
- PNGs: ``history.png`` (objective per trial, running best, baselines),
  ``importance.png`` (parameter importances), ``param_<name>.png`` (objective against each
  parameter), ``curves.png`` (the best trial's learning curves) and ``all_curves.png``
  (validation accuracy per epoch of every trial, pruned ones partial).

What the sweeper stores and this module reads: study user attrs ``baselines``,
``tutorial_trial_number``, ``search_space``, ``n_trials``, ``sampler``,
``mlflow_parent_run_id``; trial user attrs ``mlflow_run_id``, ``history``, ``metrics``,
``error``. Every one of them may be missing. Every file is written atomically.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsweep.files import atomic_save_figure, atomic_write_text
from kdsweep.secrets import mask_secrets

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# Parameters the KD sweeps use, in the order a reader expects; others follow sorted.
PARAM_ORDER = (
    "loss.temperature",
    "loss.soft_target_weight",
    "loss.ce_weight",
    "loss.hidden_weight",
    "loss.margin",
    "loss.p",
    "optimizer",
    "optimizer.lr",
)
FIXED_PNGS = ("history.png", "importance.png", "curves.png", "all_curves.png")
DASH = "–"


@dataclass
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]
    value: float | None  # the objective (validation accuracy, %)
    test_acc: float | None
    duration_s: float | None
    last_epoch: int | None
    note: str  # error of a failed trial, epoch of a pruned one
    mlflow_run_id: str | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    intermediate: dict[int, float]
    start: dt.datetime | None
    complete: dt.datetime | None


@dataclass
class Summary:
    study_name: str
    sampler: str
    direction: str  # "maximize" or "minimize"
    n_planned: int | None
    counts: dict[str, int]
    rows: list[TrialRow]
    param_names: list[str]
    best: TrialRow | None
    tutorial_number: int | None
    tutorial: TrialRow | None
    baselines: dict[str, dict[str, float | None]]
    search_space: dict[str, str]
    mlflow_parent_run_id: str | None
    gain_val: float | None = None  # best minus tutorial default, in points
    gain_test: float | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, a string...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _objective(trial: optuna.trial.FrozenTrial) -> float | None:
    values = trial.values
    return _number(values[0]) if values else None


def _row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    attrs = trial.user_attrs
    metrics = attrs.get("metrics") if isinstance(attrs.get("metrics"), dict) else {}
    history = [h for h in attrs.get("history") or [] if isinstance(h, dict)]
    intermediate = {
        int(k): float(v) for k, v in trial.intermediate_values.items() if _number(v) is not None
    }
    start, complete = trial.datetime_start, trial.datetime_complete
    duration = (complete - start).total_seconds() if start and complete else None
    if duration is None:
        duration = _number(metrics.get("wall_seconds"))
    epochs = [int(h["epoch"]) for h in history if _number(h.get("epoch")) is not None]
    last_epoch = max([*intermediate, *epochs], default=None)
    state = trial.state.name
    note = ""
    if state == "FAIL":
        note = mask_secrets(str(attrs.get("error") or "failed"))
    elif state == "PRUNED":
        note = f"pruned after epoch {last_epoch}" if last_epoch is not None else "pruned"
    elif state == "RUNNING":
        note = f"running, epoch {last_epoch}" if last_epoch is not None else "running"
    value = _objective(trial) if state == "COMPLETE" else None
    if value is None and state == "COMPLETE":
        value = _number(metrics.get("objective"))
    run_id = attrs.get("mlflow_run_id")
    return TrialRow(
        number=trial.number,
        state=state,
        params=dict(trial.params),
        value=value,
        test_acc=_number(metrics.get("test_acc")),
        duration_s=duration,
        last_epoch=last_epoch,
        note=note,
        mlflow_run_id=str(run_id) if run_id else None,
        metrics=metrics,
        history=history,
        intermediate=intermediate,
        start=start,
        complete=complete,
    )


def _ordered_params(rows: list[TrialRow]) -> list[str]:
    names = {name for row in rows for name in row.params}
    known = [name for name in PARAM_ORDER if name in names]
    return known + sorted(names - set(known))


def summarize(study: optuna.Study) -> Summary:
    """Everything the report shows, read from the study (trials sorted by number)."""
    attrs = study.user_attrs
    rows = sorted((_row(t) for t in study.get_trials(deepcopy=False)), key=lambda r: r.number)
    counts = {state: 0 for state in STATES}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    directions = study.directions
    direction = "minimize" if directions[0].name == "MINIMIZE" else "maximize"
    scored = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    best = None
    if scored:
        pick = min if direction == "minimize" else max
        best = pick(scored, key=lambda r: r.value)  # type: ignore[arg-type,return-value]

    raw_baselines = attrs.get("baselines") if isinstance(attrs.get("baselines"), dict) else {}
    baselines: dict[str, dict[str, float | None]] = {}
    for key, entry in raw_baselines.items():
        if isinstance(entry, dict):
            baselines[str(key)] = {
                "val_acc": _number(entry.get("val_acc")),
                "test_acc": _number(entry.get("test_acc")),
            }

    tutorial_number = attrs.get("tutorial_trial_number")
    tutorial_number = tutorial_number if isinstance(tutorial_number, int) else None
    tutorial = next((r for r in rows if r.number == tutorial_number), None)
    n_planned = attrs.get("n_trials") if isinstance(attrs.get("n_trials"), int) else None
    space = attrs.get("search_space") if isinstance(attrs.get("search_space"), dict) else {}
    parent = attrs.get("mlflow_parent_run_id")
    summary = Summary(
        study_name=study.study_name,
        sampler=mask_secrets(str(attrs.get("sampler") or "unknown sampler")),
        direction=direction,
        n_planned=n_planned,
        counts=counts,
        rows=rows,
        param_names=_ordered_params(rows),
        best=best,
        tutorial_number=tutorial_number,
        tutorial=tutorial,
        baselines=baselines,
        search_space={str(k): mask_secrets(str(v)) for k, v in space.items()},
        mlflow_parent_run_id=str(parent) if parent else None,
    )
    if len(directions) > 1:
        summary.notes.append(
            f"The study has {len(directions)} objectives; the report uses the first."
        )
    if best is not None and tutorial is not None and tutorial.value is not None:
        summary.gain_val = best.value - tutorial.value  # type: ignore[operator]
        if best.test_acc is not None and tutorial.test_acc is not None:
            summary.gain_test = best.test_acc - tutorial.test_acc
    return summary


# --------------------------------------------------------------------------- text


def _fmt(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _acc(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f} %"


def _points(value: float | None) -> str:
    return DASH if value is None else f"{value:+.2f} points"


def _secs(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def state_line(summary: Summary) -> str:
    total = len(summary.rows)
    parts = [f"{n} {s.lower()}" for s, n in summary.counts.items() if n]
    line = f"{total} trial{'s' if total != 1 else ''}"
    if parts:
        line += " (" + ", ".join(parts) + ")"
    if summary.n_planned is not None:
        line += f" of {summary.n_planned} planned"
    return line


def headline(summary: Summary) -> str:
    """One sentence: the best trial and how far it is from the tutorial default."""
    best = summary.best
    if best is None:
        return f"No completed trial yet: {state_line(summary)}."
    text = f"Best trial #{best.number}: {_pct(best.value)} val"
    if best.test_acc is not None:
        text += f", {_pct(best.test_acc)} test"
    tutorial, number = summary.tutorial, summary.tutorial_number
    if summary.gain_val is not None and tutorial is not None:
        text += (
            f"; {_points(summary.gain_val)} (val) over the tutorial-default KD student"
            f" (trial #{tutorial.number}, {_pct(tutorial.value)} val)"
        )
        if summary.gain_test is not None:
            text += f", {_points(summary.gain_test)} (test)"
    elif number is None:
        text += "; no tutorial-default trial recorded, so no gain over it"
    elif tutorial is None:
        text += f"; tutorial-default trial #{number} is not in the study"
    else:
        text += f"; tutorial-default trial #{number} is {tutorial.state.lower()}, no gain"
    return text + "."


def comparison(summary: Summary) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, val acc, test acc, val difference to the tutorial default) rows."""
    ref = summary.tutorial.value if summary.tutorial is not None else None
    out: list[tuple[str, float | None, float | None, float | None]] = []

    def add(label: str, val: float | None, test: float | None) -> None:
        diff = val - ref if val is not None and ref is not None else None
        out.append((label, val, test, diff))

    if summary.best is not None:
        add(f"Best trial #{summary.best.number}", summary.best.value, summary.best.test_acc)
    if summary.tutorial_number is not None:
        t = summary.tutorial
        label = f"Tutorial-default KD student (trial #{summary.tutorial_number})"
        add(label, t.value if t else None, t.test_acc if t else None)
    for key, label in (("student_ce", "CE-only student"), ("teacher", "Teacher")):
        if key in summary.baselines:
            add(label, summary.baselines[key]["val_acc"], summary.baselines[key]["test_acc"])
    return out


def _best_params(summary: Summary) -> list[tuple[str, Any]]:
    params = summary.best.params if summary.best is not None else {}
    return [(name, params[name]) for name in summary.param_names if name in params]


def _table(summary: Summary) -> tuple[list[str], list[list[str]]]:
    head = ["#", "state", *summary.param_names, "val acc", "test acc", "duration s", "note"]
    body = []
    for r in summary.rows:
        cells = [str(r.number), r.state]
        cells += [_fmt(r.params[p]) if p in r.params else "" for p in summary.param_names]
        cells += [_acc(r.value), _acc(r.test_acc), _secs(r.duration_s), r.note[:160]]
        body.append(cells)
    return head, body


def _md_cell(text: str) -> str:
    text = " ".join(str(text).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def _markdown(summary: Summary, plots: list[tuple[str, str]], notes: list[str]) -> str:
    lines = [
        f"# Sweep report: {_md_cell(summary.study_name)}",
        "",
        f"{_md_cell(summary.sampler)}, {state_line(summary)}, objective: validation"
        f" accuracy ({summary.direction}).",
        "",
        f"**{_md_cell(headline(summary))}**",
        "",
    ]
    rows = comparison(summary)
    if rows:
        lines += ["| | val acc | test acc | vs tutorial default (val) |", "|---|---|---|---|"]
        for label, val, test, diff in rows:
            lines.append(f"| {_md_cell(label)} | {_pct(val)} | {_pct(test)} | {_points(diff)} |")
        lines.append("")
    if summary.best is not None and summary.best.params:
        lines += [f"## Best trial #{summary.best.number}", ""]
        for name, value in _best_params(summary):
            lines.append(f"- `{_md_cell(name)}` = {_md_cell(_fmt(value))}")
        lines.append("")
    lines += ["## Trials", ""]
    head, body = _table(summary)
    lines.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
    lines.append("|" + "---|" * len(head))
    lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in body]
    lines.append("")
    if plots or notes:
        lines += ["## Plots", ""]
        lines += [f"![{_md_cell(caption)}]({name})" for name, caption in plots]
        lines += [f"- {_md_cell(note)}" for note in notes]
        lines.append("")
    return "\n".join(lines)


_LEFT = ' class="l"'
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;
color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
.headline{font-size:1.25rem;background:#eef6ee;border-left:5px solid #3a7d44;padding:.8rem 1rem}
.none{background:#fbeeee;border-left-color:#b03a2e}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0 1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
tr.best{background:#eef6ee;font-weight:600}tr.tutorial{background:#eef2fb}
tr.FAIL td{color:#b03a2e}tr.PRUNED td,tr.RUNNING td{color:#777}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(22rem,1fr));gap:1rem}
figure{margin:0}figure img{width:100%;border:1px solid #eee}figcaption{color:#666;font-size:.85rem}
.note{color:#777;font-size:.9rem}footer{color:#888;font-size:.8rem;margin-top:2rem}
"""


def _html(
    summary: Summary, plots: list[tuple[str, str]], notes: list[str], storage: str | None
) -> str:
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Sweep report: {e(summary.study_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sweep report: {e(summary.study_name)}</h1>",
        f'<p class="sub">{e(summary.sampler)} &middot; {e(state_line(summary))} &middot;'
        f" objective: validation accuracy ({summary.direction})</p>",
        f'<p class="headline{"" if summary.best else " none"}">{e(headline(summary))}</p>',
    ]
    rows = comparison(summary)
    if rows:
        out.append(
            '<table><tr><th class="l"></th><th>val acc</th><th>test acc</th>'
            "<th>vs tutorial default (val)</th></tr>"
        )
        for label, val, test, diff in rows:
            out.append(
                f'<tr><td class="l">{e(label)}</td><td>{_pct(val)}</td><td>{_pct(test)}</td>'
                f"<td>{_points(diff)}</td></tr>"
            )
        out.append("</table>")
    if summary.best is not None and summary.best.params:
        out.append(f"<h2>Best trial #{summary.best.number}</h2><table>")
        for name, value in _best_params(summary):
            out.append(f'<tr><td class="l">{e(name)}</td><td>{e(_fmt(value))}</td></tr>')
        out.append("</table>")
    if plots or notes:
        out.append('<h2>Plots</h2><div class="plots">')
        for name, caption in plots:
            out.append(
                f'<figure><img src="{e(name)}" alt="{e(caption)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
        out.append("</div>")
        out += [f'<p class="note">{e(note)}</p>' for note in notes]
    out.append("<h2>Trials</h2><table><tr>")
    head, body = _table(summary)
    left = {0, 1, len(head) - 1}  # number, state, note
    out.append("".join(f"<th{_LEFT if i in left else ''}>{e(h)}</th>" for i, h in enumerate(head)))
    out.append("</tr>")
    for row, cells in zip(summary.rows, body, strict=True):
        classes = [row.state]
        if summary.best is row:
            classes.append("best")
        if summary.tutorial is row:
            classes.append("tutorial")
        tds = "".join(f"<td{_LEFT if i in left else ''}>{e(c)}</td>" for i, c in enumerate(cells))
        out.append(f'<tr class="{" ".join(classes)}">{tds}</tr>')
    out.append("</table>")
    if summary.search_space:
        out.append("<h2>Search space</h2><table>")
        for name, desc in summary.search_space.items():
            out.append(f'<tr><td class="l">{e(name)}</td><td class="l">{e(desc)}</td></tr>')
        out.append("</table>")
    out += [f'<p class="note">{e(note)}</p>' for note in summary.notes]
    footer = [f"generated {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by kdsweep-report"]
    if storage:
        footer.append(f"storage {mask_secrets(storage)}")
    if summary.mlflow_parent_run_id:
        footer.append(f"MLflow parent run {summary.mlflow_parent_run_id}")
    out.append(f"<footer>{e(' · '.join(footer))}</footer></body></html>")
    return "\n".join(out) + "\n"


def _csv(summary: Summary) -> str:
    metric_keys = ["best_val_acc", "final_val_acc", "wall_seconds", "train_images_per_s"]
    head = ["number", "state", "objective", "test_acc", "duration_s", "last_epoch"]
    head += [*metric_keys, "datetime_start", "datetime_complete", "mlflow_run_id", "note"]
    head += [p for p in summary.param_names if p not in head]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for r in summary.rows:
        values: dict[str, Any] = {
            "number": r.number,
            "state": r.state,
            "objective": r.value,
            "test_acc": r.test_acc,
            "duration_s": r.duration_s,
            "last_epoch": r.last_epoch,
            "datetime_start": r.start.isoformat() if r.start else None,
            "datetime_complete": r.complete.isoformat() if r.complete else None,
            "mlflow_run_id": r.mlflow_run_id,
            "note": r.note,
        }
        values.update({k: _number(r.metrics.get(k)) for k in metric_keys})
        values.update(r.params)
        writer.writerow(["" if values.get(k) is None else values[k] for k in head])
    return buffer.getvalue()


# --------------------------------------------------------------------------- plots


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


def _baseline_lines(ax: Any, summary: Summary) -> None:
    styles = (("teacher", "Teacher", "--", "#b03a2e"), ("student_ce", "CE student", ":", "#555"))
    for key, label, style, color in styles:
        val = summary.baselines.get(key, {}).get("val_acc")
        if val is not None:
            ax.axhline(val, ls=style, color=color, lw=1.2, label=f"{label} {val:.2f}")
    if summary.tutorial is not None and summary.tutorial.value is not None:
        val = summary.tutorial.value
        ax.axhline(val, ls="-.", color="#2e86c1", lw=1.2, label=f"tutorial KD {val:.2f}")


# Each _plot_* writes its PNG and returns None, or returns why it drew nothing.


def _plot_history(summary: Summary, path: Path) -> str | None:
    done = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
    pruned = [r for r in summary.rows if r.state == "PRUNED" and r.intermediate]
    if not done and not pruned:
        return "No optimization history: no trial has a value yet."
    fig = _figure()
    ax = fig.add_subplot()
    if pruned:
        xs = [r.number for r in pruned]
        ys = [r.intermediate[max(r.intermediate)] for r in pruned]
        ax.scatter(xs, ys, marker="x", color="#aaa", label="pruned (last epoch)")
    if done:
        xs = [r.number for r in done]
        ys = [r.value for r in done]
        ax.scatter(xs, ys, color="#1f77b4", zorder=3, label="completed")
        pick = min if summary.direction == "minimize" else max
        running = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, running, where="post", color="#3a7d44", lw=2, label="best so far")
    _baseline_lines(ax, summary)
    _integer_x(ax)
    ax.set_xlabel("trial")
    ax.set_ylabel("val acc (%)")
    ax.set_title("Optimization history")
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return None


def _plot_importance(study: optuna.Study, summary: Summary, path: Path) -> str | None:
    done = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
    if len(done) < 2:
        return "Parameter importances need at least 2 completed trials."
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


def _param_file(name: str) -> str:
    return f"param_{re.sub(r'[^A-Za-z0-9_-]+', '_', name).strip('_') or 'param'}.png"


def _plot_param(
    trials: list[optuna.trial.FrozenTrial], summary: Summary, name: str, path: Path
) -> str | None:
    """Objective against one parameter: a scatter (log x for log-sampled ones), or a
    strip per choice for a categorical one."""
    done = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
    points = [(r.params[name], r.value, r) for r in done if name in r.params]
    if not points:
        return f"No completed trial has {name}."
    numeric = all(_number(x) is not None for x, _, _ in points)
    fig = _figure(width=4.4, height=3.2, fixed=True)
    ax = fig.add_subplot()
    if numeric:
        xs = [float(x) for x, _, _ in points]
        if _is_log(trials, name, xs) and min(xs) > 0:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels would overlap
    else:
        cats = sorted({str(x) for x, _, _ in points})
        xs = [float(cats.index(str(x))) for x, _, _ in points]
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlim(-0.5, len(cats) - 0.5)
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
    pairs = [(_number(h.get("epoch")), _number(h.get(key))) for h in history]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _plot_curves(summary: Summary, path: Path) -> str | None:
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


def _plot_all_curves(summary: Summary, path: Path) -> str | None:
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
    _integer_x(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val acc (%)")
    ax.set_title("Validation accuracy per epoch, all trials")
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return None


# --------------------------------------------------------------------------- entry


def write_report(
    study: optuna.Study, out_dir: str | Path, *, storage_url: str | None = None
) -> Path:
    """Write the sweep report of ``study`` into ``out_dir``; return the index.html path.

    ``storage_url`` (optional) is shown, with any password masked, in the page footer.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(study)
    plots: list[tuple[str, str]] = []
    notes: list[str] = []
    trials = study.get_trials(deepcopy=False)
    drawers: list[tuple[str, str, Callable[[Path], str | None]]] = [
        (
            "history.png",
            "Objective per trial, best so far, and the baselines",
            lambda p: _plot_history(summary, p),
        ),
        ("importance.png", "Parameter importances", lambda p: _plot_importance(study, summary, p)),
        ("curves.png", "Learning curves of the best trial", lambda p: _plot_curves(summary, p)),
        (
            "all_curves.png",
            "Validation accuracy per epoch of every trial (pruned ones stop early)",
            lambda p: _plot_all_curves(summary, p),
        ),
    ]
    scored = [r for r in summary.rows if r.state == "COMPLETE" and r.value is not None]
    used: set[str] = set()
    for name in summary.param_names:
        if not any(name in r.params for r in scored):
            continue
        filename = _param_file(name)
        while filename in used:  # "loss.p" and "loss_p" would share a file name
            filename = filename[:-4] + "_.png"
        used.add(filename)
        drawers.append(
            (
                filename,
                f"Objective against {name}",
                lambda p, name=name: _plot_param(trials, summary, name, p),
            )
        )
    for filename, caption, draw in drawers:
        try:
            skipped = draw(out / filename)
        except Exception as exc:  # one odd value must not cost the whole report
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            skipped = f"{caption}: not drawn ({type(exc).__name__}: {mask_secrets(first)[:200]})"
        if skipped is None:
            plots.append((filename, caption))
        else:
            notes.append(skipped)
    written = {filename for filename, _ in plots}

    # A rebuilt report must not keep plots of an earlier build that no longer apply.
    for stale in [*out.glob("param_*.png"), *(out / n for n in FIXED_PNGS)]:
        if stale.name not in written and stale.is_file():
            stale.unlink()

    atomic_write_text(out / "trials.csv", _csv(summary))
    atomic_write_text(out / "report.md", _markdown(summary, plots, notes))
    index = out / "index.html"
    atomic_write_text(index, _html(summary, plots, notes, storage_url))
    return index
