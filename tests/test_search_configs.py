"""Every ``hparams_search`` config composes, searches keys its loss has, and its enqueued
reference setting is a valid run; the newest run one trial from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from _helpers import load_trials, run_in_process, states, sweep_args
from kdsweep.config.folder import config_dir
from kdsweep.config.validation import validate

SEARCHES = sorted(p.stem for p in (Path(config_dir()) / "hparams_search").glob("*.yaml"))


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
