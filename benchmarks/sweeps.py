"""Rows c and d of the benchmark: real sweeps through the ``kdsweep -m`` command line.

c. The same KD sweep (same sampler seed, same trial count) with the median pruner and
   without: epochs trained (the sum of each trial's reported epochs) and best val acc.
d. What Hydra + Optuna + MLflow cost per trial: two sweeps of near-empty trials that
   differ only in their trial count; the wall-time difference per extra trial, minus the
   extra trials' own run time (``user_attrs['metrics']['wall_seconds']``, stored by the
   sweeper; summed per sweep, so a trial slowed by a neighbour process is subtracted too).

Every sweep runs as a subprocess in its own directory (its Optuna and MLflow databases,
Hydra output and report stay there); its output goes to ``sweep.log`` beside them.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Progress = Callable[[str], None]

# Row c's data: digits with 30% of the training images held out for validation (431 of
# them, not 144). Its target is about best-of-sweep val accuracy within 1 point, and with
# 144 images one image is 0.69 points: the comparison could not resolve its own target.
PRUNING_DATA = ("data=digits", "data.val_fraction=0.3")

# The search space of row d: a learning rate only, so a CE trial needs no teacher.
LR_SPACE = "optimizer.lr=tag(log,interval(0.0001,0.01))"


@dataclass
class SweepOutcome:
    command: list[str]
    wall_s: float
    states: dict[str, int] = field(default_factory=dict)
    epochs_trained: int = 0
    best_value: float | None = None
    trial_wall_s: list[float] = field(default_factory=list)
    # Per trial (but the last): next trial's start - this trial's start - its own run time.
    trial_gaps_s: list[float] = field(default_factory=list)
    # Each finished (complete or pruned) trial's start and end, in seconds since the epoch.
    trial_spans: list[tuple[float, float]] = field(default_factory=list)


def sweep_command(
    workdir: Path,
    study_name: str,
    n_trials: int,
    cache_dir: Path,
    search: Sequence[str],
    overrides: Sequence[str],
) -> list[str]:
    """``kdsweep -m ...`` with the benchmark's contract overrides: every file it writes
    lands under ``workdir`` (and the shared ``cache_dir``)."""
    return [
        sys.executable, "-m", "kdsweep", "-m", *search,
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage=sqlite:///{workdir / 'optuna.db'}",
        f"hydra.sweeper.study_name={study_name}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        f"cache_dir={cache_dir}",
        f"hydra.sweep.dir={workdir / 'multirun'}",
        *overrides,
    ]  # fmt: skip


def _stream(
    command: list[str], workdir: Path, label: str, timeout: float, progress: Progress
) -> float:
    """Run ``command`` in ``workdir``, its output to sweep.log; echo trial progress."""
    log_path = workdir / "sweep.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if "finished, launching trial" in line:
                    progress(f"{label}: {line.split('] ', 1)[-1].strip()}")
            returncode = proc.wait()
        finally:
            timer.cancel()
    wall = time.perf_counter() - started
    if returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-4:]
        why = "timed out" if wall >= timeout else f"exited {returncode}"
        raise RuntimeError(f"{label}: sweep {why} ({log_path}): " + " | ".join(tail))
    return wall


def read_study(storage_url: str, study_name: str) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return {
        "states": states,
        # A study with costs keeps its curves in "history" only (kdsweep.sweep.cost_pruning).
        "epochs_trained": sum(
            max(len(t.intermediate_values), len(t.user_attrs.get("history") or [])) for t in trials
        ),
        # The objective is a trial's first value (a study with costs has more).
        "best_value": max((t.values[0] for t in complete if t.values), default=None),
        "trial_wall_s": [
            float(t.user_attrs["metrics"]["wall_seconds"])
            for t in complete
            if "wall_seconds" in t.user_attrs.get("metrics", {})
        ],
        "trial_gaps_s": _gaps(trials),
        "trial_spans": [
            (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
            for t in trials
            if t.state.is_finished() and t.datetime_start and t.datetime_complete
        ],
    }


def _gaps(trials: list) -> list[float]:
    """Seconds between consecutive trials' starts not spent in the earlier trial's run:
    the sweep's own cost per trial, free of the process start and the final report."""
    ordered = sorted(
        (t for t in trials if t.datetime_start is not None), key=lambda t: t.datetime_start
    )
    gaps = []
    for this, following in zip(ordered, ordered[1:], strict=False):
        wall = this.user_attrs.get("metrics", {}).get("wall_seconds")
        if wall is not None:
            cycle = (following.datetime_start - this.datetime_start).total_seconds()
            gaps.append(cycle - float(wall))
    return gaps


def run_sweep(
    workdir: Path,
    label: str,
    n_trials: int,
    cache_dir: Path,
    search: Sequence[str],
    overrides: Sequence[str],
    timeout: float,
    progress: Progress,
) -> SweepOutcome:
    workdir.mkdir(parents=True, exist_ok=False)
    study_name = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    command = sweep_command(workdir, study_name, n_trials, cache_dir, search, overrides)
    progress(f"{label}: {' '.join(command[1:])}")
    wall = _stream(command, workdir, label, timeout, progress)
    summary = read_study(f"sqlite:///{workdir / 'optuna.db'}", study_name)
    progress(f"{label}: {n_trials} trials in {wall:.1f} s, states {summary['states']}")
    return SweepOutcome(command=command, wall_s=wall, **summary)


def train_teacher(
    root: Path,
    row: str,
    cache_dir: Path,
    overrides: Sequence[str],
    timeout: float,
    progress: Progress,
) -> None:
    """Train the teacher the sweeps' ``overrides`` use into their shared cache first, so
    that no compared sweep's wall time holds its one-time training."""
    teacher_dir = root / f"{row}-teacher"
    teacher_dir.mkdir(parents=True, exist_ok=False)
    teacher_run = [
        sys.executable, "-m", "kdsweep", "trainer.epochs=1", "tracking.enabled=false",
        f"cache_dir={cache_dir}", f"hydra.run.dir={teacher_dir / 'out'}",
        *(o for o in overrides if not o.startswith("hydra.sweeper.")),
    ]  # fmt: skip
    progress(f"{row}: training the teacher once, into the sweeps' shared cache")
    _stream(teacher_run, teacher_dir, f"{row}-teacher", timeout, progress)


def measure_pruning(
    root: Path,
    cache_dir: Path,
    n_trials: int,
    epochs: int,
    pruner: str,
    seed: int,
    extra: Sequence[str],
    timeout: float,
    progress: Progress,
) -> dict[str, object]:
    """Row c: the KD sweep with ``pruner`` and with none, same sampler seed."""
    common = [
        f"trainer.epochs={epochs}",
        *PRUNING_DATA,
        f"hydra.sweeper.sampler.seed={seed}",
        # The CE baseline is a once-per-study extra run, not a trial: leave it out.
        "hydra.sweeper.baselines=false",
        *extra,
    ]
    search = ["hparams_search=kd"]
    train_teacher(root, "c", cache_dir, common, timeout, progress)
    outcomes = {}
    for name in (pruner, "none"):
        outcomes[name] = run_sweep(
            root / f"c-{name}",
            f"c-{name}",
            n_trials,
            cache_dir,
            search,
            [f"hydra/sweeper/pruner={name}", *common],
            timeout,
            progress,
        )
    pruned, full = outcomes[pruner], outcomes["none"]
    if pruned.best_value is None or full.best_value is None:
        raise RuntimeError("a sweep of row c completed no trial")
    return {
        "trials": n_trials,
        "epochs_per_trial": epochs,
        "pruner": pruner,
        "epochs_pruned": pruned.epochs_trained,
        "epochs_unpruned": full.epochs_trained,
        "epoch_fraction": pruned.epochs_trained / full.epochs_trained,
        "best_acc_pruned": pruned.best_value,
        "best_acc_unpruned": full.best_value,
        "acc_diff_points": pruned.best_value - full.best_value,
        "states_pruned": pruned.states,
        "states_unpruned": full.states,
        "wall_s_pruned": pruned.wall_s,
        "wall_s_unpruned": full.wall_s,
        "commands": [" ".join(o.command[1:]) for o in outcomes.values()],
    }


def measure_trial_overhead(
    root: Path,
    cache_dir: Path,
    counts: tuple[int, int],
    extra: Sequence[str],
    timeout: float,
    progress: Progress,
) -> dict[str, object]:
    """Row d: seconds per trial spent outside the trial's own run (Hydra job setup,
    Optuna ask/tell and storage, MLflow runs), from two sweeps of 1-epoch CE trials."""
    low, high = counts
    overrides = [
        "data=digits",
        "loss=ce",
        "trainer.epochs=1",
        "hydra.sweeper.baselines=false",
        *extra,
    ]
    search = ["hydra/sweeper=kdsweep", LR_SPACE]
    outcomes = [
        run_sweep(root / f"d-{n}", f"d-{n}", n, cache_dir, search, overrides, timeout, progress)
        for n in (low, high)
    ]
    workloads = outcomes[0].trial_wall_s + outcomes[1].trial_wall_s
    if any(len(o.trial_wall_s) != n for o, n in zip(outcomes, (low, high), strict=True)):
        raise RuntimeError(f"a trial of row d did not complete: {[o.states for o in outcomes]}")
    per_trial_wall = (outcomes[1].wall_s - outcomes[0].wall_s) / (high - low)
    # The extra trials' own run time, summed per sweep: a trial slowed down by another
    # process on the machine is then subtracted where it happened.
    extra_run = (sum(outcomes[1].trial_wall_s) - sum(outcomes[0].trial_wall_s)) / (high - low)
    return {
        "trial_counts": [low, high],
        "wall_s": [o.wall_s for o in outcomes],
        "per_trial_wall_s": per_trial_wall,
        "mean_trial_run_s": statistics.fmean(workloads),
        "extra_trial_run_s": extra_run,
        "overhead_per_trial_s": per_trial_wall - extra_run,
        "overhead_with_mean_run_s": per_trial_wall - statistics.fmean(workloads),
        # Robust to a burst of load from other processes: the median over single trials.
        "overhead_median_of_trials_s": (
            statistics.median(outcomes[1].trial_gaps_s) if outcomes[1].trial_gaps_s else None
        ),
        "states": [o.states for o in outcomes],
        "commands": [" ".join(o.command[1:]) for o in outcomes],
    }


def trial_run_spans(tracking_uri: str) -> list[tuple[float, float]]:
    """Each search trial's MLflow run, start to end in seconds: the trial's own work
    (training, evaluation, logging) in whichever process ran it. Optuna's trial times
    cannot serve for a batch launcher: its trials are told when the whole batch ends."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`kdsweep.role` = 'trial'", max_results=10_000)
    return [(r.info.start_time / 1000, r.info.end_time / 1000) for r in runs if r.info.end_time]


def slot_utilization(spans: Sequence[tuple[float, float]], slots: int) -> tuple[float, float]:
    """The trials' busy time over ``slots`` x the search's wall time (its first trial's
    start to its last trial's end): 1.0 when no slot ever waits. Returns (utilization,
    search wall time in s)."""
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    busy = sum(end - start for start, end in spans)
    return busy / (slots * wall), wall


def measure_workers(
    root: Path,
    cache_dir: Path,
    n_trials: int,
    epochs: int,
    seed: int,
    extra: Sequence[str],
    timeout: float,
    progress: Progress,
) -> dict[str, object]:
    """Row i: the pruned KD sweep on 2 CPU slots, three ways, one after the other on the
    same machine: ``hydra.sweeper.workers=2`` (one thread each), Hydra's joblib launcher
    with 2 jobs per batch (one thread each), and one sweep loop (``workers=1``, torch's
    default threads). The teacher is trained into the shared cache first. Utilization is
    from the trials' MLflow runs (trial_run_spans)."""
    common = [
        f"trainer.epochs={epochs}",
        *PRUNING_DATA,
        f"hydra.sweeper.sampler.seed={seed}",
        "hydra/sweeper/pruner=median",
        # Extra runs, not trials: the comparison is about the search's slots.
        "hydra.sweeper.baselines=false",
        "hydra.sweeper.confirm.enabled=false",
        *extra,
    ]
    teacher_dir = root / "i-teacher"
    teacher_dir.mkdir(parents=True, exist_ok=False)
    teacher_run = [
        sys.executable, "-m", "kdsweep", "trainer.epochs=1", "tracking.enabled=false",
        f"cache_dir={cache_dir}", f"hydra.run.dir={teacher_dir / 'out'}",
        *(o for o in common if not o.startswith(("hydra.sweeper.", "hydra/sweeper"))),
    ]  # fmt: skip
    progress("i: training the teacher once, into the sweeps' shared cache")
    _stream(teacher_run, teacher_dir, "i-teacher", timeout, progress)
    ways = {
        "workers2": (2, ["hydra.sweeper.workers=2", "trainer.threads=1"]),
        "joblib2": (
            2,
            [
                "hydra/launcher=joblib",
                "hydra.launcher.n_jobs=2",
                "hydra.sweeper.n_jobs=2",
                "trainer.threads=1",
            ],
        ),
        "workers1": (1, []),
    }
    figures: dict[str, object] = {"trials": n_trials, "epochs_per_trial": epochs}
    for name, (slots, overrides) in ways.items():
        outcome = run_sweep(
            root / f"i-{name}",
            f"i-{name}",
            n_trials,
            cache_dir,
            ["hparams_search=kd"],
            [*common, *overrides],
            timeout,
            progress,
        )
        finished = len(outcome.trial_spans)
        if finished != n_trials:
            raise RuntimeError(f"row i, {name}: {finished} of {n_trials} trials finished")
        runs = trial_run_spans(f"sqlite:///{root / f'i-{name}' / 'mlflow.db'}")
        utilization, search_wall = slot_utilization(runs, slots)
        # From Optuna's ask-to-tell times: what holds a slot, the job's set-up included
        # (with joblib, also the wait for the batch's slowest trial).
        occupancy, _ = slot_utilization(outcome.trial_spans, slots)
        figures[name] = {
            "slots": slots,
            "wall_s": outcome.wall_s,
            "search_wall_s": search_wall,
            "utilization": utilization,
            "ask_to_tell_occupancy": occupancy,
            "mean_trial_run_s": sum(end - start for start, end in runs) / len(runs),
            "states": outcome.states,
            "command": " ".join(outcome.command[1:]),
        }
    return figures
