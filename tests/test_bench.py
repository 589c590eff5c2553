"""benchmarks/bench.py: every row produces a number (never how fast: these machines are noisy),
and each side-by-side comparison really compares the same computation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from kdsweep.data import SyntheticData, load_splits
from kdsweep.losses import CrossEntropy, KnowledgeDistillation, StepInputs
from kdsweep.training.loop import fit

# The benchmark is not part of the package: its modules import each other from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench  # noqa: E402
from loops import (  # noqa: E402
    KD,
    bare_ce_fit,
    bench_trainer,
    make_models,
    seed_kd_epoch,
    seed_loader,
)


def _rows_by_key(report: dict) -> dict[str, dict]:
    return {row["key"]: row for row in report["rows"]}


def _assert_numeric(row: dict) -> None:
    assert row["error"] is None, row["error"]
    assert isinstance(row["figure"], float) and math.isfinite(row["figure"]), row
    assert row["result"] in ("PASS", "FAIL", "info"), row


@pytest.fixture(scope="module")
def tiny_data():
    return load_splits(SyntheticData(size=300, test_size=20))


@pytest.mark.slow  # three benchmark rows: ~13 s
def test_smoke_rows_a_b_e_produce_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--smoke", "--only", "abe", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.read_text())
    rows = _rows_by_key(report)
    assert sorted(rows) == ["a", "b", "e1", "e2"]
    for row in rows.values():
        _assert_numeric(row)
    assert rows["a"]["details"]["kdsweep_images_per_s"] > 0
    assert rows["a"]["details"]["seed_images_per_s"] > 0
    assert rows["b"]["details"]["fit_s"] > 0 and rows["b"]["details"]["bare_s"] > 0
    assert rows["e1"]["details"]["data_nbytes"] > 0
    # The second memory trial found the teacher outputs the first one cached.
    assert rows["e1"]["details"]["cache_was_present"] == 0.0
    assert rows["e2"]["details"]["cache_was_present"] == 1.0
    # The table: the exact command first, one line per row, targets and results.
    assert printed.splitlines()[0] == (
        f"command: python benchmarks/bench.py --smoke --only abe --device cpu --json {out}"
    )
    for key in rows:
        assert any(line.startswith(f"{key} ") for line in printed.splitlines())
    assert ">= 8x" in printed and "<= 1.10x" in printed


@pytest.mark.slow
def test_smoke_rows_c_d_run_real_sweeps(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(
        ["--smoke", "--only", "cd", "--device", "cpu", "--json", str(out),
         "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    rows = _rows_by_key(json.loads(out.read_text()))
    assert sorted(rows) == ["c1", "c2", "d"]
    for row in rows.values():
        _assert_numeric(row)
    c = rows["c1"]["details"]
    # A 3-trial sweep of 1 epoch reports at most one value per trial.
    assert 0 < c["epochs_pruned"] <= 3 and c["epochs_unpruned"] == 3
    assert 0 <= c["best_acc_pruned"] <= 100
    assert rows["d"]["details"]["trial_counts"] == [1, 3]
    assert rows["d"]["details"]["mean_trial_run_s"] > 0
    assert isinstance(rows["d"]["details"]["overhead_median_of_trials_s"], float)
    # Every sweep kept its files in the work directory, not in the current one.
    assert list((tmp_path / "work").glob("run-*/c-median/optuna.db"))
    assert list((tmp_path / "work").glob("run-*/d-3/multirun_reports"))


def test_slot_utilization_is_busy_time_over_slots_times_the_search_wall():
    from sweeps import slot_utilization

    assert slot_utilization([(0.0, 10.0), (0.0, 10.0)], 2) == (1.0, 10.0)
    # A batch waits for its slowest trial: the pruned one's slot idles half the batch.
    assert slot_utilization([(0.0, 10.0), (0.0, 5.0)], 2) == (0.75, 10.0)
    assert slot_utilization([(0.0, 4.0), (4.0, 10.0)], 1) == (1.0, 10.0)


@pytest.mark.slow
def test_smoke_row_i_runs_the_three_sweeps(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(
        ["--smoke", "--only", "i", "--device", "cpu", "--json", str(out),
         "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    rows = _rows_by_key(json.loads(out.read_text()))
    assert sorted(rows) == ["i1", "i2", "i3"]
    for row in rows.values():
        _assert_numeric(row)
    details = rows["i1"]["details"]
    for way in ("workers2", "joblib2", "workers1"):
        assert 0 < details[way]["utilization"] <= 1.0 + 1e-9, details[way]
    assert "hydra.sweeper.workers=2" in details["workers2"]["command"]


@pytest.mark.slow
def test_smoke_row_j_runs_two_front_sweeps(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(
        ["--smoke", "--only", "j", "--device", "cpu", "--json", str(out),
         "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    rows = _rows_by_key(json.loads(out.read_text()))
    assert sorted(rows) == ["j1", "j2", "j3"]
    for row in rows.values():
        _assert_numeric(row)
    j = rows["j1"]["details"]
    # 3 trials of 1 epoch, unpruned: 3 epochs; both fronts against one reference point
    assert j["epochs_unpruned"] == 3 and 0 < j["epochs_pruned"] <= 3
    assert j["hypervolume_unpruned"] > 0 and j["reference_point"]["val_acc"] == 0.0
    assert 0 < j["trial_costs_s"] <= j["all_costs_s"]
    assert list((tmp_path / "work").glob("run-*/j-pruned/optuna.db"))


def test_seed_kd_formula_equals_kdsweep_objective():
    torch.manual_seed(0)
    student, teacher = torch.randn(16, 10), torch.randn(16, 10) * 3
    labels = torch.randint(0, 10, (16,))
    ours = KnowledgeDistillation(KD)(StepInputs(labels, student, teacher_logits=teacher)).total

    # The seed's formula, as seed_kd_epoch writes it.
    T = KD.temperature
    soft = torch.softmax(teacher / T, dim=-1)
    log_p = torch.log_softmax(student / T, dim=-1)
    soft_loss = torch.sum(soft * (soft.log() - log_p)) / 16 * T**2
    seed = KD.soft_target_weight * soft_loss + KD.ce_weight * torch.nn.functional.cross_entropy(
        student, labels
    )
    torch.testing.assert_close(ours, seed)


def test_seed_kd_epoch_trains(tiny_data):
    models = make_models(tiny_data, torch.device("cpu"))
    student = models.student(tiny_data, torch.device("cpu"))
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    loss = seed_kd_epoch(
        models.teacher,
        student,
        seed_loader(tiny_data.train_x, tiny_data.train_y),
        optimizer,
        torch.device("cpu"),
    )
    assert math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_bare_loop_is_the_same_computation_as_fit(tiny_data):
    """Row b compares like with like: same permutation, same steps, same weights after."""
    device = torch.device("cpu")
    models = make_models(tiny_data, device)
    trainer = bench_trainer(device, epochs=2)
    trained = []
    for train in ("fit", "bare"):
        student = models.student(tiny_data, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        torch.manual_seed(123)  # dropout draws the same masks on both sides
        if train == "fit":
            d = tiny_data
            fit(student, CrossEntropy(), optimizer, d.train_x, d.train_y, d.val_x, d.val_y, trainer)
        else:
            bare_ce_fit(student, tiny_data, trainer, optimizer)
        trained.append(student.state_dict())
    for name, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][name], msg=name)


def test_only_refuses_unknown_rows():
    with pytest.raises(SystemExit):
        bench._parse(["--only", "az"])


def test_table_lists_errors_and_results():
    rows = [
        bench.Row("a", "m", ">= 8x", figure=9.0, figure_text="9.0x", passed=True),
        bench.Row("b", "m", "<= 1.10x", figure=1.2, figure_text="1.200x", passed=False),
        bench.Row("c1", "m", "<= 50%", error="RuntimeError: boom"),
        bench.Row("e1", "m", "report", figure=2.0, figure_text="2.0x"),
    ]
    text = bench.format_table(rows, ["command: kdsweep-bench"])
    assert text.splitlines()[0] == "command: kdsweep-bench"
    results = {line.split()[0]: line.split()[-1] for line in text.splitlines()[3:7]}
    assert results == {"a": "PASS", "b": "FAIL", "c1": "ERROR", "e1": "info"}
    assert "c1: error: RuntimeError: boom" in text


def test_gpu_row_on_a_cpu_says_it_needs_a_gpu_and_is_not_an_error(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--smoke", "--only", "f", "--device", "cpu", "--json", str(out)])
    assert code == 0
    rows = _rows_by_key(json.loads(out.read_text()))
    assert sorted(rows) == ["f1", "f2", "f3"]
    for row in rows.values():
        assert row["error"] is None and row["figure"] is None and row["result"] == "-"
        assert row["kdsweep"] == "needs a GPU"
    assert "needs a GPU" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA host syncs")
def test_fit_syncs_the_host_per_epoch_not_per_batch(tiny_data):
    from gpu import count_host_syncs

    device = torch.device("cuda")
    data = tiny_data.to(device)
    models = make_models(data, device)

    def train(epochs: int, batch_size: int) -> None:
        student = models.student(data, device)
        optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
        trainer = bench_trainer(device, epochs)
        trainer.batch_size = batch_size
        fit(student, CrossEntropy(), optimizer, data.train_x, data.train_y,
            data.val_x, data.val_y, trainer)  # fmt: skip

    # Ten times more batches must not mean more syncs; a .item() per batch would.
    assert count_host_syncs(lambda: train(2, 8)) == count_host_syncs(lambda: train(2, 80))
