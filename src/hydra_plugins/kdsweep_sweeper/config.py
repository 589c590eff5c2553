"""Config schema of kdsweep's sweeper, registered with Hydra's ConfigStore: its options
(kdsweep.sweep.settings.SweepSettings), hydra-optuna-sweeper's samplers and the pruners."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import SamplerConfig
from omegaconf import MISSING

from kdsweep.sweep.settings import SweepSettings

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
class KdsweepSweeperConf(SweepSettings):
    """The options are kdsweep's ``SweepSettings`` (declared and checked there); this
    adds what Hydra needs to build the sweeper: its class and the sampler and pruner
    picked from their config groups."""

    _target_: str = "hydra_plugins.kdsweep_sweeper.kdsweep_sweeper.KdsweepSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: SamplerConfig = MISSING  # hydra/sweeper/sampler picks it (hydra-optuna-sweeper's)


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
