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

The work is split in three modules: :mod:`kdsweep.report_data` reads the study and words
the report, :mod:`kdsweep.report_plots` draws the figures, and this one renders the files.
``summarize``, ``headline``, ``Summary`` and ``TrialRow`` are re-exported from here.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import html
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsweep.files import atomic_write_text
from kdsweep.report_data import (
    DASH,
    PARAM_ORDER,
    STATES,
    Summary,
    TrialRow,
    _best_params,
    _fmt,
    _number,
    _pct,
    _points,
    _table,
    comparison,
    headline,
    state_line,
    summarize,
)
from kdsweep.report_plots import (
    _param_file,
    _plot_all_curves,
    _plot_curves,
    _plot_history,
    _plot_importance,
    _plot_param,
)
from kdsweep.secrets import mask_secrets

if TYPE_CHECKING:
    import optuna

__all__ = [
    "DASH",
    "FIXED_PNGS",
    "PARAM_ORDER",
    "STATES",
    "Summary",
    "TrialRow",
    "comparison",
    "headline",
    "state_line",
    "summarize",
    "report_dir_for",
    "write_report",
    "write_report_files",
]

FIXED_PNGS = ("history.png", "importance.png", "curves.png", "all_curves.png")


# --------------------------------------------------------------------------- render


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


# --------------------------------------------------------------------------- entry


# A study name is user input: as a folder name it must stay one harmless path component.
_UNSAFE_IN_DIR_NAME = re.compile(r"[^\w.-]+")
MAX_DIR_NAME = 80


def report_dir_for(root: str | Path, study_name: str) -> Path:
    """The report folder of ``study_name``: one path component directly inside ``root``.

    ``/home/me/.ssh``, ``..`` or ``a/../../b`` must never name a folder outside ``root``
    (the sweep uploads its report folder to MLflow), so every character outside
    ``[A-Za-z0-9_.-]`` becomes ``_``, leading dots go, and a changed or long name is cut
    and suffixed with a hash of the full one, so two names never share a folder.
    """
    safe = _UNSAFE_IN_DIR_NAME.sub("_", study_name).strip("._-") or "study"
    if safe != study_name or len(safe) > MAX_DIR_NAME:
        # Changed or cut: the hash keeps "a/b" and "a_b" (or two long names) apart.
        digest = hashlib.sha256(study_name.encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_DIR_NAME]}-{digest}"
    folder = Path(root) / safe
    # Belt and braces: the name above cannot climb out, and this proves it.
    if folder.resolve().parent != Path(root).resolve():
        raise ValueError(f"study name {study_name!r} does not map into {root}")
    return folder


def write_report(
    study: optuna.Study, out_dir: str | Path, *, storage_url: str | None = None
) -> Path:
    """Write the sweep report of ``study`` into ``out_dir``; return the index.html path.

    ``storage_url`` (optional) is shown, with any password masked, in the page footer.
    """
    return write_report_files(study, out_dir, storage_url=storage_url)[-1]


def write_report_files(
    study: optuna.Study, out_dir: str | Path, *, storage_url: str | None = None
) -> list[Path]:
    """Write the report as :func:`write_report` does; return every file written (the
    plots, trials.csv, report.md, and index.html last). Only these may be uploaded: the
    folder can hold other files (an older build's, or anything a user put there)."""
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
    return [*(out / name for name in sorted(written)), out / "trials.csv", out / "report.md", index]
