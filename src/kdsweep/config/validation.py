"""The one validation pass: a composed config becomes checked :class:`Settings`.

Composition already checked the recipes' types (kdsweep.config.schema); here their ranges
are checked (each dataclass's ``__post_init__``), the loss and the data set are built once
(kdsweep.config.targets: their fields type their keys), the arguments of the networks and
optimizers are checked, and the cross-field rules run. Every target, nested ones too, must
pass the allow-list (kdsweep.config.schema.TRUSTED_TARGETS and the user's
``allowed_targets``), import, and be the right kind of object. It happens once, in the
process that runs the job, before MLflow is imported: a typo costs a second, not a
teacher's training.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdsweep import data as data_sets
from kdsweep import losses
from kdsweep.config.folder import config_dir
from kdsweep.config.schema import (
    PARTS,
    SweepContext,
    TeacherConf,
    TrackingConf,
    TrainerConf,
    target_defaults,
)
from kdsweep.config.targets import Target, UnknownTarget
from kdsweep.core.errors import ConfigError, first_line
from kdsweep.core.files import directory_problem
from kdsweep.core.stores import attempt
from kdsweep.data import DataSet
from kdsweep.losses import Objective, dry_run


@dataclass
class Settings:
    """The validated run: the loss and the data set are already their objects (built
    once); the networks, the optimizers and the lr schedules are targets, built when
    their inputs exist (a schedule None: the lr stays constant)."""

    data: DataSet
    model: Target
    teacher: TeacherConf
    teacher_model: Target
    teacher_optimizer: Target
    teacher_scheduler: Target | None
    loss: Objective
    optimizer: Target
    scheduler: Target | None
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
        return ConfigError(f"{prefix}: {first_line(exc)}")
    return ConfigError(str(exc))


def typed(node: Any, schema: type, where: str) -> Any:
    """The node as its schema's dataclass: types checked, then ranges (__post_init__)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as exc:
        raise _config_error(exc, where) from None


def _node(node: Any, key: str, allowed: tuple[str, ...]) -> Target:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node)
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"{key}._target_ is missing: {key} must name what builds it")
    target = Target(key, node, allowed)
    target.check_nested()  # a _target_ inside is refused here, naming its own key
    return target


def allowed_targets(cfg: DictConfig) -> tuple[str, ...]:
    """The user's ``allowed_targets``: package patterns such as ``mypkg.*``."""
    allowed = cfg.get("allowed_targets") or []
    if not isinstance(allowed, (list, tuple, ListConfig)) or not all(
        isinstance(p, str) and p for p in allowed
    ):
        raise ConfigError(
            f"allowed_targets must be a list of package patterns, e.g. '[mypkg.*]', got {allowed}"
        )
    return tuple(allowed)


def _located(target: Target) -> Any:
    """The target's callable; None when Hydra never runs it (os.system). A target outside
    the allow-list or that does not import is its own one-line error (it names the fix)."""
    try:
        return target.locate()
    except UnknownTarget:
        raise
    except ConfigError:
        return None


# Arguments whose meaning is torch's wherever they appear (an optimizer's lr, a network's
# dropout): torch checks them only when it builds the part, after the data and the
# teacher, and without naming the key. Each value must be a finite number that passes.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "must be > 0"),
    "weight_decay": (lambda v: v >= 0, "must be a finite number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    # An lr schedule's decay factor (StepLR, MultiStepLR, ExponentialLR).
    "gamma": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
}
NESTEROV: dict[str, tuple[Callable[[float], bool], str]] = {
    "momentum": (lambda v: v > 0, "must be > 0 for Nesterov momentum"),
    "dampening": (lambda v: v == 0, "must be 0 for Nesterov momentum"),
}


def _target(node: Any, key: str, allowed: tuple[str, ...]) -> Target:
    """A network's or an optimizer's node, kept to be built later, its arguments checked."""
    target = _node(node, key, allowed)
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


@functools.cache
def _shipped_names() -> dict[str, set[str]]:
    """The ``name`` of each network, loss and data option in kdsweep's config folder, and
    the targets it names."""
    named: dict[str, set[str]] = {}
    for group in ("model", "teacher", "loss", "data"):
        for path in (Path(config_dir()) / group).glob("*.yaml"):
            node = OmegaConf.load(path)
            defaults = [str(d) for d in node.get("defaults", [])]
            node = node.get("model") if group == "teacher" else node
            if not isinstance(node, DictConfig):
                continue
            # A loss or data option starts from its class's schema node
            # (/schema/loss/<Class>@_here_, kdsweep.config.schema): the target is its class.
            schema = _schema_node(group, defaults)
            target = node.get("_target_") or schema.get("_target_")
            if target is not None:
                name = node.get("name") or schema.get("name")
                named.setdefault(str(name), set()).add(str(target))
    return named


def _schema_node(group: str, defaults: list[str]) -> dict[str, Any]:
    """The ``_target_`` node, with its class's defaults, of the schema an option file
    starts from (empty if it names none)."""
    prefix = f"/schema/{group}/"
    for entry in defaults:
        if group in PARTS and entry.startswith(prefix):
            package = PARTS[group][0]
            cls = getattr(package, entry.removeprefix(prefix).partition("@")[0], None)
            return target_defaults(package, cls) if isinstance(cls, type) else {}
    return {}


def _own_name(node: Any) -> Any:
    """The node without the ``name`` an option gave another target: overriding only
    ``teacher.model._target_`` keeps the replaced option's name (``deep``), and the part
    is then named after its target instead (``resnet18``, ``CrossEntropy``)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node)
    if not isinstance(node, dict):
        return node
    given_to = _shipped_names().get(str(node.get("name")))
    if given_to is not None and node.get("_target_") not in given_to:
        node = {k: v for k, v in node.items() if k != "name"}
    return node


def _network(node: Any, key: str, allowed: tuple[str, ...]) -> Target:
    """A network's node. Its target must pass the allow-list and import now (a trusted
    name may lead elsewhere: kdsweep.nets.cifar.torch.hub.load), and a class be an
    nn.Module (what a function returns is checked when it is built:
    kdsweep.config.targets.build_network)."""
    from torch import nn

    target = _target(_own_name(node), key, allowed)
    what = "a torch nn.Module class or a function that returns one"
    return _subclass_of(nn.Module, what, target, key, functions=True)


def _optimizer(node: Any, key: str, allowed: tuple[str, ...]) -> Target:
    """An optimizer's node: torch.optim's, or a torch Optimizer subclass of the user's."""
    from torch.optim import Optimizer

    target = _target(node, key, allowed)
    return _subclass_of(Optimizer, "a torch.optim class (a torch Optimizer)", target, key)


def _scheduler(node: Any, key: str, allowed: tuple[str, ...]) -> Target | None:
    """An lr schedule's node (None: none): torch.optim.lr_scheduler's, or a torch
    LRScheduler subclass of the user's. Step decay's epochs are checked here: torch takes
    any list, and a milestone out of order or before epoch 1 silently never applies."""
    if node is None:
        return None
    target = _target(node, key, allowed)
    milestones = target.arguments.get("milestones")
    if milestones is not None and not (
        isinstance(milestones, list)
        and all(isinstance(m, int) and m >= 1 for m in milestones)
        and milestones == sorted(set(milestones))
    ):
        raise ConfigError(f"{key}.milestones must be increasing epochs >= 1, got {milestones}")
    from torch.optim.lr_scheduler import LRScheduler

    what = "a torch LRScheduler class (torch.optim.lr_scheduler)"
    return _subclass_of(LRScheduler, what, target, key)


def _subclass_of(
    base: type, what: str, target: Target, key: str, functions: bool = False
) -> Target:
    """``target`` if it names a subclass of ``base`` (a network, an optimizer, a schedule)
    or, with ``functions``, a function (what it returns is checked when it is built);
    else the one line saying what ``key`` must name."""
    made = _located(target)
    if made is None or not (issubclass(made, base) if isinstance(made, type) else functions):
        raise ConfigError(f"{key}._target_ must name {what}, got {target.target!r}")
    return target


# The kind of object each part built at validation must be, and the package that exports
# kdsweep's own (named when a target is not one).
BUILT_NOW: dict[str, tuple[ModuleType, type]] = {
    "data": (data_sets, DataSet),
    "loss": (losses, Objective),
}


def _built(node: Any, group: str, allowed: tuple[str, ...]) -> Any:
    """Build a loss or a data set once: its fields type its keys, its class checks
    their ranges. The user's own (a subclass of kdsweep's) builds the same way."""
    package, kind = BUILT_NOW[group]
    target = _node(_own_name(node), group, allowed)
    try:
        made, why = target.locate(), ""
    except UnknownTarget as exc:
        made, why = None, f" ({exc.detail})"
    except ConfigError:
        made, why = None, ""
    if not (isinstance(made, type) and issubclass(made, kind)):
        exported = (getattr(package, name) for name in package.__all__)
        names = sorted(
            f"{package.__name__}.{c.__name__}"
            for c in exported
            if isinstance(c, type) and issubclass(c, kind) and c is not kind
        )
        raise ConfigError(
            f"{group}._target_ must be one of {names} or a subclass of"
            f" {package.__name__}.{kind.__name__}, got {target.target!r}{why}"
        )
    built, error = attempt(target.build)  # a user's class's own code too: any error is its reason
    if error is None:
        return built
    if isinstance(error, (OmegaConfBaseException, ValueError)):  # a key, a range
        raise _config_error(error, group) from None
    raise ConfigError(
        f"{group}._target_={target.target} cannot be built"
        f" ({type(error).__name__}: {first_line(error)})"
    ) from error


def plain_config(cfg: DictConfig, enum_to_str: bool = False) -> dict[str, Any]:
    """The config as plain values, its interpolations resolved against the whole tree,
    without the ``hydra`` node (Hydra's own, and half-filled inside a sweeper)."""
    ours = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    return OmegaConf.to_container(ours, resolve=True, enum_to_str=enum_to_str)  # type: ignore[return-value]


def validate(cfg: DictConfig) -> Settings:
    """Check the composed config once and return it typed. Raises ConfigError (one line)."""
    try:
        # Resolve interpolations against the whole tree before groups are checked alone.
        cfg = OmegaConf.create(plain_config(cfg))
    except OmegaConfBaseException as exc:
        raise ConfigError(first_line(exc)) from None
    for group in ("data", "model", "teacher", "loss", "optimizer", "trainer", "tracking"):
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"config group '{group}' is missing: pick one, e.g. {group}=...")
    # The trainer first: teacher.seed follows trainer.seed, and a bad seed must be named
    # where the user set it.
    trainer = typed(cfg.trainer, TrainerConf, "trainer")
    teacher = typed(cfg.teacher, TeacherConf, "teacher")
    allowed = allowed_targets(cfg)
    # What imports no torch first: locating the networks, optimizers and schedules
    # imports it (seconds), and a typo elsewhere is refused before that.
    data, loss = _built(cfg.data, "data", allowed), _built(cfg.loss, "loss", allowed)
    tracking = typed(cfg.tracking, TrackingConf, "tracking")
    sweep = typed(cfg.get("sweep") or {}, SweepContext, "sweep")
    settings = Settings(
        data=data,
        model=_network(cfg.model, "model", allowed),
        teacher=teacher,
        teacher_model=_network(teacher.model, "teacher.model", allowed),
        teacher_optimizer=_optimizer(teacher.optimizer, "teacher.optimizer", allowed),
        teacher_scheduler=_scheduler(teacher.scheduler, "teacher.scheduler", allowed),
        loss=loss,
        optimizer=_optimizer(cfg.optimizer, "optimizer", allowed),
        scheduler=_scheduler(trainer.scheduler, "trainer.scheduler", allowed),
        trainer=trainer,
        tracking=tracking,
        sweep=sweep,
        cache_dir=str(cfg.get("cache_dir", ".kdsweep_cache")),
    )
    check_combination(settings)
    try:
        # Last, once the rest is known good: it imports torch. Single runs and sweeps
        # (each end of a searched range) refuse a formula that cannot be computed here,
        # before the data or the teacher is prepared.
        dry_run(settings.loss)
    except ValueError as exc:
        raise ConfigError(f"{exc}: change the loss's settings") from exc
    if settings.uses_teacher:
        problem = directory_problem(settings.cache_dir)
        if problem:
            raise ConfigError(
                f"cache_dir={settings.cache_dir} cannot hold the teacher's cache ({problem}):"
                " give cache_dir a writable directory with free space"
            )
    return settings


def check_combination(settings: Settings) -> None:
    """The cross-field rules: refuse model x loss combinations that cannot train. (Another
    network's layers are checked once it is built: kdsweep.run.plan.)"""
    kdsweep_student = settings.model.target.startswith("kdsweep.")
    if (
        settings.loss.needs_student_hidden
        and kdsweep_student
        and not settings.loss.taps()[0].hidden
        and not settings.model.arguments.get("returns_hidden")
    ):
        raise ConfigError(
            f"loss={settings.loss.name} needs a student that returns its hidden representation;"
            f" model={settings.model.name} does not: use model=modified, or name the layer"
            " whose output is its hidden vector in loss.student_hidden_layer"
        )
