"""A study records what defines it; a rerun with other settings is refused in one line."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from kdsweep.core.errors import KdsweepError
from kdsweep.sweep.drift import (
    DATA_ATTR,
    check_costs,
    check_definition,
    data_fingerprint,
    differences,
    drift_message,
    study_definition,
)
from kdsweep.sweep.settings import SweepSettings

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


def test_the_refusal_is_one_line_with_both_ways_out() -> None:
    message = drift_message("kd-digits-light", [f"k{i}: 1 -> 2" for i in range(6)])
    assert "\n" not in message and "and 2 more" in message
    assert "hydra.sweeper.study_name=" in message
    assert "hydra.sweeper.allow_changed_settings=true" in message


def _folder(root: Path, shade: int) -> Path:
    """root/train/<class>/<i>.png: two classes of 12 flat images."""
    from PIL import Image

    for level, name in enumerate(("a", "b")):
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            colour = (shade + 100 * level + i,) * 3
            Image.new("RGB", (8, 8), colour).save(root / "train" / name / f"{i}.png")
    return root


def test_a_study_resumed_on_other_data_is_refused(
    compose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same settings over changed images: the study recorded the data it was made on,
    and refuses to rank trials of other data with its own, in one line naming both."""
    from kdsweep.data import splits

    root = _folder(tmp_path / "images", shade=0)
    config = compose(
        "data=imagefolder", f"data.root={root}", "data.workers=0", f"cache_dir={tmp_path}"
    )
    sweep = SimpleNamespace(
        config=config,
        settings=SweepSettings(
            study_name="kd-images", pruner=MEDIAN, allow_changed_settings=True
        ),
        lock=contextlib.nullcontext,
    )  # fmt: skip
    space = SimpleNamespace(distributions={})
    study = optuna.create_study(study_name="kd-images", direction="maximize")
    data = data_fingerprint(config, space.distributions)
    check_definition(
        sweep.config, sweep.settings, sweep.lock, study, space, data
    )  # made: its data recorded
    recorded = study.user_attrs[DATA_ATTR]
    check_definition(
        sweep.config, sweep.settings, sweep.lock, study, space, data
    )  # the same data: it continues

    _folder(root, shade=1)  # every image rewritten with other pixels
    monkeypatch.setattr(splits, "_LOADED", {})  # as a new process would load them
    with pytest.raises(KdsweepError) as info:
        check_definition(
            sweep.config,
            sweep.settings,
            sweep.lock,
            study,
            space,
            data_fingerprint(config, space.distributions),
        )
    message = str(info.value)
    assert "other data" in message and recorded in message and "\n" not in message
    assert "hydra.sweeper.study_name=" in message and "data it was made on" in message
    assert study.user_attrs[DATA_ATTR] == recorded


def test_a_search_over_the_data_records_no_fingerprint(compose) -> None:
    assert data_fingerprint(compose(), {"data.split_seed": "IntDistribution"}) is None
    assert data_fingerprint(compose(), {}) != data_fingerprint(compose("data.split_seed=1"), {})


def test_a_study_continues_only_with_the_costs_it_was_made_with() -> None:
    """Its costs are objectives of the Optuna study: other costs (or none) are refused
    whatever allow_changed_settings says; the same costs continue it."""
    made = SweepSettings(study_name="front", costs=["params"], allow_changed_settings=True)
    study = optuna.create_study(study_name="front", directions=made.directions)
    check_costs(study, made, new=True)
    assert study.user_attrs["costs"] == ["params"]
    check_costs(study, made, new=False)
    for costs in (["macs"], ["params", "macs"], []):
        other = dataclasses.replace(made, costs=costs)
        with pytest.raises(KdsweepError, match=r"hydra.sweeper.costs=\['params'\]") as caught:
            check_costs(study, other, new=False)
        assert "objectives cannot change" in str(caught.value)
    # a single-objective study made before costs existed is refused costs too
    plain = optuna.create_study(direction="maximize")
    check_costs(plain, SweepSettings(), new=False)
    with pytest.raises(KdsweepError, match="objectives cannot change"):
        check_costs(plain, made, new=False)
