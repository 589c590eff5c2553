"""The search side of a front sweep (issue 25): ``hydra.sweeper.costs`` makes the study
multi-objective (the objective, then each cost minimized), every trial's costs are
measured before it trains and stored with it and its MLflow run, kdsweep prunes by
comparing a trial with the trials that cost no more than it, and the student's size is a
search dimension (``model.width=choice(...)``, ``model=choice(light,deep)``)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from _helpers import load_study, mlflow_runs, run_in_process, states, sweep_args

STUDY = "front"


def _front_sweep(workdir: Path, cache: Path, n_trials: int, *extra: str) -> object:
    args = sweep_args(
        workdir,
        STUDY,
        n_trials,
        "hparams_search=kd_front",
        "model=choice(light,deep)",
        "model.width=choice(0.125,0.5,1.0)",
        "trainer.epochs=3",
        # prune from the first epoch, once one cheaper-or-equal trial has finished
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "hydra.sweeper.sampler.n_startup_trials=4",
        *extra,
        cache_dir=cache,
    )
    return run_in_process(workdir, args)


@pytest.mark.slow
def test_a_front_sweep_weighs_size_prunes_among_the_cheaper_and_resumes(
    tracked_workdir: Path, teacher_cache: Path
) -> None:
    proc = _front_sweep(tracked_workdir, teacher_cache, 8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = f"sqlite:///{tracked_workdir / 'optuna.db'}"
    study = load_study(storage, STUDY)
    maximize, minimize = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
    assert study.directions == [maximize, minimize]
    assert study.user_attrs["costs"] == ["params"]
    trials = study.get_trials(deepcopy=False)
    counts = states(trials)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 8, counts
    assert counts.get("PRUNED", 0) >= 1, counts
    sizes = {(t.params["model"], t.params["model.width"]) for t in trials}
    assert len(sizes) >= 3 and len({model for model, _ in sizes}) == 2, sizes
    runs = {r.info.run_id: r for r in mlflow_runs(f"sqlite:///{tracked_workdir / 'mlflow.db'}")}
    for trial in trials:
        params = trial.user_attrs["costs"]["params"]  # measured before it trained
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.data.metrics["student_params"] == params
        assert trial.user_attrs["history"]  # its curve, pruned or not
        if trial.state.name == "COMPLETE":
            assert trial.values == [trial.user_attrs["metrics"]["objective"], params]
            assert run.info.status == "FINISHED"
        else:
            assert trial.values is None and run.info.status == "KILLED"
            # beaten by trials that cost no more than it: one at least had finished
            cheaper = [
                t
                for t in trials
                if t.number < trial.number
                and t.state.name == "COMPLETE"
                and t.user_attrs["costs"]["params"] <= params
            ]
            assert cheaper, trial.number
    front = {t.number for t in study.best_trials}
    assert front and all(t.state.name == "COMPLETE" for t in study.best_trials)

    # Other costs: refused before anything runs, whatever allow_changed_settings says.
    refused = _front_sweep(
        tracked_workdir,
        teacher_cache,
        10,
        "hydra.sweeper.costs=[macs]",
        "hydra.sweeper.allow_changed_settings=true",
    )
    assert refused.returncode == 2
    assert "a study's objectives cannot change" in refused.stderr
    assert len(load_study(storage, STUDY).trials) == 8

    # The same costs: it resumes to exactly n_trials.
    resumed = _front_sweep(tracked_workdir, teacher_cache, 10)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    counts = states(load_study(storage, STUDY).trials)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 10, counts
