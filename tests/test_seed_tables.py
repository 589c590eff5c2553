"""The multirun tables of kdsweep.callbacks: the seeds table (mean and 95 % interval per
configuration, paired differences against a baseline) and the tutorial table, from fixed
results.json records (no training) and from real multiruns through the CLI entry (called in
this process: the process itself is tested elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import run_cli_in_process
from kdsweep.config.schema import TrackingConf
from kdsweep.core.stats import arm_stats, paired_diff, verdict
from kdsweep.multirun.callbacks import (
    SeedsTable,
    TutorialTable,
    collect_jobs,
    collect_results,
    seeds_table,
    tutorial_table,
)
from kdsweep.run.tracking import RunTracker

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
KDSWEEP_SWEEPER = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KdsweepSweeper"

# seed -> (val acc, test acc) per arm; fixed numbers, so the table is known in advance.
KD = {0: (96.0, 95.5), 1: (97.2, 96.1), 2: (96.5, 95.0)}
CE = {0: (94.0, 93.9), 1: (95.1, 94.2), 2: (94.6, 94.4)}


def write_job(
    sweep_dir: Path,
    num: int,
    overrides: list[str],
    seed: int,
    val: float,
    test: float,
    loss: str,
    status: str = "FINISHED",
    run_name: str = "light-kd-adam-digits",
    **params: Any,
) -> Path:
    """One job's directory as a multirun leaves it: results.json + .hydra/overrides.yaml."""
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record = {
        "run_name": run_name,
        "params": {"trainer.seed": str(seed), "loss.name": loss, **params},
        "metrics": {"objective": val, "best_val_acc": val, "test_acc": test},
        "tags": {},
        "history": [],
        "status": status,
    }
    (job / "results.json").write_text(json.dumps(record))
    return job


def two_arms(sweep_dir: Path) -> None:
    """``kdsweep -m trainer.seed=0,1,2 loss=kd,ce trainer.epochs=3``: Hydra numbers the
    jobs seed-major (the first override varies slowest)."""
    num = 0
    for seed in (0, 1, 2):
        for loss, arm in (("kd", KD), ("ce", CE)):
            overrides = [f"trainer.seed={seed}", f"loss={loss}", "trainer.epochs=3"]
            write_job(sweep_dir, num, overrides, seed, *arm[seed], loss=loss)
            num += 1


def multirun_config(sweep_dir: Path, sweeper: str = BASIC_SWEEPER) -> Any:
    return OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(sweep_dir)}, "sweeper": {"_target_": sweeper}},
            "data": {"name": "digits"},
        }
    )


def cells_of(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def row(table: str, start: str) -> list[str]:
    return cells_of(next(line for line in table.splitlines() if line.startswith(f"| {start}")))


def first_row(table: str) -> list[str]:
    """The first data row of the first table (after its |---| line)."""
    lines = table.splitlines()
    return cells_of(lines[next(i for i, line in enumerate(lines) if line.startswith("|---")) + 1])


# --- the seeds table from fixed records --------------------------------------------------


def test_two_arms_mean_ci_and_paired_difference_against_the_ce_arm(tmp_path: Path) -> None:
    two_arms(tmp_path)
    table = seeds_table(collect_jobs(tmp_path))
    assert table is not None
    assert "Shared by every row: trainer.epochs=3" in table
    for label, arm in (("loss=kd", KD), ("loss=ce (baseline)", CE)):
        cells = row(table, label)
        assert cells[0] == label and cells[1] == "3" and cells[2] == "0,1,2"
        for column, split in ((3, 0), (4, 1)):
            stats = arm_stats([arm[s][split] for s in (0, 1, 2)])
            assert cells[column] == f"{stats.mean:.2f} ± {stats.half_width:.2f}"
    # loss=ce is the only CE arm: the student without teacher is the baseline, not the
    # first arm.
    assert "baseline `loss=ce` (the only loss=ce arm: the student without teacher)" in table
    assert not any(line.startswith("| loss=ce - baseline") for line in table.splitlines())
    diffs = [line for line in table.splitlines() if line.startswith("| loss=kd - baseline")]
    assert len(diffs) == 2
    for line, split in zip(diffs, (0, 1), strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        d = paired_diff({s: KD[s][split] for s in KD}, {s: CE[s][split] for s in CE})
        assert cells[1] == ("val", "test")[split] and cells[2] == "3"
        assert cells[3] == f"{d.mean:+.2f}"
        assert cells[4] == f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]"
        assert cells[5] == f"{d.p_ttest:.3g}" and cells[6] == f"{d.p_wilcoxon:.3g}"
        assert cells[7] == verdict(d)
    # the figures themselves, independently of the formatting: KD - CE on val
    d_val = paired_diff({s: KD[s][0] for s in KD}, {s: CE[s][0] for s in CE})
    assert d_val.mean == pytest.approx((2.0 + 2.1 + 1.9) / 3)
    assert d_val.significant  # three differences of about 2 points with a small spread
    assert d_val.p_wilcoxon == pytest.approx(0.25)  # the smallest exact p with 3 pairs


def test_first_arm_is_the_baseline_without_a_single_ce_arm(tmp_path: Path) -> None:
    num = 0
    for seed in (0, 1):
        for lr in ("0.001", "0.003", "0.01"):
            value = 90.0 + float(lr) * 100 + seed
            ov = [f"trainer.seed={seed}", f"optimizer.lr={lr}"]
            write_job(tmp_path, num, ov, seed, value, value - 1, loss="kd")
            num += 1
    table = seeds_table(collect_jobs(tmp_path))
    assert table is not None
    assert "baseline `optimizer.lr=0.001` (the first arm)" in table
    assert row(table, "optimizer.lr=0.001 (baseline)")[1] == "2"
    cells = row(table, "optimizer.lr=0.01 - baseline")
    assert cells[2] == "2" and cells[3] == "+0.90"
    # Every pair differs by the same amount: no spread, the interval is the point.
    assert cells[4] == "[+0.90, +0.90]" and cells[7] == "significantly better"


def test_pairs_only_the_seeds_both_arms_have(tmp_path: Path) -> None:
    write_job(tmp_path, 0, ["trainer.seed=0", "loss=kd"], 0, 96.0, 95.0, loss="kd")
    write_job(tmp_path, 1, ["trainer.seed=1", "loss=kd"], 1, 97.0, 96.0, loss="kd")
    write_job(tmp_path, 2, ["trainer.seed=2", "loss=kd"], 2, 95.0, 94.0, loss="kd")
    write_job(tmp_path, 3, ["trainer.seed=1", "loss=ce"], 1, 95.0, 95.0, loss="ce")
    table = seeds_table(collect_jobs(tmp_path))
    assert table is not None
    assert row(table, "loss=ce (baseline)")[1:3] == ["1", "1"]
    cells = row(table, "loss=kd - baseline")
    assert cells[2:5] == ["1", "+2.00", "–"]  # one pair: no interval
    assert cells[5:8] == ["–", "–", "too few paired seeds to test"]


def test_no_repeated_configuration_prints_nothing(tmp_path: Path, capsys) -> None:
    for num, loss in enumerate(("kd", "ce", "cosine")):
        write_job(tmp_path, num, [f"loss={loss}"], 0, 90.0, 90.0, loss=loss)
    assert seeds_table(collect_jobs(tmp_path)) is None
    SeedsTable().on_multirun_end(multirun_config(tmp_path))
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "seeds_table.md").exists()


def test_bad_jobs_are_skipped_never_fatal(tmp_path: Path, capsys, caplog) -> None:
    two_arms(tmp_path)
    (tmp_path / "6").mkdir()
    (tmp_path / "6" / "results.json").write_text("{not json")
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "results.json").write_text("[1, 2]")
    write_job(
        tmp_path,
        8,
        ["trainer.seed=3", "loss=kd", "trainer.epochs=3"],
        3,
        99,
        99,
        "kd",
        status="FAILED",
    )
    no_overrides = write_job(tmp_path, 9, ["trainer.seed=4", "loss=kd"], 4, 1.0, 1.0, "kd")
    (no_overrides / ".hydra" / "overrides.yaml").unlink()
    bad_metric = write_job(tmp_path, 10, ["trainer.seed=5", "loss=ce"], 5, 1.0, 1.0, "ce")
    record = json.loads((bad_metric / "results.json").read_text())
    record["metrics"] = {"objective": "NaN", "test_acc": None}
    (bad_metric / "results.json").write_text(json.dumps(record))
    SeedsTable().on_multirun_end(multirun_config(tmp_path))
    table = (tmp_path / "seeds_table.md").read_text()
    assert table in capsys.readouterr().out
    assert row(table, "loss=kd")[1:3] == ["3", "0,1,2"]  # the failed seed 3 is left out
    assert "skipping" in caplog.text
    # ... and said to be: the arm whose one run failed, and the run with a NaN accuracy.
    left_out = table.split("Runs without a result, left out of every figure above:")[1]
    assert "- loss=kd trainer.epochs=3: seed 3: FAILED" in left_out
    assert "- loss=ce: seed 5: no accuracy recorded" in left_out


def test_job_folders_of_an_earlier_multirun_do_not_count(tmp_path: Path, caplog) -> None:
    """A reused hydra.sweep.dir keeps the folders of an earlier, larger multirun (Hydra
    overwrites only the job numbers it runs again): they are not this multirun's."""
    import os
    import time

    old = write_job(tmp_path, 6, ["trainer.seed=3", "loss=ce", "trainer.epochs=3"], 3, 0, 0, "ce")
    hour_ago = time.time() - 3600
    os.utime(old / "results.json", (hour_ago, hour_ago))
    tables = SeedsTable(), TutorialTable()
    for callback in tables:
        callback.on_multirun_start(multirun_config(tmp_path))
    two_arms(tmp_path)  # this multirun's six jobs
    for callback in tables:
        callback.on_multirun_end(multirun_config(tmp_path))
    table = (tmp_path / "seeds_table.md").read_text()
    assert row(table, "loss=ce")[1:3] == ["3", "0,1,2"]  # seed 3 was the earlier multirun's
    assert "left out 1 job folder(s) of an earlier multirun" in caplog.text


def test_nothing_in_kdsweeps_own_sweeps(tmp_path: Path, capsys) -> None:
    two_arms(tmp_path)
    SeedsTable().on_multirun_end(multirun_config(tmp_path, KDSWEEP_SWEEPER))
    TutorialTable().on_multirun_end(multirun_config(tmp_path, KDSWEEP_SWEEPER))
    assert not list(tmp_path.glob("*.md")) and capsys.readouterr().out == ""
    # and, whatever the sweeper, the records of a kdsweep study's trials are not arms
    other = tmp_path / "trials"
    for num, seed in enumerate((0, 1)):
        study = {"sweep.trial_number": str(num), "sweep.study_name": "kd-digits-light"}
        write_job(other, num, [f"trainer.seed={seed}"], seed, 90.0, 90.0, "kd", **study)
    assert seeds_table(collect_jobs(other)) is None


# --- the tutorial table ------------------------------------------------------------------


def tracked_job(sweep_dir: Path, num: int, run_name: str, seed: int, metrics: dict) -> None:
    """A results.json written by the real RunTracker with MLflow tracking off."""
    job = sweep_dir / str(num)
    job.mkdir(parents=True)
    tracker = RunTracker(TrackingConf(enabled=False), run_name, local_dir=job)
    tracker.check()
    tracker.start()
    tracker.log_params({"trainer.seed": seed})
    tracker.log_metrics(metrics)
    tracker.finish("FINISHED")


def test_tutorial_table_with_tracking_disabled_and_seeds(tmp_path: Path, capsys) -> None:
    teacher = {"teacher_val_acc": 98.0, "teacher_test_acc": 97.5, "teacher_train_seconds": 3.0}
    num = 0
    students = {
        "tutorial-student-ce": 93.0,
        "tutorial-kd": 94.0,
        "tutorial-cosine": 92.0,
        "tutorial-hint": 93.5,
    }
    for seed in (0, 1, 2):
        for name, base in students.items():
            metrics = {
                "objective": base + seed,
                "best_val_acc": base + seed,
                "test_acc": base - seed,
            }
            if name != "tutorial-student-ce":
                metrics.update(teacher)  # one cached teacher, as with a fixed teacher.seed=0
            tracked_job(tmp_path, num, name, seed, metrics)
            num += 1
        tracked_job(
            tmp_path, num, "tutorial-teacher", seed, {"objective": 96.0 + seed, "test_acc": 95.0}
        )
        num += 1
    record = json.loads((tmp_path / "0" / "results.json").read_text())
    assert record["run_name"] == "tutorial-student-ce" and "run_id" not in record
    assert len(collect_results(tmp_path)["tutorial-kd"]) == 3
    TutorialTable().on_multirun_end(multirun_config(tmp_path))
    table = (tmp_path / "tutorial_comparison.md").read_text()
    assert table in capsys.readouterr().out
    cells = row(table, "Teacher (DeepNN, CE): teacher of the KD/cosine/hint runs")
    # one teacher, reported by nine runs: n is 1, its own accuracies, the tutorial's 75.10
    assert cells[1:] == ["1", "98.00", "97.50", "FINISHED", "75.10"]
    for label, name in (
        ("Student with CE + KD", "tutorial-kd"),
        ("Student without teacher", "tutorial-student-ce"),
    ):
        cells = row(table, label)
        val = arm_stats([students[name] + s for s in (0, 1, 2)])
        assert cells[1] == "3" and cells[4] == "FINISHED"
        assert cells[2] == f"{val.mean:.2f} ± {val.half_width:.2f}"
    hint = row(table, "Student with CE + hint (regressor MSE)")
    assert hint[1] == "3" and hint[4] == "FINISHED" and hint[5] == "–"  # no figure quoted
    cells = row(table, "DeepNN trained as a student, CE")
    assert cells[1:3] == ["3", "97.00 ± 2.48"] and cells[3] == "95.00 ± 0.00"
    assert cells[5] == "–"  # not set beside the tutorial's teacher figure


def test_tutorial_table_counts_failed_runs_and_missing_ones() -> None:
    ok = {"status": "FINISHED", "metrics": {"objective": 90.0, "test_acc": 89.0}}
    failed = {"status": "FAILED", "metrics": {}}
    table = tutorial_table({"tutorial-kd": [ok, failed]}, "digits")
    cells = row(table, "Student with CE + KD")
    assert cells[1:5] == ["1", "90.00", "89.00", "1 FINISHED, 1 FAILED"]
    assert row(table, "Student with CE + cosine")[4] == "not run"
    assert row(table, "Teacher")[4] == "no teacher metrics"


# --- real multiruns ----------------------------------------------------------------------


def test_cli_seeds_multirun_prints_and_saves_the_table(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun"
    proc = run_cli_in_process(
        tmp_path,
        "-m",
        "trainer.seed=0,1",
        "loss=ce",
        "tracking.enabled=false",
        f"hydra.sweep.dir={sweep_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep_dir / "seeds_table.md").read_text()
    assert table in proc.stdout
    cells = first_row(table)
    assert "loss=ce" in cells[0] and "trainer.seed" not in cells[0]
    assert cells[1:3] == ["2", "0,1"] and "±" in cells[3] and "±" in cells[4]
    assert "baseline" not in table  # one configuration: nothing to compare
    assert not (tmp_path / "mlflow.db").exists()  # tracking was off


def test_cli_multirun_with_a_failed_job_ends_in_one_line_and_says_which(tmp_path: Path) -> None:
    """Hydra's basic sweeper runs every job, then raises the failed one's error: the table
    is written, names the run it left out, and the error is one line (it was a traceback)."""
    sweep_dir = tmp_path / "multirun"
    proc = run_cli_in_process(
        tmp_path,
        "-m",
        "trainer.seed=0,1",
        "optimizer.lr=1e38,0.001",  # the first overflows Adam's update
        "loss=ce",
        "tracking.enabled=false",
        f"hydra.sweep.dir={sweep_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kdsweep: ")]
    assert len(errors) == 1 and "lower optimizer.lr" in errors[0], proc.stderr[-3000:]
    table = (sweep_dir / "seeds_table.md").read_text()
    assert first_row(table)[0] == "optimizer.lr=0.001"
    assert "- optimizer.lr=1e+38: seed 0: FAILED, seed 1: FAILED" in table


def test_cli_tutorial_multirun_with_tracking_off(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun"
    proc = run_cli_in_process(
        tmp_path,
        "-m",
        "experiment=tutorial_kd",
        "trainer.seed=0,1",
        "teacher.seed=0",  # one teacher for both seeds (by default it follows trainer.seed)
        "tracking.enabled=false",
        f"hydra.sweep.dir={sweep_dir}",
        "trainer.epochs=1",
        "teacher.epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep_dir / "tutorial_comparison.md").read_text()
    assert "Tutorial comparison" in proc.stdout
    teacher = row(table, "Teacher (DeepNN, CE): teacher of the KD/cosine/hint runs")
    # both seeds learned from the one cached teacher: one teacher, not two
    assert teacher[1] == "1" and "±" not in teacher[2] and teacher[4] == "FINISHED"
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 1
    kd = row(table, "Student with CE + KD")
    assert kd[1] == "2" and "±" in kd[2] and kd[4] == "FINISHED"
    assert row(table, "Student with CE + cosine")[4] == "not run"
    # the same multirun is also a seeds multirun of one configuration
    seeds = first_row((sweep_dir / "seeds_table.md").read_text())
    assert "experiment=tutorial_kd" in seeds[0] and seeds[1] == "2"
