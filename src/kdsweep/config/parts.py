"""What a run's parts are called where a person reads them (a sweep's report, its study
name): the option picked (``loss=sharp_kd``: sharp_kd), or, where the user replaced an
option's ``_target_`` (``loss._target_=mypkg.SharpKD``), the target's short name."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdsweep.config.folder import config_dir

#: part -> where its _target_ sits in the config (the teacher's network is a key of its recipe).
TARGETS = {"loss": "loss._target_", "teacher": "teacher.model._target_", "model": "model._target_"}


def part_names(config: DictConfig) -> dict[str, str]:
    """loss, teacher and model as the config picks them (a composed config with its
    ``hydra`` node: its runtime choices name the options)."""
    choices = config.hydra.runtime.choices
    names = {}
    for part, key in TARGETS.items():
        target = str(OmegaConf.select(config, key, default="") or "")
        option = choices.get(part)
        shipped = shipped_target(part, option)
        mine = option is None or (shipped is not None and shipped != target)
        names[part] = target.rpartition(".")[2] if mine and target else str(option)
    return names


def shipped_target(part: str, option: str | None) -> str | None:
    """The ``_target_`` of kdsweep's own option ``part=option``; None if kdsweep has no
    such option (the user's own, from their config folder)."""
    path = Path(config_dir()) / part / f"{option}.yaml"
    if option is None or not path.is_file():
        return None
    return str(OmegaConf.select(OmegaConf.load(path), TARGETS[part].partition(".")[2]))


def users_parts(config: DictConfig) -> dict[str, str]:
    """The parts that are the user's own (an option kdsweep does not ship, or a target
    that replaced its option's), by name."""
    choices = config.hydra.runtime.choices
    return {
        part: name
        for part, name in part_names(config).items()
        if shipped_target(part, choices.get(part)) is None or name != choices.get(part)
    }
