"""Chaos: a sweep signalled at random points (SIGKILL, SIGTERM, SIGINT) while it runs, ten
times (an attempt that finished before its signal does not count), then rerun to the end,
must end exactly as an uninterrupted one: n_trials finished trials, the reference trial,
the CE baseline and every confirmation run present, nothing RUNNING in Optuna or MLflow,
and a complete report."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _helpers import (
    kill_group,
    load_study,
    load_trials,
    mlflow_runs,
    run,
    start,
    states,
    sweep_args,
    unique,
)
from kdsweep.report import report_dir_for

N_TRIALS = 6
INTERRUPTIONS = 10
MAX_ATTEMPTS = 30
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
STARTUP_LIMIT_SECONDS = 300
# What the console says the sweep was doing, newest first: for the failure message and
# the check that the interruptions fell in several phases.
PHASES = (
    ("report", "report"),
    ("confirmation", "confirmation"),
    ("baseline", "baseline"),
    ("trial", "trial "),
    ("teacher", "teacher: training"),
)


def _phase(output: str) -> str:
    last = {name: output.rfind(marker) for name, marker in PHASES}
    name, position = max(last.items(), key=lambda item: item[1])
    return name if position >= 0 else "start-up"


def _start_logged(workdir: Path, args: list[str], attempt: int) -> tuple[subprocess.Popen, Path]:
    """The sweep as ``start`` starts it, its console (stdout and stderr) in a file that
    can be read while it runs."""
    console = workdir / f"attempt-{attempt:02d}.log"
    with console.open("w") as sink:
        proc = start(workdir, args, stdout=sink, stderr=subprocess.STDOUT)
    return proc, console


def _seconds_to_leave_start_up(proc: subprocess.Popen, console: Path) -> float:
    """Seconds from ``proc``'s start until its console names a phase (the teacher, a
    trial, ...): this machine's start-up time, the unit of the signals' delays."""
    began = time.monotonic()
    while _phase(console.read_text()) == "start-up":
        assert proc.poll() is None, f"the sweep ended in start-up: {console.read_text()[-3000:]}"
        assert time.monotonic() - began < STARTUP_LIMIT_SECONDS, "no phase after start-up"
        time.sleep(0.1)
    return time.monotonic() - began


@pytest.mark.slow
def test_a_sweep_signalled_ten_times_at_random_points_ends_complete(tmp_path: Path) -> None:
    study_name = unique("chaos")
    args = sweep_args(
        tmp_path,
        study_name,
        N_TRIALS,
        "hydra.sweeper.baselines=true",
        "hydra.sweeper.confirm.enabled=true",
        "hydra.sweeper.confirm.seeds=2",
        "hydra.sweeper.confirm.top_k=1",
        "trainer.epochs=4",
        "teacher.epochs=2",
        "trainer.progress=log",
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    rng = random.Random(20261129)
    hits = []  # the signals that reached a running sweep
    startup = None  # seconds this machine takes to start a sweep: set by the first attempt
    for attempt in range(MAX_ATTEMPTS):
        if len(hits) == INTERRUPTIONS:
            break
        sig = rng.choice(SIGNALS)
        proc, console = _start_logged(tmp_path, args, attempt)
        began = time.monotonic()
        if startup is None:
            startup = _seconds_to_leave_start_up(proc, console)
        # From half a start-up to a few past it: delays in seconds put every signal in
        # start-up on a loaded machine (as in CI once), delays in start-ups do not.
        delay = startup * rng.uniform(0.5, 2.5)
        time.sleep(max(0.0, began + delay - time.monotonic()))
        running = proc.poll() is None
        if running:
            if sig == signal.SIGTERM:
                proc.send_signal(sig)  # as a scheduler does: the sweeper only
            else:
                kill_group(proc, sig)  # SIGKILL of everything, or Ctrl-C's whole group
        try:
            proc.wait(timeout=180)
        finally:
            kill_group(proc)
        output = console.read_text()
        if proc.returncode not in (0, -9, 130, 143):
            pytest.fail(f"an interrupted sweep exited {proc.returncode}: {output[-3000:]}")
        if sig != signal.SIGKILL and proc.returncode in (130, 143):
            assert "Traceback" not in output, output[-3000:]
        if running:  # a sweep that had already finished was not interrupted
            hits.append((sig.name, round(delay, 1), proc.returncode, _phase(output)))
    assert len(hits) == INTERRUPTIONS, hits
    print(f"start-up {startup:.1f} s; interruptions (signal, delay s, exit code, phase):")
    print(*hits, sep="\n  ")
    final = run(tmp_path, args, timeout=900)
    assert final.returncode == 0, f"{hits}\n{final.stderr[-3000:]}"
    # The interruptions fell in more than one phase of the sweep (as the console shows
    # them: how many depends on the machine's speed, so two is the floor).
    assert len({phase for *_, phase in hits}) >= 2, hits

    trials = load_trials(storage, study_name)
    counts = states(trials)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == N_TRIALS, (counts, hits)
    assert "RUNNING" not in counts and "WAITING" not in counts, (counts, hits)
    study = load_study(storage, study_name)
    reference = next(t for t in trials if t.number == study.user_attrs["tutorial_trial_number"])
    assert reference.state.name == "COMPLETE"
    assert reference.params["loss.temperature"] == 2.0
    assert "student_ce" in study.user_attrs["baselines"]

    confirm = load_trials(storage, f"{study_name}:confirm")
    confirm_counts = states(confirm)
    arms = load_study(storage, f"{study_name}:confirm").user_attrs["current_arms"]
    assert confirm_counts.get("COMPLETE", 0) >= 2 * len(arms), (confirm_counts, hits)
    assert "RUNNING" not in confirm_counts and "WAITING" not in confirm_counts

    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "RUNNING" not in {r.info.status for r in runs}, hits
    parents = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    assert [p.info.status for p in parents] == ["FINISHED"]

    report = report_dir_for(tmp_path / "reports", study_name)
    for name in ("index.html", "report.md", "trials.csv"):
        assert (report / name).stat().st_size > 0, name
    markdown = (report / "report.md").read_text()
    assert "## Confirmed on fresh seeds" in markdown
    assert "vs the same recipe without a teacher" in markdown
