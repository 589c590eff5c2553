"""The Hydra face of kdsweep's sweeper. Hydra discovers it in the ``hydra_plugins``
namespace; the work is done by kdsweep.sweep.core.StudySweep, imported only when a sweep
starts, so that plugin discovery (at every kdsweep start) stays cheap."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from . import config as config  # noqa: F401  (registers hydra/sweeper=kdsweep)


class KdsweepSweeper(Sweeper):
    def __init__(self, sampler: Any, **options: Any) -> None:
        self.sampler_conf = sampler
        self.options = options

    def make_sampler(self, seed_offset: int) -> Any:
        """The configured sampler. A resumed study offsets the seed by its trial count:
        the same seed would replay the first run's random start-up trials."""
        from kdsweep.config.targets import instantiate_trusted
        from kdsweep.config.validation import allowed_targets

        conf = self.sampler_conf
        if seed_offset and conf.get("seed") is not None:
            conf = OmegaConf.merge(conf, {"seed": int(conf.seed) + seed_offset})
        # Under kdsweep's allow-list, as every part: optuna.samplers.* (nested samplers too),
        # the official sweeper's sampler factories, and the user's allowed_targets.
        return instantiate_trusted(conf, allowed=allowed_targets(self.config))

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config Hydra composes for a job with these overrides, as the launcher does."""
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

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
        from kdsweep.publish import finish_sweep
        from kdsweep.sweep.core import StudySweep
        from kdsweep.sweep.settings import SweepSettings
        from kdsweep.sweep.workers import (
            Workers,
            end_with_the_command,
            finished_by_the_command,
            worker_number,
        )

        settings = SweepSettings.from_options(self.options)
        worker = worker_number()  # one of the workers a command started (hydra.sweeper.workers)
        if worker:
            end_with_the_command()
        sweep = StudySweep(
            self.config,
            settings,
            self.launcher,
            self.make_sampler,
            finish=finished_by_the_command if worker else finish_sweep,
            compose=self.compose,
            worker=worker,
        )
        if settings.workers != 1 and not worker:
            return Workers(sweep, finish_sweep).run(arguments)
        return sweep.run(arguments)
