"""A sweep's start-up checks, before any study, run or file exists: the sweeper's settings,
the search space (each end of a range must be a valid setting), the sampler, the config,
the device and the tracking store. Each refusal is one line (KdsweepError)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from kdsweep.config.validation import validate
from kdsweep.core.errors import ConfigError, KdsweepError, first_line
from kdsweep.core.secrets import mask_secrets
from kdsweep.sweep.settings import SearchSpace, check_enqueued

if TYPE_CHECKING:
    from kdsweep.sweep.jobs import Sweep


def check_sweep(sweep: Sweep, space: SearchSpace) -> None:
    """Before anything is written: the settings, the search space, the config."""
    sweep.settings.check()
    choices = sweep.config.hydra.runtime.choices
    for name in space.distributions:
        if name not in choices and OmegaConf.select(sweep.config, name) is None:
            raise KdsweepError(
                f"search parameter {name} is not in the config (loss={choices.get('loss')}):"
                " fix hydra.sweeper.params or pick a matching group"
            )
    settings = validate(sweep.config)
    check_enqueued(space, sweep.settings.enqueue_trials)
    _check_bounds(sweep.config, space, choices)
    _check_sampler(sweep.make_sampler)
    if settings.trainer.device != "auto":
        from kdsweep.training.devices import check_device

        check_device(settings.trainer.device)
    # The tracking store must answer (a server) and be whole (a SQLite file) before
    # the study exists: an unreachable MLflow must not leave an empty study behind.
    from kdsweep.run.tracking import RunTracker

    RunTracker(settings.tracking, "sweep").check()


def _check_bounds(config: DictConfig, space: SearchSpace, groups: Any) -> None:
    """Each end of a searched range (and each choice) must be a valid setting:
    ``optimizer.lr=interval(0, 0.1)`` would fail the trials that draw near 0."""

    ours = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    base = OmegaConf.to_container(ours, resolve=True)
    for name, dist in space.distributions.items():
        if name in groups:  # a config group (optimizer=choice(adam, sgd_nesterov))
            continue
        values = getattr(dist, "choices", None) or (dist.low, dist.high)  # type: ignore[attr-defined]
        for value in values:
            trial = OmegaConf.create(base)
            OmegaConf.update(trial, name, value, force_add=True)
            try:
                validate(trial)
            except ConfigError as exc:
                raise KdsweepError(
                    f"search space {name}={dist}: at {value}, {exc}: narrow the range"
                ) from None


def _check_sampler(make_sampler: Callable[[int], Any]) -> None:
    """The sampler is built once here, so a _target_ outside the allowed samplers or a
    bad sampler option is one line at start-up."""
    try:
        make_sampler(0)
    except Exception as exc:
        raise KdsweepError(
            f"hydra.sweeper.sampler cannot be built ({mask_secrets(first_line(exc))[:300]}):"
            " use one of optuna.samplers.* (e.g. TPESampler) with its options"
        ) from None
