"""What a run's parts are called where a person reads them (a sweep's report, its study
name): the option picked (``loss=sharp_kd``: sharp_kd), or, where the user replaced an
option's ``_target_`` on the command line (``loss._target_=mypkg.SharpKD``), the target's
short name (SharpKD)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdsweep.config.folder import config_dir

#: part -> where its _target_ sits in the config (the teacher's network is a key of its recipe).
TARGETS = {"loss": "loss._target_", "teacher": "teacher.model._target_", "model": "model._target_"}


def override_key(override: str) -> str:
    """The key a command-line override names: 'trainer.seed=3', '+trainer.seed=3',
    '~trainer.seed' -> 'trainer.seed'."""
    return override.lstrip("+~").partition("=")[0]


def _replaced(config: DictConfig) -> set[str]:
    """The parts whose _target_ the command line replaced."""
    task = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    keys = {override_key(str(o)) for o in task}
    return {part for part, key in TARGETS.items() if key in keys}


def part_names(config: DictConfig) -> dict[str, str]:
    """loss, teacher and model as the config picks them (a composed config with its
    ``hydra`` node: its runtime choices name the options)."""
    choices, replaced = config.hydra.runtime.choices, _replaced(config)
    names = {}
    for part, key in TARGETS.items():
        target = str(OmegaConf.select(config, key, default="") or "")
        option = choices.get(part)
        mine = option is None or part in replaced
        names[part] = target.rpartition(".")[2] if mine and target else str(option)
    return names


def users_parts(config: DictConfig) -> dict[str, str]:
    """The parts that are the user's own (an option kdsweep does not ship, or a target
    that replaced its option's), by name."""
    choices, replaced = config.hydra.runtime.choices, _replaced(config)
    shipped = Path(config_dir())
    return {
        part: name
        for part, name in part_names(config).items()
        if part in replaced or not (shipped / part / f"{choices.get(part)}.yaml").is_file()
    }
