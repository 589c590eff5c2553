"""The one validation pass: a composed config becomes checked :class:`Settings`.

Composition already checked the types (kdsweep.schema); here each group's ranges are
checked (its dataclass's ``__post_init__``), the loss and the data set are built once
(they are their own schemas), and the cross-field rules run. It happens once, in the
process that runs the job, before torch and MLflow are imported: a typo costs a second,
not a teacher's training.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdsweep.config.schema import (
    BUILT_PARTS,
    ModelConf,
    OptimizerConf,
    SGDConf,
    SGDNesterovConf,
    SweepContext,
    TeacherConf,
    TrackingConf,
    TrainerConf,
    instantiate_trusted,
)
from kdsweep.core.errors import ConfigError
from kdsweep.core.files import directory_problem
from kdsweep.data import DataSet
from kdsweep.losses import Objective


@dataclass
class Settings:
    """The validated run: losses and data sets are already their objects (built once)."""

    data: DataSet
    model: ModelConf
    teacher: TeacherConf
    teacher_optimizer: OptimizerConf
    loss: Objective
    optimizer: OptimizerConf
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
    message = str(exc)
    # A schema names its own group ("optimizer.lr"); nested under another
    # ("teacher.optimizer") the message must name the key the user sets.
    parent, _, group = where.rpartition(".")
    if parent and message.startswith(f"{group}."):
        message = f"{parent}.{message}"
    return ConfigError(message)


def typed(node: Any, schema: type, where: str) -> Any:
    """The node as its schema's dataclass: types checked, then ranges (__post_init__)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as exc:
        raise _config_error(exc, where) from None


def _optimizer(node: Any, where: str) -> OptimizerConf:
    """The optimizer node typed by its option's schema: by ``name`` (sgd and sgd_nesterov
    share torch.optim.SGD), else by ``_target_``."""
    by_name = {"sgd": SGDConf, "sgd_nesterov": SGDNesterovConf}
    by_target = {"torch.optim.SGD": SGDNesterovConf}
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not isinstance(target, str) or not target.startswith("torch.optim."):
        raise ConfigError(f"{where}._target_ must name a torch.optim class, got {target!r}")
    schema = by_name.get(str(node.get("name"))) or by_target.get(target, OptimizerConf)
    return typed(node, schema, where)


def _target_paths(cls: type) -> list[str]:
    """The ``_target_`` strings that name ``cls``: its module's path and, if its package
    exports it (kdsweep.losses.KnowledgeDistillation), the package's."""
    paths = [f"{cls.__module__}.{cls.__qualname__}"]
    package = cls.__module__.rpartition(".")[0]
    if getattr(sys.modules.get(package), cls.__qualname__, None) is cls:
        paths.append(f"{package}.{cls.__qualname__}")
    return paths


def _built(node: Any, group: str) -> Any:
    """Instantiate a loss or data set once: its class checks its own ranges."""
    classes = {path: c for c in BUILT_PARTS[group] for path in _target_paths(c)}
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target not in classes:
        # The shortest name of each class (the package's export, where there is one).
        names = sorted(min(_target_paths(c), key=len) for c in BUILT_PARTS[group])
        raise ConfigError(f"{group}._target_ must be one of {names}, got {target!r}")
    known = {f.name for f in fields(classes[target])} | {"_target_"}
    for key in node:
        if key not in known:
            raise ConfigError(f"{group}.{key}: Key '{key}' not in {classes[target].__name__}")
    try:
        built = instantiate_trusted(node)
    except Exception as exc:
        # instantiate wraps the class's ValueError in its own exception.
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
        raise _config_error(cause, group) from None
    assert is_dataclass(built)
    return built


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
        model=typed(cfg.model, ModelConf, "model"),
        teacher=teacher,
        teacher_optimizer=_optimizer(OmegaConf.create(teacher.optimizer), "teacher.optimizer"),
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
    if settings.loss.needs_student_hidden and not settings.model.returns_hidden:
        raise ConfigError(
            f"loss={settings.loss.name} needs a student that returns its hidden representation;"
            f" model={settings.model.name} does not: use model=modified"
        )
