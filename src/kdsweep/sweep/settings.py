"""What the sweeper was asked to do: ``hydra.sweeper``'s options grouped in one checked
``SweepSettings``, and the search space its ``params`` and the command line define."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution

from kdsweep.errors import KdsweepError

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_STUDY_NAME = "kdsweep"


@dataclass(frozen=True)
class SweepSettings:
    """The sweeper's options (hydra_plugins.kdsweep_sweeper.config.KdsweepSweeperConf,
    less the sampler), as plain values."""

    direction: str
    storage: str
    study_name: str
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    params: dict[str, Any]
    pruner: dict[str, Any]
    enqueue_trials: list[dict[str, Any]]
    baselines: bool
    report_dir: str
    heartbeat_interval: float
    grace_period: float
    custom_search_space: str | None = None
    confirm: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SweepSettings:
        """From the keyword arguments Hydra instantiates the sweeper with (its config
        node's values). An unknown or missing option is a TypeError, as for a call."""
        values = dict(options)
        direction = values.pop("direction", None)
        values["direction"] = direction if isinstance(direction, str) else _name(direction)
        values["storage"] = str(values.pop("storage", None) or DEFAULT_STORAGE)
        values["study_name"] = str(values.pop("study_name", None) or DEFAULT_STUDY_NAME)
        values["params"] = {str(k): v for k, v in (values.pop("params", None) or {}).items()}
        values["pruner"] = dict(values.pop("pruner", None) or {})
        values["enqueue_trials"] = [dict(t) for t in values.pop("enqueue_trials", None) or []]
        values["confirm"] = dict(values.pop("confirm", None) or {})
        return cls(**values)

    def check(self) -> None:
        """Raise KdsweepError, naming the option to fix, for a value no sweep can use."""
        if self.custom_search_space:
            raise KdsweepError("hydra.sweeper.custom_search_space is not supported by kdsweep")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise KdsweepError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise KdsweepError("hydra.sweeper.max_failure_rate must be in [0, 1]")
        if self.direction not in ("maximize", "minimize"):
            raise KdsweepError("hydra.sweeper.direction must be maximize or minimize")
        if self.confirm.get("seeds", 0) < 0 or self.confirm.get("top_k", 1) < 1:
            raise KdsweepError(
                "hydra.sweeper.confirm.seeds must be >= 0 (0: no confirmation)"
                " and confirm.top_k >= 1"
            )

    def confirmation_seeds(self, search_seed: int | None) -> list[int]:
        """The fresh seeds of the confirmation stage ([] when it is off): consecutive
        from confirm.first_seed, skipping the search's own seed."""
        if not self.confirm.get("enabled"):
            return []
        wanted, seed, seeds = (
            int(self.confirm.get("seeds", 0)),
            int(self.confirm.get("first_seed", 1000)),
            [],
        )
        while len(seeds) < wanted:
            if seed != search_seed:
                seeds.append(seed)
            seed += 1
        return seeds

    def describe(self, sampler: Any, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        """What the study records about itself (its user attributes, the parent run's
        params); the storage URL with its password masked."""
        from kdsweep.secrets import mask_secrets

        return {
            "study_name": self.study_name,
            "sampler": type(sampler).__name__,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "pruner": self.pruner.get("name"),
            "storage": mask_secrets(self.storage),
            "search_space": {name: str(dist) for name, dist in space.items()},
        }


def _name(direction: Any) -> str:
    """hydra-optuna-sweeper's Direction enum -> its name; anything else as text."""
    return str(getattr(direction, "name", direction))


@dataclass(frozen=True)
class SearchSpace:
    """The distributions Optuna samples, and the overrides every trial shares."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]


def search_space(params: Mapping[str, Any], arguments: list[str]) -> SearchSpace:
    """``hydra.sweeper.params`` then the command line's overrides (later ones win): sweep
    overrides (interval, choice, range, tag(log, ...)) become distributions, the others
    are passed to every trial as they are."""
    sweeper_params = [f"{name}={value}" for name, value in params.items()]
    space, fixed, fixed_overrides = _parse_overrides(sweeper_params + arguments)
    for name in fixed:
        space.pop(name, None)
    return SearchSpace(space, [f"{k}={v}" for k, v in fixed.items()] + list(fixed_overrides))


def _parse_overrides(
    overrides: list[str],
) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    # Private API, kept to this one function: hydra-optuna-sweeper has no public parser
    # from overrides to Optuna distributions, and its private one (checked against
    # hydra-optuna-sweeper 1.4.0rc3) handles range steps, shuffles and casts that a copy
    # would have to follow release by release. Returns (distributions, fixed values,
    # delete overrides).
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    return create_params_from_overrides(overrides)
