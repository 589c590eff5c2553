"""Config schema of kdsweep's sweeper: hydra-optuna-sweeper's own schema (sampler,
direction, storage, study_name, n_trials, n_jobs, max_failure_rate, params) plus what the
official sweeper lacks: a pruner, enqueued first trials, baselines, a report, and
heartbeats so a resumed or shared study can tell dead trials from running ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING

# The pruner is a _target_ node like the sampler, picked with hydra/sweeper/pruner=NAME
# (none, median, hyperband, successive_halving) and tuned with hydra.sweeper.pruner.KEY;
# a user's own names any optuna.pruners.BasePruner (its package in allowed_targets).


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    # No pruning until this many trials finished, nor before this many epochs.
    n_startup_trials: int = 4
    n_warmup_steps: int = 2


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    reduction_factor: int = 3


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: int = 1
    reduction_factor: int = 3


PRUNERS = {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
}


@dataclass
class ConfirmConf:
    # After the search: retrain the top_k configs, the best one's recipe without the
    # teacher (the ablation) and the references with `seeds` fresh seeds, paired across
    # arms (kdsweep.sweep.confirm). The search configs switch it on.
    enabled: bool = False
    seeds: int = 5
    top_k: int = 3
    # Confirmation seeds are first_seed, first_seed + 1, ... (never the search's seed).
    first_seed: int = 1000
    # Bounds (kdsweep.sweep.settings): seeds x (top_k + 3) arms <= 10,000 runs, like
    # n_trials; first_seed + seeds <= 2**32 - 1.


@dataclass
class KdsweepSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KdsweepSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    direction: Any = "maximize"
    # A study persists by default, in the directory kdsweep runs from: rerunning the same
    # command continues it. journal:PATH selects Optuna's journal file storage.
    storage: Any | None = "sqlite:///optuna.db"
    # Trials are launched n_jobs at a time (in parallel with the joblib launcher).
    n_jobs: int = 1
    # Failed trials tolerated, as a fraction of n_trials, before the sweep stops.
    max_failure_rate: float = 0.25
    pruner: Any = MISSING  # hydra/sweeper/pruner picks it (defaults above)
    # Parameter sets tried first, once per study (e.g. the tutorial's defaults).
    enqueue_trials: list[dict[str, Any]] = field(default_factory=list)
    # Train a CE-only student once per study, for the report's baseline row.
    baselines: bool = True
    # Where the report goes: <report_dir>/<study name>/
    report_dir: str = "multirun_reports"
    # A RUNNING trial whose sweeper has not beaten for grace_period seconds is dead
    # (Optuna's RDB heartbeat; on this host a dead sweeper is known at once by its pid).
    heartbeat_interval: float = 10.0
    grace_period: float = 120.0
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # A study records the settings that define it (config, search space, pruner); a rerun
    # with other settings is refused unless this is true (kdsweep.sweep.drift).
    allow_changed_settings: bool = False


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="kdsweep",
    node=KdsweepSweeperConf,
    provider="kdsweep",
)
for name, node in PRUNERS.items():
    ConfigStore.instance().store(
        group="hydra/sweeper/pruner", name=name, node=node, provider="kdsweep"
    )
