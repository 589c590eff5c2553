"""The confirmation stage: after the search, the candidates retrain with fresh seeds, paired
across arms, as children of the sweep's parent run; reruns add only what is missing; a
killed stage completes on the next run; the report leads with the paired comparison."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest
import torch

from _helpers import (
    children_of,
    kill_group,
    load_trials,
    mlflow_runs,
    run,
    start,
    sweep_args,
    teacher_cache_fixture,  # noqa: F401  (the teacher_cache fixture)
    wait_for,
)

STUDY = "confirm"
ARMS = {"top1", "ablation", "tutorial", "ce_default"}


def confirm_args(workdir: Path, cache: Path, seeds: int, *extra: str) -> list[str]:
    """A 3-trial kd sweep (1 epoch each) confirming its best config with ``seeds`` seeds."""
    return sweep_args(
        workdir,
        STUDY,
        3,
        "hydra.sweeper.confirm.enabled=true",
        f"hydra.sweeper.confirm.seeds={seeds}",
        "hydra.sweeper.confirm.top_k=1",
        "hydra/sweeper/pruner=none",
        *extra,
        cache_dir=cache,
    )


def _confirmations(workdir: Path) -> list:
    return load_trials(f"sqlite:///{workdir / 'optuna.db'}", f"{STUDY}:confirm")


def _done(workdir: Path) -> Counter:
    return Counter(
        (t.user_attrs["arm"], t.user_attrs["seed"])
        for t in _confirmations(workdir)
        if t.state.name == "COMPLETE"
    )


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory, teacher_cache: Path) -> Path:
    workdir = tmp_path_factory.mktemp("confirmed")
    proc = run(workdir, confirm_args(workdir, teacher_cache, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.slow  # the module's confirmed sweep: ~19 s
def test_every_arm_runs_once_per_fresh_seed(confirmed: Path) -> None:
    done = _done(confirmed)
    assert set(done) == {(arm, seed) for arm in ARMS for seed in (1000, 1001)}
    assert set(done.values()) == {1}  # exactly once each


@pytest.mark.slow  # the module's confirmed sweep
def test_confirmation_runs_are_tagged_children_of_the_sweep(confirmed: Path) -> None:
    runs = mlflow_runs(f"sqlite:///{confirmed / 'mlflow.db'}")
    (parent,) = [r for r in runs if r.data.tags.get("kdsweep.role") == "sweep"]
    confirm = [r for r in children_of(runs, parent.info.run_id)]
    confirm = [r for r in confirm if r.data.tags.get("kdsweep.role") == "confirm"]
    assert len(confirm) == len(ARMS) * 2
    assert {(r.data.tags["kdsweep.arm"], r.data.tags["kdsweep.seed"]) for r in confirm} == {
        (arm, str(seed)) for arm in ARMS for seed in (1000, 1001)
    }
    assert all(r.info.status == "FINISHED" for r in confirm)
    # The teacher is the search's (teacher.seed of the sweep), whatever the student's seed.
    assert {r.data.params["teacher.seed"] for r in confirm} == {"0"}
    ablation = [r for r in confirm if r.data.tags["kdsweep.arm"] == "ablation"]
    top = [r for r in confirm if r.data.tags["kdsweep.arm"] == "top1"]
    assert {r.data.params["loss._target_"] for r in ablation} == {"kdsweep.losses.CrossEntropy"}
    assert {r.data.params["optimizer.lr"] for r in ablation} == {
        r.data.params["optimizer.lr"] for r in top
    }
    # The parent run's description is the report's first sentence.
    assert "vs the same recipe without a teacher" in parent.data.tags["mlflow.note.content"]


@pytest.mark.slow  # the module's confirmed sweep
def test_the_report_leads_with_the_paired_comparison(confirmed: Path) -> None:
    (folder,) = (confirmed / "reports").iterdir()
    report = (folder / "report.md").read_text()
    first = report.split("\n\n")[1]
    assert "vs the same recipe without a teacher" in first and "2 paired seeds" in first
    assert "95 % CI" in first and "Wilcoxon" in first
    assert "## Confirmed on fresh seeds" in report
    assert "Search only, not confirmed" in report  # the search's best, labelled as biased
    assert "one image = 0.39 pt" in report  # the val split's resolution is stated
    page = (folder / "index.html").read_text()
    assert page.index("vs the same recipe without a teacher") < page.index("<h2>Search</h2>")


@pytest.mark.slow  # three sweeps, ~18 s; the planner's own tests cover seeds in test_sweep_faults
def test_a_rerun_trains_nothing_and_more_seeds_add_only_those(
    confirmed: Path, teacher_cache: Path
) -> None:
    proc = run(confirmed, confirm_args(confirmed, teacher_cache, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(_done(confirmed).values()) == len(ARMS) * 2
    proc = run(confirmed, confirm_args(confirmed, teacher_cache, 3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = _done(confirmed)
    assert set(done) == {(arm, seed) for arm in ARMS for seed in (1000, 1001, 1002)}
    assert set(done.values()) == {1}


@pytest.mark.slow
def test_killed_during_confirmation_a_rerun_completes_exactly_the_plan(
    tmp_path: Path, teacher_cache: Path
) -> None:
    args = confirm_args(
        tmp_path,
        teacher_cache,
        3,
        "hydra.sweeper.grace_period=5",
        "hydra.sweeper.heartbeat_interval=1",
    )
    proc = start(tmp_path, args)
    wait_for(lambda: len(_done(tmp_path)) >= 2, 240, "two confirmation runs", proc)
    kill_group(proc, signal.SIGKILL)
    proc.wait()
    assert len(_done(tmp_path)) < len(ARMS) * 3
    again = run(tmp_path, args)
    assert again.returncode == 0, again.stderr[-3000:]
    done = _done(tmp_path)
    assert set(done) == {(arm, seed) for arm in ARMS for seed in (1000, 1001, 1002)}
    assert set(done.values()) == {1}
    search = load_trials(f"sqlite:///{tmp_path / 'optuna.db'}", STUDY)
    assert sum(t.state.name == "COMPLETE" for t in search) == 3
    # The run the SIGKILL cut short was closed by the rerun, not left RUNNING.
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "RUNNING" not in {r.info.status for r in runs}


def test_paired_seeds_give_identical_initial_weights_across_arms(teacher_cache: Path) -> None:
    """Seed s means the same student initialisation in every arm: KD and its teacher-less
    ablation start from the same weights (the teacher is prepared after the student)."""
    from conftest import compose_config
    from kdsweep.config.validation import validate
    from kdsweep.run.plan import plan_run

    def student(*overrides: str) -> dict[str, torch.Tensor]:
        cfg = compose_config(
            *overrides,
            "teacher.epochs=1",
            "teacher.seed=0",
            "trainer.device=cpu",
            f"cache_dir={teacher_cache}",
        )
        return plan_run(validate(cfg)).student.state_dict()

    kd = student("loss=kd", "trainer.seed=1000", "loss.temperature=6")
    ce = student("loss=ce", "trainer.seed=1000")
    other = student("loss=ce", "trainer.seed=1001")
    assert kd.keys() == ce.keys()
    assert all(torch.equal(kd[k], ce[k]) for k in kd)
    assert not all(torch.equal(kd[k], other[k]) for k in kd)


def test_ties_in_the_objective_go_to_the_lower_val_loss() -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    from kdsweep.report import summarize
    from kdsweep.sweep.arms import ranked_trials

    study = optuna.create_study(direction="maximize")
    dist = {"loss.temperature": FloatDistribution(1, 10)}
    for number, val_loss in enumerate((0.40, 0.25, 0.31)):
        history = [
            {"epoch": 1, "val_loss": 9.0, "val_acc": 50.0},
            {"epoch": 2, "val_loss": val_loss, "val_acc": 97.92},
        ]
        study.add_trial(
            optuna.trial.create_trial(
                value=97.92,
                params={"loss.temperature": 2.0 + number},
                distributions=dist,
                user_attrs={"history": history, "metrics": {"best_epoch": 2}},
            )
        )
    assert [t.number for t in ranked_trials(study)] == [1, 2, 0]
    assert summarize(study).best.number == 1


def test_a_dead_confirmation_run_is_failed_requeued_and_its_mlflow_run_closed(
    tmp_path: Path,
) -> None:
    """What a SIGKILL during the confirmation stage leaves: a RUNNING confirmation trial of
    a dead sweeper, whose MLflow run is RUNNING. The next start fails it, hands its run to
    be closed, and the next plan queues the (arm, seed) again."""
    import socket
    import subprocess
    import sys

    from optuna.trial import TrialState

    from kdsweep.sweep.arms import Arm
    from kdsweep.sweep.confirm import open_companion, plan
    from kdsweep.sweep.liveness import WORKER_ATTR, claim_trial, fail_dead_trials
    from kdsweep.sweep.studies import open_storage, trial_id

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    companion = open_companion(storage, "s")
    arms = [Arm("top1", "#0", ("loss.temperature=3",), 0)]
    assert plan(storage, companion, arms, [1000], 0) == 1
    trial = companion.ask()
    tid = trial_id(storage, storage.get_study_id_from_name(companion.study_name), trial.number)
    claim_trial(storage, tid, "confirm")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    storage.set_trial_user_attr(tid, WORKER_ATTR, f"{socket.gethostname()}:{dead}")
    storage.set_trial_user_attr(tid, "mlflow_run_id", "run-of-the-dead-job")

    closed = [t.user_attrs.get("mlflow_run_id") for t in fail_dead_trials(storage, companion)]
    assert plan(storage, companion, arms, [1000], 0) == 1  # queued again
    assert closed == ["run-of-the-dead-job"]
    dead_trial = storage.get_trial(tid)
    assert dead_trial.state == TrialState.FAIL
    assert dead_trial.user_attrs["error"] == "interrupted"


def _confirmed_study(confirmed_val: dict[int, float]) -> tuple:
    """A search of three trials (#0 best on val) whose top 2 were confirmed with two
    seeds each, trial number -> confirmed val accuracy; test is val - 1."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from kdsweep.sweep.arms import plan_arms, ranked_trials
    from kdsweep.sweep.confirm import open_companion, plan

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dist = {"loss.temperature": FloatDistribution(1, 10)}
    for temperature, value in ((2.0, 97.72), (3.0, 97.0), (4.0, 96.0)):
        params = {"loss.temperature": temperature}
        study.add_trial(create_trial(value=value, params=params, distributions=dist))
    study.set_user_attr("tutorial_trial_number", 2)
    companion = open_companion(storage, "s")
    arms = plan_arms(study, 2, [], list(dist))
    plan(storage, companion, arms, [1000, 1001], 0)
    numbers = {arm.key: arm.source_trial for arm in arms}
    while companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = companion.ask()
        arm = trial.user_attrs["arm"]
        val = confirmed_val.get(numbers[arm], 80.0) if arm.startswith("top") else 80.0
        val += 0.1 * (trial.user_attrs["seed"] - 1000)
        trial.set_user_attr("metrics", {"objective": val, "test_acc": val - 1})
        companion.tell(trial, val)
    return study, companion, ranked_trials(study)[0]


def test_the_champion_is_the_candidate_that_confirmed_best() -> None:
    """#0 is the search's best, #1 confirms higher on val: #1 is registered, its
    description gives its own confirmed figures; the headline still compares top1."""
    from types import SimpleNamespace

    from kdsweep.publish import champion_trial
    from kdsweep.registry import describe

    study, companion, best = _confirmed_study({0: 90.0, 1: 95.0})
    assert best.number == 0
    champion = champion_trial(study, best, companion)
    assert champion is not None and champion.number == 1
    run = SimpleNamespace(data=SimpleNamespace(metrics={"objective": 97.0, "test_acc": 96.0}))
    text = describe("s", champion, run, companion, {"loss": "kd"})
    assert text.startswith("Best confirmed (top2): trial #1 of study s")
    assert "Confirmed over 2 fresh seed(s): test acc 94.05" in text
    assert "#0 (temperature=2) with loss=kd vs the same recipe without a teacher" in text
    # Where the search's best also confirmed best, it stays the champion.
    study, companion, best = _confirmed_study({0: 95.0, 1: 90.0})
    assert champion_trial(study, best, companion).number == 0  # type: ignore[union-attr]


def test_the_report_names_the_sweeps_own_parts() -> None:
    """A sweep of the user's loss and teacher is not reported as KD, nor its reference
    trial as the tutorial's KD student."""
    from kdsweep.report import lead, summarize
    from kdsweep.results.summary import comparison, headline

    study, companion, _ = _confirmed_study({0: 95.0})
    study.set_user_attr("parts", {"loss": "sharp_kd", "teacher": "resnet18", "model": "light"})
    summary = summarize(study, companion)
    parts = "loss=sharp_kd, teacher=resnet18, model=light"
    assert f"#0 (temperature=2) with {parts} vs the same recipe" in lead(summary)
    assert f"over the reference setting ({parts})" in headline(summary)
    assert comparison(summary)[1][0] == f"Reference setting ({parts}) (trial #2)"
    assert "KD" not in lead(summary) + headline(summary)


def test_a_shipped_searchs_study_name_names_the_users_parts() -> None:
    from kdsweep.sweep.core import named_for_parts
    from kdsweep.sweep.settings import SweepSettings
    from test_search_configs import _compose_with_hydra

    def name(*overrides: str) -> str:
        from hydra.core.hydra_config import HydraConfig

        config = _compose_with_hydra("hparams_search=kd", *overrides)
        options = dict(direction="maximize", storage="sqlite:///x.db", n_trials=1, n_jobs=1)
        options |= dict(max_failure_rate=0.0, params={}, pruner={}, enqueue_trials=[])
        options |= dict(baselines=False, report_dir="r", heartbeat_interval=1, grace_period=2)
        HydraConfig.instance().set_config(config)  # the name reads hydra:runtime.choices
        try:
            study_name = str(config.hydra.sweeper.study_name)
        finally:
            HydraConfig.instance().cfg = None
        settings = SweepSettings(study_name=study_name, **options)
        return named_for_parts(settings, config).study_name

    user_teacher = "teacher.model._target_=torchvision.models.resnet18"
    assert name() == "kd-digits-light"  # kdsweep's own parts: the name existing studies have
    assert name("loss=dkd") == "kd-digits-light"  # a shipped option: drift guards the study
    assert name(user_teacher) == "kd-digits-light-teacher_resnet18"
    assert name(user_teacher, "loss._target_=kdsweep.losses.DKD") == (
        "kd-digits-light-loss_DKD-teacher_resnet18"
    )
    assert name(user_teacher, "hydra.sweeper.study_name=mine") == "mine"  # the user's own
