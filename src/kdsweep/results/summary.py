"""What the sweep report says: the study read into rows and a summary, and the wording.

``summarize(study)`` turns the stored Optuna study into a :class:`Summary` (one
:class:`TrialRow` per trial, the best trial, the tutorial-default trial, the baselines);
``headline``, ``state_line``, ``comparison`` and ``trial_table`` turn it into the text both
the HTML and the Markdown report show (numbers written by kdsweep.core.formatting). See
:mod:`kdsweep.report` for the attributes read from the study; every one of them may be
missing.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kdsweep.core.formatting import accuracy, fmt, pct, points, seconds
from kdsweep.core.values import finite_number as finite
from kdsweep.results.confirmed import Confirmed, confirmed_headline, confirmed_summary, parts_text
from kdsweep.results.front import ConfirmedFront, confirmed_front, front_headline
from kdsweep.sweep.arms import ranked_trials
from kdsweep.sweep.studies import count_states

if TYPE_CHECKING:
    import optuna

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
    confirmed: Confirmed | None = None  # the confirmation stage's paired-seed results
    labels: str | None = None  # the labelled fractions, when not every label was used
    parts: dict[str, str] = field(default_factory=dict)  # loss, teacher, model: their names
    # After a search with costs: its confirmed front (kdsweep.results.front).
    front: ConfirmedFront | None = None

    @property
    def scored(self) -> list[TrialRow]:
        """The completed trials that have a value."""
        return [r for r in self.rows if r.state == "COMPLETE" and r.value is not None]


# --------------------------------------------------------------------------- data


def _row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    attrs = trial.user_attrs
    metrics = attrs.get("metrics") if isinstance(attrs.get("metrics"), dict) else {}
    history = [h for h in attrs.get("history") or [] if isinstance(h, dict)]
    intermediate = {
        int(k): float(v) for k, v in trial.intermediate_values.items() if finite(v) is not None
    }
    start, complete = trial.datetime_start, trial.datetime_complete
    duration = (complete - start).total_seconds() if start and complete else None
    if duration is None:
        duration = finite(metrics.get("wall_seconds"))
    epochs = [int(h["epoch"]) for h in history if finite(h.get("epoch")) is not None]
    last_epoch = max([*intermediate, *epochs], default=None)
    state = trial.state.name
    note = ""
    if state == "FAIL":
        # Masked when written (core.errors.one_line, at the sweep's tell).
        note = str(attrs.get("error") or "failed")
    elif state == "PRUNED":
        note = f"pruned after epoch {last_epoch}" if last_epoch is not None else "pruned"
    elif state == "RUNNING":
        note = f"running, epoch {last_epoch}" if last_epoch is not None else "running"
    value = None
    if state == "COMPLETE":
        value = finite(trial.values[0]) if trial.values else None
        if value is None:
            value = finite(metrics.get("objective"))
    run_id = attrs.get("mlflow_run_id")
    return TrialRow(
        number=trial.number,
        state=state,
        params=dict(trial.params),
        value=value,
        test_acc=finite(metrics.get("test_acc")),
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


def summarize(study: optuna.Study, confirm_study: optuna.Study | None = None) -> Summary:
    """Everything the report shows, read from the study (trials sorted by number) and its
    confirmation study, if any."""
    attrs = study.user_attrs
    rows = sorted((_row(t) for t in study.get_trials(deepcopy=False)), key=lambda r: r.number)
    by_state = {state.name: n for state, n in count_states(study).items()}
    counts = {name: by_state[name] for name in STATES}
    directions = study.directions
    direction = "minimize" if directions[0].name == "MINIMIZE" else "maximize"
    # The first ranked trial with a finite value (a tie goes to the lower val loss); a
    # trial that finished after the rows were read is not among them.
    by_number = {r.number: r for r in rows}
    ranked = (by_number.get(t.number) for t in ranked_trials(study))
    best = next((r for r in ranked if r is not None and r.value is not None), None)

    raw_baselines = attrs.get("baselines") if isinstance(attrs.get("baselines"), dict) else {}
    baselines: dict[str, dict[str, float | None]] = {}
    for key, entry in raw_baselines.items():
        if isinstance(entry, dict):
            baselines[str(key)] = {
                "val_acc": finite(entry.get("val_acc")),
                "test_acc": finite(entry.get("test_acc")),
            }

    tutorial_number = attrs.get("tutorial_trial_number")
    tutorial_number = tutorial_number if isinstance(tutorial_number, int) else None
    tutorial = next((r for r in rows if r.number == tutorial_number), None)
    n_planned = attrs.get("n_trials") if isinstance(attrs.get("n_trials"), int) else None
    space = attrs.get("search_space") if isinstance(attrs.get("search_space"), dict) else {}
    parent = attrs.get("mlflow_parent_run_id")
    summary = Summary(
        study_name=study.study_name,
        sampler=str(attrs.get("sampler") or "unknown sampler"),
        direction=direction,
        n_planned=n_planned,
        counts=counts,
        rows=rows,
        param_names=_ordered_params(rows),
        best=best,
        tutorial_number=tutorial_number,
        tutorial=tutorial,
        baselines=baselines,
        search_space={str(k): str(v) for k, v in space.items()},
        mlflow_parent_run_id=str(parent) if parent else None,
        confirmed=confirmed_summary(confirm_study),
    )
    summary.labels = labels_line(attrs.get("definition"))
    parts = attrs.get("parts")
    summary.parts = {str(k): str(v) for k, v in parts.items()} if isinstance(parts, dict) else {}
    summary.front = confirmed_front(study, summary.confirmed, confirm_study)
    if len(directions) > 1:
        summary.notes.append(
            f"The study has {len(directions)} objectives (accuracy and its costs); the trial"
            " table and the search's best use the first."
        )
    if best is not None and tutorial is not None and tutorial.value is not None:
        summary.gain_val = best.value - tutorial.value  # type: ignore[operator]
        if best.test_acc is not None and tutorial.test_acc is not None:
            summary.gain_test = best.test_acc - tutorial.test_acc
    return summary


def labels_line(definition: Any) -> str | None:
    """What share of the training labels the student and the teacher saw, from the study's
    recorded definition (its values are JSON text); None when both saw every label."""
    if not isinstance(definition, dict):
        return None
    shares = []
    for key in ("data.labelled_fraction", "teacher.labelled_fraction"):
        try:
            shares.append(finite(json.loads(definition.get(key, "1.0"))))
        except (TypeError, ValueError):
            shares.append(None)
    if shares == [1.0, 1.0]:
        return None
    student, teacher = (
        "an unknown share" if s is None else "all" if s == 1.0 else f"{100 * s:g} %" for s in shares
    )
    return (
        f"Labels: the student saw {student} and the teacher {teacher} of the training split's"
        " labels (data.labelled_fraction, teacher.labelled_fraction)."
    )


# --------------------------------------------------------------------------- text


def state_line(summary: Summary) -> str:
    total = len(summary.rows)
    parts = [f"{n} {s.lower()}" for s, n in summary.counts.items() if n]
    line = f"{total} trial{'s' if total != 1 else ''}"
    if parts:
        line += " (" + ", ".join(parts) + ")"
    if summary.n_planned is not None:
        line += f" of {summary.n_planned} planned"
    return line


def lead(summary: Summary) -> str:
    """The report's first sentence: after a search with costs, the smallest confirmed
    student within tolerance of the best; else the confirmed comparison where the sweep
    has one, else the search's best, labelled as the unconfirmed, selected figure it is."""
    if summary.front is not None:
        return front_headline(summary.front, summary.parts)
    if summary.confirmed is not None:
        return confirmed_headline(summary.confirmed, summary.parts)
    return headline(summary)


def headline(summary: Summary) -> str:
    """One sentence: the search's best trial and how far it is from the tutorial default,
    labelled as what it is: one seed, selected on val (optimistically biased)."""
    best = summary.best
    if best is None:
        return f"No completed trial yet: {state_line(summary)}."
    text = (
        f"Search only, not confirmed (one seed, best of {summary.counts['COMPLETE']} on val:"
        f" optimistically biased). Best trial #{best.number}: {pct(best.value)} val"
    )
    if best.test_acc is not None:
        text += f", {pct(best.test_acc)} test"
    tutorial, number = summary.tutorial, summary.tutorial_number
    if summary.gain_val is not None and tutorial is not None:
        text += (
            f"; {points(summary.gain_val)} (val) over the {reference(summary)}"
            f" (trial #{tutorial.number}, {pct(tutorial.value)} val)"
        )
        if summary.gain_test is not None:
            text += f", {points(summary.gain_test)} (test)"
    elif number is None:
        text += "; no tutorial-default trial recorded, so no gain over it"
    elif tutorial is None:
        text += f"; tutorial-default trial #{number} is not in the study"
    else:
        text += f"; tutorial-default trial #{number} is {tutorial.state.lower()}, no gain"
    return text + "."


def reference(summary: Summary) -> str:
    """What the enqueued reference trial is: the tutorial-default KD student of a study
    that recorded no parts, else the reference setting of the sweep's own parts."""
    if not summary.parts:
        return "tutorial-default KD student"
    return f"reference setting ({parts_text(summary.parts)})"


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
        label = f"{reference(summary).capitalize()} (trial #{summary.tutorial_number})"
        add(label, t.value if t else None, t.test_acc if t else None)
    for key, label in (("student_ce", "CE-only student"), ("teacher", "Teacher")):
        if key in summary.baselines:
            add(label, summary.baselines[key]["val_acc"], summary.baselines[key]["test_acc"])
    return out


def best_params(summary: Summary) -> list[tuple[str, Any]]:
    params = summary.best.params if summary.best is not None else {}
    return [(name, params[name]) for name in summary.param_names if name in params]


def trial_table(summary: Summary) -> tuple[list[str], list[list[str]]]:
    head = ["#", "state", *summary.param_names, "val acc", "test acc", "duration s", "note"]
    body = []
    for r in summary.rows:
        cells = [str(r.number), r.state]
        cells += [fmt(r.params[p]) if p in r.params else "" for p in summary.param_names]
        cells += [accuracy(r.value), accuracy(r.test_acc), seconds(r.duration_s), r.note[:160]]
        body.append(cells)
    return head, body
