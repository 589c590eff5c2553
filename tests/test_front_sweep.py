"""A small ``hparams_search=kd_front`` sweep through the CLI (issue 25): a study with two
directions, trials of several widths, some pruned; the confirmation trains each picked
front point and its ablation on the same paired seeds; the report's first sentence, the
registry's aliases and ``kdsweep-report``'s rebuild all name the same points."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from _helpers import load_study, load_trials, mlflow_runs, run, sweep_args

STUDY = "front"
SEEDS = (1000, 1001)
FRONT_K = 3


def front_args(workdir: Path, cache: Path) -> list[str]:
    """10 trials of 2 epochs over three widths (a wide lr range, so that some trials are
    poor and pruned), the front confirmed on 2 seeds, the students saved."""
    return sweep_args(
        workdir,
        STUDY,
        10,
        "hparams_search=kd_front",
        "model.width=choice(0.125,0.5,1.0)",
        "optimizer.lr=tag(log, interval(0.00001, 0.05))",
        "trainer.epochs=2",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "hydra.sweeper.confirm.enabled=true",
        f"hydra.sweeper.confirm.seeds={len(SEEDS)}",
        f"hydra.sweeper.confirm.front_k={FRONT_K}",
        "trainer.save_model=best",
        cache_dir=cache,
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, teacher_cache: Path) -> Path:
    workdir = tmp_path_factory.mktemp("front")
    proc = run(workdir, front_args(workdir, teacher_cache), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def _confirmation_runs(workdir: Path) -> Counter:
    return Counter(
        (t.user_attrs["arm"], t.user_attrs["seed"])
        for t in load_trials(f"sqlite:///{workdir / 'optuna.db'}", f"{STUDY}:confirm")
        if t.state.name == "COMPLETE"
    )


@pytest.mark.slow  # a 10-trial sweep and 12 confirmation runs: ~2 minutes on 2 cores
def test_a_front_sweep_confirms_its_points_and_every_output_agrees(swept: Path) -> None:
    from optuna.study import StudyDirection

    from kdsweep.registry import registry_client
    from kdsweep.report import lead, summarize
    from kdsweep.report_cli import main as report_main

    storage = f"sqlite:///{swept / 'optuna.db'}"
    study = load_study(storage, STUDY)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    trials = study.get_trials()
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == 10 and states["PRUNED"] >= 1, states
    assert len({t.params["model.width"] for t in trials}) >= 2
    assert all("params" in (t.user_attrs.get("costs") or {}) for t in trials)

    # The confirmation: every picked front point and its ablation on the same seeds.
    companion = load_study(storage, f"{STUDY}:confirm")
    arms = companion.user_attrs["current_arms"]
    fronts = [a for a in arms if a.startswith("front-")]
    assert 1 <= len(fronts) <= FRONT_K
    assert sorted(arms) == sorted(fronts + [a.replace("front-", "ablation-") for a in fronts])
    front_numbers = {t.number for t in study.best_trials}
    assert {int(a.removeprefix("front-")) for a in fronts} <= front_numbers
    done = _confirmation_runs(swept)
    assert done == Counter({(arm, seed): 1 for arm in arms for seed in SEEDS})
    runs = mlflow_runs(f"sqlite:///{swept / 'mlflow.db'}")
    confirm = [r for r in runs if r.data.tags.get("kdsweep.role") == "confirm"]
    for point in fronts:
        own = [r for r in confirm if r.data.tags["kdsweep.arm"] == point]
        ablation = [
            r for r in confirm if r.data.tags["kdsweep.arm"] == point.replace("front", "ablation")
        ]
        assert {r.data.params["loss._target_"] for r in ablation} == {"kdsweep.losses.CrossEntropy"}
        for key in ("model.width", "optimizer.lr", "trainer.epochs"):
            assert {r.data.params[key] for r in ablation} == {r.data.params[key] for r in own}
        assert {r.data.tags["kdsweep.seed"] for r in own + ablation} == {str(s) for s in SEEDS}

    # The report leads with the pick; the registry's champion is the same point.
    summary = summarize(study, companion)
    front = summary.front
    assert front is not None and front.pick is not None
    first = lead(summary)
    assert first.startswith("Smallest confirmed student within 1 point of the best")
    assert f"#{front.pick.trial} (" in first and "of the teacher's" in first
    (folder,) = (swept / "reports").iterdir()
    report = (folder / "report.md").read_text()
    assert report.split("\n\n")[1] == f"**{first}**"
    assert "## Confirmed front" in report
    assert {"front.png", "search_front.png"} <= {p.name for p in folder.iterdir()}
    client = registry_client(f"sqlite:///{swept / 'mlflow.db'}")
    aliases = client.get_registered_model(f"{STUDY}-student").aliases
    assert set(aliases) == {p.alias for p in front.points} | {"champion"}
    pick_run = study.trials[front.pick.trial].user_attrs["mlflow_run_id"]
    champion = client.get_model_version_by_alias(f"{STUDY}-student", "champion")
    assert champion.run_id == pick_run
    assert champion.version == aliases[front.pick.alias]
    smallest = client.get_model_version_by_alias(f"{STUDY}-student", "front-1")
    assert float(smallest.tags["cost.params"]) == min(p.costs["params"] for p in front.points)
    # Each point serves like the champion: the smallest loads and answers as its width.
    import torch

    from kdsweep.evaluate import load_uri

    loaded = load_uri(f"models:/{STUDY}-student@front-1", f"sqlite:///{swept / 'mlflow.db'}")
    assert loaded.model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    served = sum(p.numel() for p in loaded.model.parameters())
    assert served == min(p.costs["params"] for p in front.points)

    # kdsweep-report rebuilds the same report from the stored study.
    out = swept / "rebuilt"
    assert report_main(["--storage", storage, "--study", STUDY, "--out", str(out)]) == 0
    rebuilt = (out / "report.md").read_text()
    assert rebuilt.split("\n\n")[1] == f"**{first}**"
    table = report[report.index("## Confirmed front") : report.index("## Confirmed on fresh")]
    assert table in rebuilt
    assert (out / "front.png").is_file() and (out / "search_front.png").is_file()


@pytest.mark.slow  # a rerun of the sweep above: start-up and the report, nothing trained
def test_a_rerun_of_a_front_sweep_trains_nothing(swept: Path, teacher_cache: Path) -> None:
    from kdsweep.registry import registry_client

    client = registry_client(f"sqlite:///{swept / 'mlflow.db'}")
    before = client.get_registered_model(f"{STUDY}-student").aliases
    done = _confirmation_runs(swept)
    proc = run(swept, front_args(swept, teacher_cache), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to train" in proc.stdout + proc.stderr
    assert _confirmation_runs(swept) == done
    assert client.get_registered_model(f"{STUDY}-student").aliases == before
