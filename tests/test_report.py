"""The sweep report, built from hand-made trials in a temporary SQLite study."""

from __future__ import annotations

import contextlib
import csv
import html
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from kdsweep import report_cli
from kdsweep.report import headline, summarize, write_report

STUDY = "kd_search"
DISTS = {
    "loss.temperature": FloatDistribution(1.0, 8.0),
    "loss.soft_target_weight": FloatDistribution(0.0, 1.0),
    "loss.ce_weight": FloatDistribution(0.0, 1.0),
    "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "optimizer": CategoricalDistribution(["adam", "sgd_nesterov"]),
}
# (state, temperature, soft weight, ce weight, lr, optimizer, per-epoch val acc, test acc)
TRIALS = [
    (TrialState.COMPLETE, 2.0, 0.25, 0.75, 1e-3, "adam", [61.0, 66.5, 70.8], 70.1),
    (TrialState.COMPLETE, 4.0, 0.60, 0.40, 2e-3, "adam", [63.0, 69.0, 72.35], 71.9),
    (TrialState.PRUNED, 7.5, 0.90, 0.10, 8e-3, "sgd_nesterov", [40.0, 42.0], None),
    (TrialState.FAIL, 3.0, 0.50, 0.50, 5e-3, "sgd_nesterov", [], None),
    (TrialState.COMPLETE, 1.5, 0.10, 0.90, 3e-4, "sgd_nesterov", [55.0, 60.0, 64.2], 63.0),
    # Enough completed trials for parameter importances (plots.MIN_TRIALS_FOR_IMPORTANCE).
    (TrialState.COMPLETE, 3.5, 0.30, 0.70, 5e-4, "adam", [50.0, 58.0, 61.5], 60.2),
    (TrialState.COMPLETE, 6.0, 0.80, 0.20, 6e-3, "adam", [45.0, 52.0, 55.0], 54.1),
    (TrialState.COMPLETE, 2.5, 0.45, 0.55, 1.5e-3, "sgd_nesterov", [58.0, 63.0, 67.9], 66.6),
    (TrialState.COMPLETE, 7.9, 0.95, 0.05, 9e-3, "sgd_nesterov", [30.0, 35.0, 38.0], 37.5),
    (TrialState.COMPLETE, 1.2, 0.05, 0.95, 2e-4, "adam", [52.0, 59.0, 62.0], 61.0),
]
TUTORIAL = 0


def _trial(state, temp, soft, ce, lr, opt, accs, test):
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_acc": a}
        for e, a in enumerate(accs, start=1)
    ]
    attrs = {"mlflow_run_id": f"run{temp}", "history": history}
    if state == TrialState.COMPLETE:
        attrs["metrics"] = {
            "objective": max(accs),
            "best_val_acc": max(accs),
            "final_val_acc": accs[-1],
            "test_acc": test,
            "wall_seconds": 12.5,
            "train_images_per_s": 5000.0,
        }
    if state == TrialState.FAIL:
        attrs["error"] = "RuntimeError: lost postgresql://kd:hunter2@db/optuna"
    params = {
        "loss.temperature": temp,
        "loss.soft_target_weight": soft,
        "loss.ce_weight": ce,
        "optimizer.lr": lr,
        "optimizer": opt,
    }
    return create_trial(
        state=state,
        value=max(accs) if state == TrialState.COMPLETE else None,
        params=params,
        distributions=DISTS,
        user_attrs=attrs,
        intermediate_values={e: a for e, a in enumerate(accs, start=1)},
    )


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[str, optuna.Study]:
    """The hand-made study in a temporary SQLite file: (storage URL, study)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('storage') / 'optuna.db'}"
    study = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    for spec in TRIALS:
        study.add_trial(_trial(*spec))
    study.set_user_attr(
        "baselines",
        {
            "teacher": {"val_acc": 75.1, "test_acc": 74.6},
            "student_ce": {"val_acc": 69.86, "test_acc": 69.2},
        },
    )
    study.set_user_attr("tutorial_trial_number", TUTORIAL)
    study.set_user_attr("search_space", {"loss.temperature": "float 1..8"})
    study.set_user_attr("n_trials", 8)
    study.set_user_attr("sampler", "TPESampler(seed=0)")
    study.set_user_attr("mlflow_parent_run_id", "parent123")
    return url, study


@pytest.fixture(scope="module")
def cli_rebuild(stored, tmp_path_factory) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``kdsweep-report`` run as a separate process on the stored study. It is started
    before the in-process tests (the first one asks for it) and runs beside them: its
    imports (torch via kdsweep.files, scikit-learn via optuna.importance) are most of
    its time. Its test, last in the file, collects the result."""
    cwd = tmp_path_factory.mktemp("cwd")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdsweep.report_cli", "--storage", stored[0], "--study", STUDY],
        cwd=cwd,
        env=dict(os.environ, MPLBACKEND="Agg"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, cwd
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def built(stored, tmp_path_factory) -> Path:
    """The report, written once for the tests that read it, over a stale earlier plot."""
    out = tmp_path_factory.mktemp("report")
    (out / "param_old_knob.png").write_bytes(b"old")
    index = write_report(stored[1], out)
    assert index == out / "index.html"
    return out


def _expected_best() -> tuple[int, float]:
    done = [(i, max(t[6])) for i, t in enumerate(TRIALS) if t[0] == TrialState.COMPLETE]
    number, value = max(done, key=lambda d: d[1])
    return number, value - max(TRIALS[TUTORIAL][6])


def _headline(index: Path) -> str:
    match = re.search(r'<p class="headline[^"]*">(.*?)</p>', index.read_text())
    assert match, "no headline in index.html"
    return html.unescape(match.group(1))


def test_report_files_headline_and_table(stored, cli_rebuild, built):
    _, study = stored
    out = built
    index = out / "index.html"
    for name in ("index.html", "report.md", "trials.csv", "history.png", "importance.png"):
        assert (out / name).is_file(), name
    for name in ("curves.png", "all_curves.png", "param_loss_temperature.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert (out / "param_optimizer_lr.png").is_file()
    assert (out / "param_optimizer.png").is_file()  # categorical: a strip plot
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporaries

    best, gain = _expected_best()
    line = _headline(index)
    assert f"Best trial #{best}" in line
    assert f"{gain:+.2f} points" in line
    assert f"trial #{TUTORIAL}" in line
    summary = summarize(study)
    assert summary.best.number == best
    assert summary.gain_val == pytest.approx(gain)

    page = index.read_text()
    for png in ("history.png", "importance.png", "curves.png", "param_optimizer_lr.png"):
        assert f'<img src="{png}"' in page
    assert "Teacher" in page and "CE-only student" in page and "75.10 %" in page
    assert "hunter2" not in page  # the failed trial's error is masked
    table = page[page.index("<h2>Trials</h2>") :]
    numbers = [int(n) for n in re.findall(r'<tr class="\w+[^"]*"><td class="l">(\d+)<', table)]
    assert numbers == list(range(len(TRIALS)))
    assert "PRUNED" in table and "FAIL" in table and "pruned after epoch 2" in table

    md = (out / "report.md").read_text()
    assert f"Best trial #{best}" in md and f"{gain:+.2f} points" in md
    assert md.count("\n| ") >= len(TRIALS) + 1
    assert "hunter2" not in md

    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["number"]) for r in rows] == list(range(len(TRIALS)))
    assert [r["state"] for r in rows] == [t[0].name for t in TRIALS]
    assert float(rows[best]["objective"]) == pytest.approx(max(TRIALS[best][6]))
    assert rows[2]["objective"] == "" and rows[2]["loss.temperature"] == "7.5"
    assert "hunter2" not in (out / "trials.csv").read_text()


def test_report_without_completed_trials(tmp_path):
    study = optuna.create_study(study_name="<b>empty</b>")
    pruned = _trial(TrialState.PRUNED, 2.0, 0.25, 0.75, 1e-3, "adam", [30.0], None)
    study.add_trial(pruned)
    study.add_trial(_trial(TrialState.FAIL, 2.0, 0.25, 0.75, 1e-3, "adam", [], None))
    index = write_report(study, tmp_path / "r", storage_url="postgresql://u:secret@h/db")
    page = index.read_text()
    assert "No completed trial yet" in _headline(index)
    assert "&lt;b&gt;empty&lt;/b&gt;" in page and "<b>empty</b>" not in page
    assert "secret" not in page and "postgresql://u:***@h/db" in page
    assert "at least 8 completed trials (0 so far)" in page
    assert (tmp_path / "r" / "all_curves.png").is_file()  # the pruned trial's partial curve
    assert not (tmp_path / "r" / "curves.png").exists()
    assert "No completed trial yet" in (tmp_path / "r" / "report.md").read_text()

    bare = optuna.create_study(study_name="bare")  # no trials, no attrs at all
    index = write_report(bare, tmp_path / "bare")
    assert "No completed trial yet: 0 trials" in _headline(index)
    assert (tmp_path / "bare" / "trials.csv").read_text().count("\n") == 1


def test_rebuild_drops_stale_plots(built):
    assert not (built / "param_old_knob.png").exists()


def test_cli_list_and_errors_in_process(stored, tmp_path, capsys):
    url, _ = stored
    assert report_cli.main(["--storage", url, "--list"]) == 0
    out = capsys.readouterr().out
    complete = sum(t[0] == TrialState.COMPLETE for t in TRIALS)
    row = rf"{STUDY}\s+{len(TRIALS)}\s+{complete}\s+1\s+1\s+0\s+72\.35"
    assert STUDY in out and re.search(row, out)

    with pytest.raises(SystemExit, match="^2$"):
        report_cli.main(["--storage", url, "--study", "nope"])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("kdsweep-report: error: no study named 'nope'")
    assert STUDY in captured.err  # names the studies that are there

    absent = f"sqlite:///{tmp_path / 'typo.db'}"
    with pytest.raises(SystemExit, match="^2$"):
        report_cli.main(["--storage", absent, "--list"])
    err = capsys.readouterr().err
    assert err.startswith("kdsweep-report: error: ") and err.count("\n") == 1
    assert not (tmp_path / "typo.db").exists()  # reading never creates a database


def test_the_report_names_the_labelled_fractions_when_labels_were_scarce(tmp_path):
    study = optuna.create_study(study_name="few", direction="maximize")
    study.add_trial(create_trial(value=70.0, params={}, distributions={}))
    study.set_user_attr("definition", {"data.labelled_fraction": "0.1", "data.name": '"digits"'})
    write_report(study, tmp_path / "few")
    line = "Labels: the student saw 10 % and the teacher all of the training split"
    assert line in (tmp_path / "few" / "index.html").read_text()
    assert line + "'s labels" in (tmp_path / "few" / "report.md").read_text()

    study.set_user_attr("definition", {"data.labelled_fraction": "1.0"})
    write_report(study, tmp_path / "all")
    assert "Labels:" not in (tmp_path / "all" / "report.md").read_text()


def _fake_mlflow_db(path: Path) -> None:
    """A SQLite file with MLflow's tracking tables (what kind of store it is, not a whole
    MLflow schema)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        for table in ("experiments", "runs", "metrics", "alembic_version"):
            db.execute(f"CREATE TABLE {table} (id INTEGER)")
        db.commit()


@pytest.mark.parametrize("kind", ["mlflow", "empty"])
def test_cli_reading_a_database_that_is_no_study_storage_writes_nothing(tmp_path, capsys, kind):
    """--storage naming MLflow's database (or an empty file) is refused in one line that
    names hydra.sweeper.storage, and the file is left byte for byte as it was: opening it
    as a storage would have created Optuna's tables in it."""
    path = tmp_path / "mlflow.db"
    if kind == "mlflow":
        _fake_mlflow_db(path)
    else:
        path.touch()
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="^2$"):
        report_cli.main(["--storage", f"sqlite:///{path}", "--list"])
    err = capsys.readouterr().err
    assert err.startswith("kdsweep-report: error: --storage ") and err.count("\n") == 1
    assert "not an Optuna storage" in err and "hydra.sweeper.storage" in err
    assert path.read_bytes() == before


def test_tracking_uri_naming_an_optuna_storage_is_refused(tmp_path):
    from kdsweep.config.schema import TrackingConf
    from kdsweep.core.errors import KdsweepError
    from kdsweep.run.tracking import RunTracker

    path = tmp_path / "optuna.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{path}")
    before = path.read_bytes()
    conf = TrackingConf(uri=f"sqlite:///{path}")
    with pytest.raises(KdsweepError, match="is an Optuna storage .*point tracking.uri at"):
        RunTracker(conf, "run").check()
    assert path.read_bytes() == before


def test_cli_journal_storage_and_bare_trial(tmp_path, capsys):
    """A journal storage, and a completed trial that carries no user attrs at all."""
    url = f"journal:{tmp_path / 'sweep.journal.log'}"
    from kdsweep.sweep.studies import open_storage

    study = optuna.create_study(study_name="j", storage=open_storage(url), direction="maximize")
    temperature = {"loss.temperature": DISTS["loss.temperature"]}
    study.add_trial(
        create_trial(value=71.0, params={"loss.temperature": 3.0}, distributions=temperature)
    )
    out = tmp_path / "o"
    assert report_cli.main(["--storage", url, "--study", "j", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    line = _headline(out / "index.html")
    assert "Best trial #0: 71.00 % val" in line and "no tutorial-default trial" in line
    assert (out / "history.png").is_file() and (out / "param_loss_temperature.png").is_file()
    assert "No learning curves" in (out / "index.html").read_text()
    with pytest.raises(SystemExit, match="^2$"):
        report_cli.main(["--storage", url, "--study", "x"])
    assert "no study named 'x'" in capsys.readouterr().err


def test_cli_rebuilds_from_storage(cli_rebuild):
    proc, cwd = cli_rebuild
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    expected = Path("multirun_reports") / STUDY / "index.html"  # default: under the cwd
    assert stdout.strip().splitlines()[-1] == str(expected)
    line = _headline(cwd / expected)
    best, gain = _expected_best()
    assert f"Best trial #{best}" in line and f"{gain:+.2f} points" in line
    assert (cwd / "multirun_reports" / STUDY / "history.png").is_file()
    with open(cwd / "multirun_reports" / STUDY / "trials.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(TRIALS)


def test_headline_when_the_tutorial_trial_has_no_value():
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(TrialState.PRUNED, 2.0, 0.25, 0.75, 1e-3, "adam", [50.0], None))
    study.add_trial(_trial(*TRIALS[1]))
    study.set_user_attr("tutorial_trial_number", 0)
    summary = summarize(study)
    assert summary.best.number == 1 and summary.gain_val is None
    assert "tutorial-default trial #0 is pruned" in headline(summary)
    study.set_user_attr("tutorial_trial_number", 7)
    assert "tutorial-default trial #7 is not in the study" in headline(summarize(study))


def test_templates_escape_hostile_names_and_values(tmp_path):
    """index.html autoescapes what the study carries (its name, parameter values); report.md
    escapes ``|`` so a value cannot split its table cell, and ``<`` so it cannot add HTML."""
    hostile = "<script>alert(1)</script>"
    study = optuna.create_study(study_name=f"kd {hostile}", direction="maximize")
    value = f"adam|{hostile}"
    dists = {"optimizer": CategoricalDistribution([value, "sgd"])}
    study.add_trial(create_trial(value=70.0, params={"optimizer": value}, distributions=dists))
    index = write_report(study, tmp_path / "r")

    page = index.read_text()
    assert "<script>" not in page
    assert "<h1>Sweep report: kd &lt;script&gt;alert(1)&lt;/script&gt;</h1>" in page
    assert page.count("<td>adam|&lt;script&gt;alert(1)&lt;/script&gt;</td>") == 2  # best, trials

    md = (tmp_path / "r" / "report.md").read_text()
    assert "<script>" not in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| # |"))
    row = next(line for line in lines if line.startswith("| 0 |"))
    assert "| adam\\|&lt;script>alert(1)&lt;/script> |" in row  # no < opens a tag

    def cells(line: str) -> list[str]:
        return re.split(r"(?<!\\)\|", line)

    assert len(cells(row)) == len(cells(header))  # the escaped | stays inside its cell


def test_history_zooms_to_where_trials_and_baselines_differ(stored):
    from kdsweep.report.plots import zoom_band

    summary = summarize(stored[1])
    low, high = zoom_band(summary)
    best = max(max(t[6]) for t in TRIALS if t[0] == TrialState.COMPLETE)
    assert high >= best and high <= 100
    # The worst completed trial (38 %) lies below the band: it would squash the rest.
    assert 38.0 < low < best
    for ref in (b["val_acc"] for b in summary.baselines.values()):
        assert low <= ref <= high


def test_parameter_plots_show_pruned_trials_and_plain_log_ticks(stored, tmp_path):
    from kdsweep.report.plots import plot_param

    study = stored[1]
    summary = summarize(study)
    path = tmp_path / "lr.png"
    assert plot_param(study, summary, "optimizer.lr", path) is None
    assert path.read_bytes()[:4] == b"\x89PNG"

    from kdsweep.report import plots

    captured = {}
    real = plots._save

    def keep(fig, target):  # noqa: ANN001, ANN202 - look at the axes before saving
        ax = fig.axes[0]
        captured["labels"] = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
        captured["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        real(fig, target)

    plots._save = keep
    try:
        plot_param(study, summary, "optimizer.lr", path)
    finally:
        plots._save = real
    assert "pruned (last value)" in captured["legend"]
    assert captured["labels"] & {"0.001", "0.002", "0.005", "0.0005"}
    assert not any("^" in label or "times" in label for label in captured["labels"])
