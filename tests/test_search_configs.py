"""Every ``hparams_search`` config composes, searches keys its loss has, and its enqueued
reference setting is a valid run; the newest run one trial from the command line. Every
search config and every experiment runs end to end through its confirmation stage (tiny
sizes), and a confirmation that cannot pair its seeds fails the command."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from _helpers import (
    load_study,
    load_trials,
    mlflow_client,
    mlflow_runs,
    run_in_process,
    states,
    sweep_args,
)
from kdsweep.config.folder import config_dir
from kdsweep.config.validation import validate

SEARCHES = sorted(p.stem for p in (Path(config_dir()) / "hparams_search").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
#: What an experiment needs beyond FAST to run here: CIFAR-100's recipe on a little
#: synthetic data of its shape (no data set can be downloaded here).
EXPERIMENT_DATA = {
    "cifar100_recipe": ("data=synthetic", "data.num_classes=100", "data.size=200"),
}


def _compose_with_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), job_name="test"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("search", SEARCHES)
def test_each_search_space_names_keys_of_its_config_and_its_reference_validates(
    search: str,
) -> None:
    cfg = _compose_with_hydra(f"hparams_search={search}")
    sweeper = cfg.hydra.sweeper
    assert sweeper.confirm.enabled and sweeper.confirm.seeds >= 2
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", (search, key)
    for reference in sweeper.enqueue_trials:
        overrides = [f"hparams_search={search}"]
        overrides += [f"{k}={v}" for k, v in reference.items()]
        job = _compose_with_hydra(*overrides)
        OmegaConf.set_struct(job, False)
        job.pop("hydra")
        validate(job)  # raises ConfigError with the fix if the reference is not a valid run


@pytest.mark.parametrize(
    "search", ["dist", *(pytest.param(s, marks=pytest.mark.slow) for s in ("dkd", "at", "hint"))]
)
def test_a_new_methods_search_runs_from_the_command_line(
    tracked_workdir: Path, teacher_cache: Path, search: str
) -> None:
    study = f"{search}-smoke"
    args = sweep_args(
        tracked_workdir, study, 2, f"hparams_search={search}", cache_dir=teacher_cache
    )
    proc = run_in_process(tracked_workdir, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load_trials(f"sqlite:///{tracked_workdir / 'optuna.db'}", study)
    assert states(trials) == {"COMPLETE": 2}
    expected = _compose_with_hydra(f"hparams_search={search}").hydra.sweeper.params
    assert set(trials[0].params) == set(expected)  # the search's own knobs, not kd's


def _confirmed(workdir: Path, cache: Path, *config: str) -> None:
    """Sweep ``config`` (2 trials, the CE baseline, top1 confirmed with 2 seeds; 1 epoch
    each) in this process: it exits 0, and every planned run of every arm completed."""
    study = "confirmed"
    args = sweep_args(
        workdir,
        study,
        2,
        *config,
        "hydra.sweeper.baselines=true",
        "hydra.sweeper.confirm.enabled=true",
        "hydra.sweeper.confirm.seeds=2",
        "hydra.sweeper.confirm.top_k=1",
        "hydra/sweeper/pruner=none",
        cache_dir=cache,
    )
    if not any(c.startswith("hparams_search=") for c in config):
        args = [a for a in args if a != "hparams_search=kd"]
    proc = run_in_process(workdir, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    assert states(load_trials(storage, study)) == {"COMPLETE": 2}
    companion = load_study(storage, f"{study}:confirm")
    arms = companion.user_attrs["current_arms"]
    if load_study(storage, study).user_attrs.get("costs"):
        # A search with costs confirms its front: each point beside its ablation.
        points = {arm.removeprefix("front-") for arm in arms if arm.startswith("front-")}
        assert points and set(arms) == {f"{k}-{p}" for k in ("front", "ablation") for p in points}
    else:
        assert {"top1", "ablation", "ce_default"} <= set(arms)
    runs = {
        (t.user_attrs.get("role"), t.user_attrs.get("arm"), t.user_attrs.get("seed")): t.state.name
        for t in companion.trials
    }
    planned = {("confirm", arm, seed) for arm in arms for seed in (1000, 1001)}
    assert runs == dict.fromkeys({("baseline", None, None), *planned}, "COMPLETE")
    assert "Confirmation incomplete" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "search", [pytest.param(s, marks=[] if s == "dkd" else pytest.mark.slow) for s in SEARCHES]
)
def test_each_search_runs_through_its_confirmation(
    tracked_workdir: Path, teacher_cache: Path, search: str
) -> None:
    """dkd's config sets loss.warmup, a key CE does not take: its baseline, ablation and CE
    arms get only the settings their loss takes (they all failed, and the sweep exited 0)."""
    _confirmed(tracked_workdir, teacher_cache, f"hparams_search={search}")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_runs_through_a_confirmation(
    tracked_workdir: Path, teacher_cache: Path, experiment: str
) -> None:
    """Each experiment's recipe swept over its learning rate and confirmed: the ablation
    and the CE arms drop the loss settings the experiment gives its own loss."""
    _confirmed(
        tracked_workdir,
        teacher_cache,
        f"experiment={experiment}",
        "hydra/sweeper=kdsweep",
        "optimizer.lr=tag(log, interval(0.0001, 0.01))",
        "teacher.allow_weak=true",  # its own 1-epoch teacher, on tiny data
        *EXPERIMENT_DATA.get(experiment, ()),
    )


@pytest.mark.slow  # a sweep through its confirmation: ~7 s
def test_a_confirmation_that_cannot_pair_its_seeds_fails_and_registers_nothing(
    tracked_workdir: Path, teacher_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CE run fails (the baseline, the ablation, CE at the default recipe): top1 has
    no seed to pair with its ablation. The command fails with one line, the parent run
    ends FAILED, and no champion is registered; the report is still written."""
    import torch

    from kdsweep.losses import CrossEntropy

    forward = CrossEntropy.forward

    def broken(self: CrossEntropy, batch: object) -> object:
        if torch.is_grad_enabled():  # training with CE; every run's val loss stays whole
            raise RuntimeError("CE broken on purpose")
        return forward(self, batch)

    monkeypatch.setattr(CrossEntropy, "forward", broken)
    study = "unpaired"
    args = sweep_args(
        tracked_workdir,
        study,
        1,
        "hydra.sweeper.confirm.enabled=true",
        "hydra.sweeper.confirm.seeds=2",
        "hydra.sweeper.confirm.top_k=1",
        "hydra.sweeper.enqueue_trials=[]",
        "trainer.save_model=best",  # a champion could be registered
        cache_dir=teacher_cache,
    )
    proc = run_in_process(tracked_workdir, args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith("kdsweep: error: the confirmation could not pair its seeds")
    assert "share 0 of 2 seed(s)" in line and "CE broken on purpose" in line
    uri = f"sqlite:///{tracked_workdir / 'mlflow.db'}"
    assert mlflow_client(uri).search_model_versions(f"name='{study}-student'") == []
    (parent,) = [r for r in mlflow_runs(uri) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    assert (tracked_workdir / "reports" / study / "report.md").is_file()
