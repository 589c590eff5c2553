"""Bad inputs fail fast and cleanly: a non-zero exit, one short line naming the problem
(Hydra's own compose errors: a first line naming it), no traceback, and no half-written
state: no MLflow run, no Optuna study, no partial teacher checkpoint or cache file.

The one exception is a loss that diverges (NaN/inf): it can only show in training, so its
MLflow run exists and must end FAILED; inside a sweep the trial fails and the sweep goes
on, within hydra.sweeper.max_failure_rate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from _helpers import (
    FAST,
    children_of,
    load_study,
    load_trials,
    mlflow_runs,
    run,
    states,
    sweep_args,
    teacher_cache_fixture,  # noqa: F401  (the teacher_cache fixture)
    unique,
)

KDSWEEP_ERROR = "kdsweep: error:"


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]  # overrides; {placeholders} are filled from the row's paths
    message: str  # what the error line must contain
    code: int = 2  # kdsweep's user errors exit 2; Hydra's compose errors and NaN exit 1
    hydra_error: bool = False  # Hydra reports it (a few lines, the first names it)
    mlflow: str | None = None  # the one run's expected status, if a run may exist


SWEEP = ("-m", "hparams_search=kd", "hydra.sweeper.baselines=false")

ROWS = {
    "unknown group option": Bad(
        ("model=nope",), "Could not find 'model/nope'", code=1, hydra_error=True
    ),
    "unknown key": Bad(("loss.nope=1",), "Could not override 'loss.nope'", 1, hydra_error=True),
    "unknown key appended": Bad(("+loss.nope=1",), "loss.nope: Key 'nope' not in"),
    "key of another loss": Bad(("+loss.margin=1",), "loss.margin: Key 'margin' not in"),
    "wrong type": Bad(("trainer.epochs=abc",), "trainer.epochs: Value 'abc'"),
    "zero temperature": Bad(("loss.temperature=0",), "loss.temperature must be > 0"),
    "negative temperature": Bad(("loss.temperature=-2",), "loss.temperature must be > 0"),
    "negative loss weight": Bad(("loss.ce_weight=-0.5",), "loss.ce_weight must be"),
    "all loss weights zero": Bad(("loss.ce_weight=0", "loss.soft_target_weight=0"), "are all 0"),
    "zero lr": Bad(("optimizer.lr=0",), "optimizer.lr must be > 0"),
    "negative lr": Bad(("optimizer.lr=-0.01",), "optimizer.lr must be > 0"),
    "zero batch size": Bad(("trainer.batch_size=0",), "trainer.batch_size must be >= 1"),
    "zero epochs": Bad(("trainer.epochs=0",), "trainer.epochs must be >= 1"),
    "zero val fraction": Bad(("data.val_fraction=0",), "data.val_fraction must be in (0, 1)"),
    "val fraction above 1": Bad(("data.val_fraction=1.5",), "data.val_fraction must be in (0, 1)"),
    "augmenting 8x8 digits": Bad(("data.augment=true",), "data.augment=true is for"),
    "unknown device": Bad(("trainer.device=tpu",), "trainer.device must be one of"),
    "missing CIFAR files": Bad(("data=cifar10", "data.root={empty}"), "cifar10 not found"),
    "missing teacher checkpoint": Bad(("teacher.checkpoint={missing}",), "does not exist"),
    "corrupt teacher checkpoint": Bad(
        ("teacher.checkpoint={garbage}",), "is corrupt or not a torch file"
    ),
    "teacher trained on other data": Bad(
        ("teacher.checkpoint={other_teacher}", "data.split_seed=1"), "was trained on other data"
    ),
    "cosine with a plain student": Bad(("loss=cosine", "model=light"), "use model=modified"),
    "nesterov without momentum": Bad(
        ("optimizer=sgd_nesterov", "optimizer.momentum=0"), "optimizer.momentum must be > 0"
    ),
    "nesterov with dampening": Bad(
        ("optimizer=sgd_nesterov", "optimizer.dampening=0.5"), "optimizer.dampening must be 0"
    ),
    "multimargin p=3": Bad(("loss=multimargin", "loss.p=3"), "loss.p must be 1 or 2"),
    "run dir under a file": Bad(("hydra.run.dir={afile}/sub",), "/sub cannot be created ("),
    "sweep dir under a file": Bad(
        (*SWEEP, "hydra.sweep.dir={afile}/sweep"), "/sweep cannot be created ("
    ),
    # KD: the cache must stay empty, so the check came before the teacher's training.
    "unreachable tracking server": Bad(
        ("tracking.uri=http://127.0.0.1:1",), "MLflow does not answer at tracking.uri="
    ),
    "unreachable sweep storage": Bad(
        (*SWEEP, "hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x"),
        "cannot open the Optuna storage",
    ),
    "sweep over a parameter the loss lacks": Bad(
        (*SWEEP, "loss=ce"), "search parameter loss.temperature is not in the config"
    ),
    "sweep with a bad fixed value": Bad(
        (*SWEEP, "loss.temperature=0"), "loss.temperature must be > 0"
    ),
    "sweep of zero trials": Bad(
        (*SWEEP, "hydra.sweeper.n_trials=0"), "n_trials and n_jobs must be >= 1"
    ),
    "unknown pruner": Bad(
        (*SWEEP, "hydra.sweeper.pruner.name=bogus"), "pruner.name='bogus' is unknown"
    ),
    "loss diverges (NaN) in a run": Bad(
        ("loss=ce", "optimizer.lr=1e8"), "lower optimizer.lr", code=1, mlflow="FAILED"
    ),
}


@pytest.fixture(scope="module")
def other_teacher(teacher_cache: Path) -> Path:
    """A real kdsweep teacher checkpoint, trained on digits with data.split_seed=0."""
    (path,) = (teacher_cache / "teachers").glob("*.pt")
    return path


def _paths(tmp_path: Path, other_teacher: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 10)
    afile = tmp_path / "afile"
    afile.write_text("a file, not a directory\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "garbage": garbage,
        "afile": afile,
        "empty": empty,
        "missing": tmp_path / "no-such-teacher.pt",
        "other_teacher": other_teacher,
    }


def _error_line(stderr: str, hydra_error: bool) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(KDSWEEP_ERROR)]
    if hydra_error:
        assert not ours, stderr
        return lines[0]
    assert len(ours) == 1, stderr  # ONE line
    return ours[0]


@pytest.mark.parametrize("row", [pytest.param(r, id=name) for name, r in ROWS.items()])
def test_bad_input_fails_cleanly(tmp_path: Path, other_teacher: Path, row: Bad) -> None:
    paths = _paths(tmp_path, other_teacher)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cache = tmp_path / "cache"
    isolated = [
        f"tracking.uri={tracking}",
        f"cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.report_dir={tmp_path / 'reports'}",
        f"hydra.sweeper.study_name={unique('bad')}",
        *FAST,
    ]
    args = [a.format(**paths) for a in row.args]
    multirun = "-m" in args
    # The row's own settings win; a single run has no hydra.sweeper node to override.
    keys = {a.split("=")[0] for a in args}
    isolated = [
        a
        for a in isolated
        if a.split("=")[0] not in keys
        and (multirun or not a.startswith(("hydra.sweep.", "hydra.sweeper.")))
    ]
    command = ["-m"] if multirun else []
    proc = run(tmp_path, [*command, *isolated, *(a for a in args if a != "-m")], timeout=300)

    assert proc.returncode == row.code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    line = _error_line(proc.stderr, row.hydra_error)
    assert row.message in line, proc.stderr[-3000:]
    assert len(line) < 600

    # No half-written state.
    runs = mlflow_runs(tracking)
    if row.mlflow is None:
        assert runs == []
    else:
        (only,) = runs
        assert only.info.status == row.mlflow
        assert row.message in only.data.tags["error"]
    if (tmp_path / "optuna.db").exists():
        import optuna

        assert optuna.get_all_study_names(storage) == []
    if cache.exists():
        leftovers = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        assert leftovers == [], leftovers  # no checkpoint, no output cache, no temp file
    assert paths["afile"].read_text() == "a file, not a directory\n"


def _nan_sweep_args(tmp_path: Path, study: str, cache: Path, *extra: str) -> list[str]:
    # The first trial's lr diverges; later ones are sampled from the normal range.
    return sweep_args(
        tmp_path,
        study,
        2,
        "hydra.sweeper.enqueue_trials=[{optimizer.lr:1e8}]",
        *extra,
        cache_dir=cache,
    )


def test_diverging_trial_fails_and_the_sweep_goes_on(tmp_path: Path, teacher_cache: Path) -> None:
    study_name = unique("nan")
    args = _nan_sweep_args(
        tmp_path, study_name, teacher_cache, "hydra.sweeper.max_failure_rate=0.5"
    )
    proc = run(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trials = load_trials(storage, study_name)
    assert states(trials) == {"FAIL": 1, "COMPLETE": 2}
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.number == 0
    assert failed.params["optimizer.lr"] == 1e8
    assert "lower optimizer.lr" in failed.user_attrs["error"]

    parent_id = load_study(storage, study_name).user_attrs["mlflow_parent_run_id"]
    children = children_of(mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}"), parent_id)
    by_trial = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert len(by_trial) == 3
    assert by_trial[0].info.status == "FAILED"
    assert "lower optimizer.lr" in by_trial[0].data.tags["error"]
    assert {by_trial[n].info.status for n in by_trial if n != 0} == {"FINISHED"}


@pytest.mark.slow
def test_too_many_failures_stop_the_sweep_with_one_line(
    tmp_path: Path, teacher_cache: Path
) -> None:
    study_name = unique("nan-stop")
    args = _nan_sweep_args(tmp_path, study_name, teacher_cache, "hydra.sweeper.max_failure_rate=0")
    proc = run(tmp_path, args)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    line = _error_line(proc.stderr, hydra_error=False)
    assert "1 of 1 trials failed" in line and "max_failure_rate=0.0" in line

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert states(load_trials(storage, study_name)) == {"FAIL": 1}  # stopped at once
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = load_study(storage, study_name).user_attrs["mlflow_parent_run_id"]
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses.pop(parent_id) == "FAILED"
    assert list(statuses.values()) == ["FAILED"]
