"""The one validation pass: a composed config becomes checked :class:`Settings`.

Composition already checked the recipes' types (kdsweep.config.schema); here their ranges
are checked (each dataclass's ``__post_init__``), the loss and the data set are built once
(kdsweep.config.targets: their fields type their keys), the arguments of the networks and
optimizers are checked, and the cross-field rules run. It happens once, in the
process that runs the job, before torch and MLflow are imported: a typo costs a second,
not a teacher's training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdsweep import data as data_sets
from kdsweep import losses
from kdsweep.config.schema import SweepContext, TeacherConf, TrackingConf, TrainerConf
from kdsweep.config.targets import Target
from kdsweep.core.errors import ConfigError
from kdsweep.core.files import directory_problem
from kdsweep.data import DataSet
from kdsweep.losses import Objective


@dataclass
class Settings:
    """The validated run: the loss and the data set are already their objects (built
    once); the networks and the optimizers are targets, built when their inputs exist."""

    data: DataSet
    model: Target
    teacher: TeacherConf
    teacher_model: Target
    teacher_optimizer: Target
    loss: Objective
    optimizer: Target
    trainer: TrainerConf
    tracking: TrackingConf
    sweep: SweepContext
    cache_dir: str = ".kdsweep_cache"

    @property
    def uses_teacher(self) -> bool:
        return self.loss.uses_teacher


def _config_error(exc: Exception, where: str) -> ConfigError:
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        prefix = f"{where}.{key}" if key else where
        return ConfigError(f"{prefix}: {str(exc).splitlines()[0]}")
    return ConfigError(str(exc))


def typed(node: Any, schema: type, where: str) -> Any:
    """The node as its schema's dataclass: types checked, then ranges (__post_init__)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as exc:
        raise _config_error(exc, where) from None


def _node(node: Any, key: str) -> Target:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node)
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"{key}._target_ is missing: {key} must name what builds it")
    return Target(key, node)


# Arguments whose meaning is torch's wherever they appear (an optimizer's lr, a network's
# dropout): torch checks them only when it builds the part, after the data and the
# teacher, and without naming the key. Each value must be a finite number that passes.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "must be > 0"),
    "weight_decay": (lambda v: v >= 0, "must be a finite number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}
NESTEROV: dict[str, tuple[Callable[[float], bool], str]] = {
    "momentum": (lambda v: v > 0, "must be > 0 for Nesterov momentum"),
    "dampening": (lambda v: v == 0, "must be 0 for Nesterov momentum"),
}


def _target(node: Any, key: str) -> Target:
    """A network's or an optimizer's node, kept to be built later, its arguments checked."""
    target = _node(node, key)
    arguments = target.arguments
    rules = {**RANGES, **(NESTEROV if arguments.get("nesterov") else {})}
    for name, (passes, rule) in rules.items():
        if name not in arguments:
            continue
        value = arguments[name]
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not (math.isfinite(number) and passes(number)):
            raise ConfigError(f"{key}.{name} {rule}, got {value}")
    return target


def _optimizer(node: Any, key: str) -> Target:
    target = _target(node, key)
    if not target.target.startswith("torch.optim."):
        raise ConfigError(f"{key}._target_ must name a torch.optim class, got {target.target!r}")
    return target


# The kind of object each part built at validation must be, and the package that exports
# kdsweep's own (named when a target is not one).
BUILT_NOW: dict[str, tuple[ModuleType, type]] = {
    "data": (data_sets, DataSet),
    "loss": (losses, Objective),
}


def _built(node: Any, group: str) -> Any:
    """Build a loss or a data set once: its fields type its keys, its class checks
    their ranges."""
    package, kind = BUILT_NOW[group]
    target = _node(node, group)
    try:
        made = target.locate()
    except ConfigError:
        made = None
    if not (isinstance(made, type) and issubclass(made, kind)):
        exported = (getattr(package, name) for name in package.__all__)
        names = sorted(
            f"{package.__name__}.{c.__name__}"
            for c in exported
            if isinstance(c, type) and issubclass(c, kind) and c is not kind
        )
        raise ConfigError(f"{group}._target_ must be one of {names}, got {target.target!r}")
    try:
        return target.build()
    except (OmegaConfBaseException, ValueError) as exc:
        raise _config_error(exc, group) from None


def validate(cfg: DictConfig) -> Settings:
    """Check the composed config once and return it typed. Raises ConfigError (one line)."""
    try:
        # Resolve interpolations against the whole tree before groups are checked alone.
        # (The hydra node is Hydra's own, and half-filled inside a sweeper: leave it out.)
        ours = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        cfg = OmegaConf.create(OmegaConf.to_container(ours, resolve=True))
    except OmegaConfBaseException as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    for group in ("data", "model", "teacher", "loss", "optimizer", "trainer", "tracking"):
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"config group '{group}' is missing: pick one, e.g. {group}=...")
    # The trainer first: teacher.seed follows trainer.seed, and a bad seed must be named
    # where the user set it.
    trainer = typed(cfg.trainer, TrainerConf, "trainer")
    teacher = typed(cfg.teacher, TeacherConf, "teacher")
    settings = Settings(
        data=_built(cfg.data, "data"),
        model=_target(cfg.model, "model"),
        teacher=teacher,
        teacher_model=_target(teacher.model, "teacher.model"),
        teacher_optimizer=_optimizer(teacher.optimizer, "teacher.optimizer"),
        loss=_built(cfg.loss, "loss"),
        optimizer=_optimizer(cfg.optimizer, "optimizer"),
        trainer=trainer,
        tracking=typed(cfg.tracking, TrackingConf, "tracking"),
        sweep=typed(cfg.get("sweep") or {}, SweepContext, "sweep"),
        cache_dir=str(cfg.get("cache_dir", ".kdsweep_cache")),
    )
    check_combination(settings)
    if settings.uses_teacher:
        problem = directory_problem(settings.cache_dir)
        if problem:
            raise ConfigError(
                f"cache_dir={settings.cache_dir} cannot hold the teacher's cache ({problem}):"
                " give cache_dir a writable directory with free space"
            )
    return settings


def check_combination(settings: Settings) -> None:
    """The cross-field rules: refuse model x loss combinations that cannot train."""
    if settings.loss.needs_student_hidden and not settings.model.arguments.get("returns_hidden"):
        raise ConfigError(
            f"loss={settings.loss.name} needs a student that returns its hidden representation;"
            f" model={settings.model.name} does not: use model=modified"
        )
