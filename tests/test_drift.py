"""A study records what defines it; a rerun with other settings is refused in one line."""

from __future__ import annotations

import json

from kdsweep.sweep.drift import differences, drift_message, migrated, study_definition

SPACE = {"loss.temperature": "FloatDistribution(high=10.0, log=False, low=1.0, step=None)"}
MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 1}
SWEEPER = {"direction": "maximize", "pruner": MEDIAN}


def test_the_definition_keeps_what_changes_the_objective(compose) -> None:
    d = study_definition(compose("trainer.epochs=3"), SPACE, SWEEPER)
    assert d["trainer.epochs"] == "3"
    assert d["search.loss.temperature"].startswith('"FloatDistribution')
    assert d["hydra.sweeper.pruner._target_"] == '"optuna.pruners.MedianPruner"'
    assert "loss.temperature" not in d  # searched: its config value is a placeholder
    assert d["loss._target_"] == '"kdsweep.losses.KnowledgeDistillation"'
    # Where a run is logged, cached or shown does not define the study.
    for key in ("tracking.uri", "cache_dir", "trainer.progress", "trainer.device"):
        assert key not in d


def test_changed_settings_are_named_and_logistics_are_not(compose) -> None:
    base = study_definition(compose(), SPACE, SWEEPER)
    assert (
        differences(base, study_definition(compose("cache_dir=/elsewhere"), SPACE, SWEEPER)) == []
    )
    assert (
        differences(base, study_definition(compose("trainer.progress=none"), SPACE, SWEEPER)) == []
    )
    epochs = differences(base, study_definition(compose("trainer.epochs=3"), SPACE, SWEEPER))
    assert epochs == ["trainer.epochs: 10 -> 3"]
    narrower = {"loss.temperature": SPACE["loss.temperature"].replace("10.0", "4.0")}
    (space_change,) = differences(base, study_definition(compose(), narrower, SWEEPER))
    assert space_change.startswith("search.loss.temperature:")
    no_pruner = {**SWEEPER, "pruner": {"_target_": "optuna.pruners.NopPruner"}}
    changes = differences(base, study_definition(compose(), SPACE, no_pruner))
    assert (
        'hydra.sweeper.pruner._target_: "optuna.pruners.MedianPruner" -> "optuna.pruners.NopPruner"'
        in changes
    )
    assert "hydra.sweeper.pruner.n_startup_trials: 4 -> (unset)" in changes


def test_a_study_that_named_its_pruner_continues_with_the_same_pruner(compose) -> None:
    """Studies made when the pruner was picked by name recorded all four options."""
    legacy = {
        k: v for k, v in study_definition(compose(), SPACE, SWEEPER).items() if "pruner" not in k
    }
    old = {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 1}
    old |= {"min_resource": 1, "reduction_factor": 3}
    legacy |= {f"hydra.sweeper.pruner.{k}": json.dumps(v) for k, v in old.items()}
    current = study_definition(compose(), SPACE, SWEEPER)
    assert differences(migrated(legacy), current) == []
    wider = {**SWEEPER, "pruner": {**MEDIAN, "n_startup_trials": 8}}
    changed = differences(migrated(legacy), study_definition(compose(), SPACE, wider))
    assert changed == ["hydra.sweeper.pruner.n_startup_trials: 4 -> 8"]


def test_the_refusal_is_one_line_with_both_ways_out() -> None:
    message = drift_message("kd-digits-light", [f"k{i}: 1 -> 2" for i in range(6)])
    assert "\n" not in message and "and 2 more" in message
    assert "hydra.sweeper.study_name=" in message
    assert "hydra.sweeper.allow_changed_settings=true" in message
