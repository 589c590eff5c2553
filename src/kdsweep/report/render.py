"""Write the files of a sweep report: index.html and report.md from Jinja2 templates, the
CSV, and the plots; and name the folder a study's report goes to.

``write_report(study, out_dir)`` writes into ``out_dir``:

- ``index.html``: headline (best trial against the teacher, the CE-only student and the
  tutorial-default KD student), the best trial's parameters, the plots, all trials;
- ``report.md``: the same headline and trial table in Markdown;
- ``trials.csv``: one row per trial;
- PNGs: ``history.png`` (objective per trial, running best, baselines),
  ``importance.png`` (parameter importances), ``param_<name>.png`` (objective against each
  parameter), ``curves.png`` (the best trial's learning curves) and ``all_curves.png``
  (validation accuracy per epoch of every trial, pruned ones partial).

The pages are rendered from ``templates/index.html.j2`` (autoescaped) and
``templates/report.md.j2`` (every interpolated cell goes through the ``md`` filter,
:func:`md_cell`). :mod:`kdsweep.results.summary` reads the study and words the report,
:mod:`kdsweep.report.plots` draws the figures. Every file is written atomically.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from kdsweep.core.errors import one_line
from kdsweep.core.files import atomic_write_text, safe_name
from kdsweep.core.formatting import fmt, pct, points
from kdsweep.core.secrets import mask_secrets
from kdsweep.core.signals import check_interrupt
from kdsweep.core.values import finite_number
from kdsweep.report.plots import (
    param_file,
    plot_all_curves,
    plot_confirmed_front,
    plot_curves,
    plot_history,
    plot_importance,
    plot_param,
    plot_search_front,
)
from kdsweep.results.confirmed import CONFIRMED_HEAD, confirmed_rows, resolution
from kdsweep.results.front import FRONT_HEAD, front_rows
from kdsweep.results.summary import (
    Summary,
    best_params,
    comparison,
    headline,
    lead,
    state_line,
    summarize,
    trial_table,
)

if TYPE_CHECKING:
    import optuna

FIXED_PNGS = (
    "history.png",
    "importance.png",
    "curves.png",
    "all_curves.png",
    "front.png",
    "search_front.png",
)


# --------------------------------------------------------------------------- render


def md_cell(text: Any) -> str:
    """``text`` as one Markdown table cell: one line, ``|`` and ``\\`` escaped, no raw HTML."""
    text = " ".join(str(text).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kdsweep.report", "templates"),
        # HTML is escaped by default; Markdown escapes each cell through the md filter.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md_cell, fmt=fmt, pct=pct, points=points)
    return env


def _context(
    summary: Summary, plots: list[tuple[str, str]], notes: list[str], storage: str | None
) -> dict[str, Any]:
    """What both templates show; all wording comes from :mod:`kdsweep.results.summary`."""
    head, body = trial_table(summary)
    rows = []
    for row, cells in zip(summary.rows, body, strict=True):
        classes = [row.state]
        if summary.best is row:
            classes.append("best")
        if summary.tutorial is row:
            classes.append("tutorial")
        rows.append((" ".join(classes), cells))
    return {
        "summary": summary,
        "state_line": state_line(summary),
        "lead": lead(summary),
        "headline": headline(summary),
        "confirmed": summary.confirmed,
        "confirmed_head": CONFIRMED_HEAD,
        "confirmed_rows": confirmed_rows(summary.confirmed) if summary.confirmed else [],
        "resolution": resolution(summary.confirmed) if summary.confirmed else "",
        "front": summary.front,
        "front_head": FRONT_HEAD,
        "front_rows": front_rows(summary.front) if summary.front else [],
        "comparison": comparison(summary),
        "best_params": best_params(summary),
        "head": head,
        "rows": rows,
        "left": {0, 1, len(head) - 1},  # number, state, note
        "plots": plots,
        "notes": notes,
        "generated": f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "storage": storage,
    }


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
        values.update({k: finite_number(r.metrics.get(k)) for k in metric_keys})
        values.update(r.params)
        writer.writerow(["" if values.get(k) is None else values[k] for k in head])
    return buffer.getvalue()


# --------------------------------------------------------------------------- entry


# A study name is user input: as a folder name it must stay one harmless path component.
def report_dir_for(root: str | Path, study_name: str) -> Path:
    """The report folder of ``study_name``: one path component directly inside ``root``
    (:func:`kdsweep.core.files.safe_name`). ``/home/me/.ssh``, ``..`` or ``a/../../b`` must
    never name a folder outside ``root``: the sweep uploads its report folder to MLflow."""
    folder = Path(root) / safe_name(study_name)
    # Belt and braces: the name cannot climb out, and this proves it.
    if folder.resolve().parent != Path(root).resolve():
        raise ValueError(f"study name {study_name!r} does not map into {root}")
    return folder


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    storage_url: str | None = None,
    confirm_study: optuna.Study | None = None,
) -> Path:
    """Write the sweep report of ``study`` (and of its confirmation stage, if given) into
    ``out_dir``; return the index.html path.

    ``storage_url`` (optional) is shown, with any password masked, in the page footer.
    """
    files = write_report_files(study, out_dir, storage_url=storage_url, confirm_study=confirm_study)
    return files[-1]


def write_report_files(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    storage_url: str | None = None,
    confirm_study: optuna.Study | None = None,
    summary: Summary | None = None,
) -> list[Path]:
    """Write the report as :func:`write_report` does; return every file written (the
    plots, trials.csv, report.md, and index.html last). Only these may be uploaded: the
    folder can hold other files (an older build's, or anything a user put there).
    ``summary``: the study's, if the caller already read it (it is not read twice)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or summarize(study, confirm_study)
    plots: list[tuple[str, str]] = []
    notes: list[str] = []
    drawers: list[tuple[str, str, Callable[[Path], str | None]]] = []
    if len(study.directions) > 1:  # a search with costs: its fronts first
        drawers += [
            (
                "front.png",
                "Confirmed front: test accuracy (95 % CI) with the teacher, and the same"
                " students without it",
                lambda p: plot_confirmed_front(summary, p),
            ),
            (
                "search_front.png",
                "The search's own front (one seed per trial, selected on val)",
                lambda p: plot_search_front(study, summary, p),
            ),
        ]
    drawers += [
        (
            "history.png",
            "Objective per trial, best so far, and the baselines",
            lambda p: plot_history(study, summary, p),
        ),
        ("importance.png", "Parameter importances", lambda p: plot_importance(study, summary, p)),
        ("curves.png", "Learning curves of the best trial", lambda p: plot_curves(summary, p)),
        (
            "all_curves.png",
            "Validation accuracy per epoch of every trial (pruned ones stop early)",
            lambda p: plot_all_curves(study, summary, p),
        ),
    ]
    used: set[str] = set()
    for name in summary.param_names:
        if not any(name in r.params for r in summary.scored):
            continue
        filename = param_file(name)
        while filename in used:  # "loss.p" and "loss_p" would share a file name
            filename = filename[:-4] + "_.png"
        used.add(filename)
        drawers.append(
            (
                filename,
                f"Objective against {name}",
                lambda p, name=name: plot_param(study, summary, name, p),
            )
        )
    for filename, caption, draw in drawers:
        check_interrupt()  # a plot takes up to seconds: a signal is honoured between two
        try:
            skipped = draw(out / filename)
        except Exception as exc:  # one odd value must not cost the whole report
            skipped = f"{caption}: not drawn ({type(exc).__name__}: {one_line(exc, limit=200)})"
        if skipped is None:
            plots.append((filename, caption))
        else:
            notes.append(skipped)
    written = {filename for filename, _ in plots}

    # A rebuilt report must not keep plots of an earlier build that no longer apply.
    for stale in [*out.glob("param_*.png"), *(out / n for n in FIXED_PNGS)]:
        if stale.name not in written and stale.is_file():
            stale.unlink()

    def write(path: Path, text: str) -> None:
        # The report's files are a boundary of their own: what they show (the storage URL,
        # a failed trial's error, a parameter) is masked once, here, as it is written.
        atomic_write_text(path, mask_secrets(text))

    write(out / "trials.csv", _csv(summary))
    context = _context(summary, plots, notes, storage_url)
    env = _templates()
    write(out / "report.md", env.get_template("report.md.j2").render(context))
    index = out / "index.html"
    write(index, env.get_template("index.html.j2").render(context))
    return [*(out / name for name in sorted(written)), out / "trials.csv", out / "report.md", index]
