"""The Hydra face of kdsweep's sweeper. Hydra discovers it in the ``hydra_plugins``
namespace; the work is done by kdsweep.sweep, imported only when a sweep starts, so that
plugin discovery (at every kdsweep start) stays cheap."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig

from . import config as config  # noqa: F401  (registers hydra/sweeper=kdsweep)


class KdsweepSweeper(Sweeper):
    def __init__(self, sampler: Any, **options: Any) -> None:
        self.sampler = instantiate(
            sampler,
            _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"),
        )
        self.options = options

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> Any:
        from kdsweep.sweep import StudySweep

        return StudySweep(self.config, self.launcher, self.sampler, **self.options).run(arguments)
