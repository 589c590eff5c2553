"""What defines a study, so that a rerun with other settings cannot silently continue it.

A study is named from its search config, data and model; everything else that changes the
objective (the fixed overrides, the search space, the pruner, the epochs, the loss, the
optimizer, the teacher's recipe, the data set's settings) is recorded in the study when it
is created. A later invocation whose definition differs is refused, naming the keys and
the two ways out: a new ``hydra.sweeper.study_name``, or
``hydra.sweeper.allow_changed_settings=true`` to continue it deliberately.

Its objectives are fixed when it is made: the costs it weighs beside its objective
(``hydra.sweeper.costs``, each a direction of the Optuna study) are recorded, and a rerun
with other costs is refused whatever ``allow_changed_settings`` says: the trials' values
would mean other things.

The data a study is made on is recorded too, as its fingerprint (the content of every
split): the same settings over changed files (an image folder edited, CIFAR's files
replaced) would rank trials of two data sets together. That is refused whatever
``allow_changed_settings`` says: no trial of the old data compares with a new one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kdsweep.config.validation import plain_config, validate
from kdsweep.core.errors import KdsweepError
from kdsweep.core.secrets import mask_secrets
from kdsweep.data import load_splits
from kdsweep.run.tracking import flatten

if TYPE_CHECKING:
    import optuna

    from kdsweep.sweep.jobs import Lock
    from kdsweep.sweep.settings import SearchSpace, SweepSettings

log = logging.getLogger("kdsweep.sweep")

DEFINITION_ATTR = "definition"
DATA_ATTR = "data_fingerprint"
#: The costs a study minimizes beside its objective, in the order of its values (absent:
#: none, a single-objective study).
COSTS_ATTR = "costs"

#: Config keys that do not change what a trial measures: where it is logged, cached or run,
#: how it reports progress, what it keeps.
NOT_DEFINING = (
    "hydra",
    "sweep",
    "tracking",
    "cache_dir",
    "trainer.device",
    "trainer.progress",
    "trainer.threads",
    "trainer.save_model",
    "trainer.eval_batch_size",
    # Whether a weak teacher is refused: a trial it lets run measures what it would have.
    "teacher.allow_weak",
)


def study_definition(
    config: DictConfig, search_space: Mapping[str, Any], sweeper: Mapping[str, Any]
) -> dict[str, str]:
    """The settings that define the study's objective, flat, as text (JSON-safe)."""
    flat = flatten(plain_config(config, enum_to_str=True))
    defining = {
        key: value
        for key, value in flat.items()
        if not any(key == skip or key.startswith(skip + ".") for skip in NOT_DEFINING)
    }
    # A searched key's value in the config is a placeholder: the trials sample it.
    defining = {k: v for k, v in defining.items() if k not in search_space}
    defining.update({f"search.{name}": dist for name, dist in search_space.items()})
    defining.update({f"hydra.sweeper.{name}": value for name, value in flatten(sweeper).items()})
    return {key: mask_secrets(json.dumps(value, default=str)) for key, value in defining.items()}


def differences(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or exists on one side)."""
    missing = "(unset)"
    keys = sorted(set(stored) | set(current))
    return [
        f"{key}: {stored.get(key, missing)} -> {current.get(key, missing)}"
        for key in keys
        if stored.get(key) != current.get(key)
    ]


def drift_message(study_name: str, changes: list[str]) -> str:
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    return (
        f"study {study_name} was made with other settings ({shown}): name a new study with"
        " hydra.sweeper.study_name=..., or continue this one deliberately with"
        " hydra.sweeper.allow_changed_settings=true"
    )


def data_fingerprint(config: DictConfig, searched: Mapping[str, Any]) -> str | None:
    """The fingerprint of the data every trial of this sweep trains on, or None where the
    search itself varies the data (then each trial's run records its own). Loaded as the
    trials load it: under the basic launcher they reuse this copy."""
    if any(name == "data" or name.startswith("data.") for name in searched):
        return None
    return load_splits(validate(config).data).fingerprint


def data_drift_message(study_name: str, recorded: str, current: str) -> str:
    return (
        f"study {study_name} was made on other data (fingerprint {recorded}, this data"
        f" {current}): its trials would be ranked with trials of these data; name a new"
        " study with hydra.sweeper.study_name=..., or run it on the data it was made on"
    )


def check_data(study: optuna.Study, study_name: str, fingerprint: str | None) -> None:
    """Record the data a study is made on; refuse to continue it on other data."""
    if fingerprint is None:
        return
    recorded = study.user_attrs.get(DATA_ATTR)
    if recorded is None:  # a new study (or one made before studies recorded their data)
        study.set_user_attr(DATA_ATTR, fingerprint)
    elif recorded != fingerprint:
        raise KdsweepError(data_drift_message(study_name, recorded, fingerprint))


def check_costs(study: optuna.Study, s: SweepSettings, new: bool) -> None:
    """Record the costs a new study weighs; refuse to continue a study with other costs
    (or, one made elsewhere, other directions)."""
    recorded = list(study.user_attrs.get(COSTS_ATTR) or [])
    directions = [d.name.lower() for d in study.directions]
    if new and not recorded and s.costs:
        study.set_user_attr(COSTS_ATTR, list(s.costs))
    elif recorded != s.costs or directions != s.directions:
        raise KdsweepError(
            f"study {s.study_name} was made with hydra.sweeper.costs={recorded} (directions"
            f" {directions}), not {s.costs}: a study's objectives cannot change; name a new"
            " study with hydra.sweeper.study_name=..., or rerun it with its own costs"
        )


def check_definition(
    config: DictConfig,
    s: SweepSettings,
    lock: Lock,
    study: optuna.Study,
    space: SearchSpace,
    fingerprint: str | None,
) -> None:
    """A study continues only with the settings and the data (``fingerprint``, as
    data_fingerprint gives it) that made it."""
    searched = {name: str(dist) for name, dist in space.distributions.items()}
    current = study_definition(config, searched, {"direction": s.direction, "pruner": s.pruner})
    with lock():
        stored = study.user_attrs.get(DEFINITION_ATTR)
        changes = differences(stored, current) if stored is not None else []
        if changes and not s.allow_changed_settings:
            raise KdsweepError(drift_message(s.study_name, changes))
        # Written only once nothing refused.
        check_costs(study, s, new=stored is None and not study.get_trials(deepcopy=False))
        check_data(study, s.study_name, fingerprint)
        if changes:
            log.warning(
                "study %s continues with changed settings: %s", s.study_name, "; ".join(changes)
            )
        if changes or stored is None:
            study.set_user_attr(DEFINITION_ATTR, current)
