"""The one way from a config node to an object: a ``_target_`` node and its arguments,
built by ``hydra.utils.instantiate`` under kdsweep's allow-list.

Every pluggable part is such a node: the data set and the loss (built once, when the
config is validated), the student, the teacher's network and both optimizers (kept as a
:class:`Target` until what they need exists: a network its data's shape, an optimizer the
parameters), the sweep's sampler and pruner. kdsweep offers what it knows (``name``;
``input_shape``, ``in_channels`` and ``num_classes`` to a network) and the callable takes
the ones its signature names; everything else comes from the YAML. A dataclass target (a
loss, a data set) has its arguments typed by its own fields first: ``loss.temperature=4``
arrives as 4.0, and a key it lacks is refused.

The allow-list (kdsweep.config.schema.TRUSTED_TARGETS and the user's ``allowed_targets``)
is checked here for every ``_target_`` of a node, nested ones included, before any of them
runs: Hydra checks each name and, for a package pattern, where the callable it leads to
lives (``torch.nn.modules.module.torch.hub.load`` is torch.hub.load); kdsweep adds
REFUSED_MODULES, what loads code or files under a trusted name.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import hydra
from hydra.errors import InstantiationException
from hydra.utils import execution_whitelist, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from kdsweep.config.schema import REFUSED_MODULES, TRUSTED_TARGETS
from kdsweep.core.errors import ConfigError, KdsweepError, first_line

# The key that names an option (run names, tags, messages): offered to the callable like
# the data's shape, so a loss or a data set (a field of theirs) gets it and a network not.
NAME = "name"
# Packages kdsweep trusts only in part: a name refused there is allowed by itself, never
# by its package (allowed_targets=[torch.*] would let a config call torch.hub.load).
PARTLY_TRUSTED = {pattern.partition(".")[0] for pattern in TRUSTED_TARGETS}
HYDRA_DIR = os.path.dirname(hydra.__file__)


def _whitelist(allowed: tuple[str, ...]) -> Any:
    """Hydra's execution allow-list for kdsweep's parts: TRUSTED_TARGETS and the user's,
    not added to any list of the caller's (hydra.main's is for what Hydra itself builds)."""
    return execution_whitelist((*TRUSTED_TARGETS, *allowed), reset=True)


def _matches(target: str, patterns: tuple[str, ...]) -> bool:
    """Hydra's rule: ``pkg.*`` matches the names under pkg, any other pattern itself."""
    return any(target.startswith(p[:-1]) if p.endswith(".*") else target == p for p in patterns)


def targets_in(node: Any, key: str) -> Iterator[tuple[str, str]]:
    """(where, name) of every ``_target_`` in ``node`` and the nodes, lists and ``_args_``
    inside it; ``where`` is the node's key (``model.returns_hidden``, ``model._args_.0``)."""
    if isinstance(node, (dict, DictConfig)):
        target = node.get("_target_")
        if isinstance(target, str):
            yield key, target
        for name, value in node.items():
            yield from targets_in(value, f"{key}.{name}")
    elif isinstance(node, (list, tuple, ListConfig)):
        for index, value in enumerate(node):
            yield from targets_in(value, f"{key}.{index}")


class RefusedTarget(InstantiationException):
    """A trusted name that leads to a callable kdsweep does not run from a config."""


def authorized(target: str, allowed: tuple[str, ...] = ()) -> Any:
    """The callable ``target`` names, imported (nothing called) once the allow-list lets
    it run: Hydra's check of the name and of where it leads, then REFUSED_MODULES unless
    the user's ``allowed`` names it. Raises InstantiationException."""
    made = instantiate(
        {"_target_": target}, _partial_=True, _execution_whitelist_=_whitelist(allowed)
    )
    home = str(getattr(made.func, "__module__", None) or "")
    refused = any(home == m or home.startswith(f"{m}.") for m in REFUSED_MODULES)
    if refused and not _matches(target, allowed):
        raise RefusedTarget(
            f"Target '{target}' (in {home}) loads code or files or picks a callable by name,"
            " which kdsweep does not run from a config."
        )
    return made.func


def instantiate_trusted(node: Any, *args: Any, allowed: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` under kdsweep's target allow-list, extended by the
    user's ``allowed_targets``: every ``_target_`` in the node is authorized first, so a
    refused nested one stops the build before any of them runs."""
    for _, target in targets_in(node, ""):
        authorized(target, allowed)
    return instantiate(node, *args, _execution_whitelist_=_whitelist(allowed), **kwargs)


class UnknownTarget(ConfigError):
    """A target that the allow-list refuses or that does not import: the user can fix it
    (allowed_targets, the name, PYTHONPATH). ``detail`` is why, and the fix."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class BrokenImport(KdsweepError):
    """A target whose module exists but raises on import: its own error, not a missing
    name (neither a ConfigError nor an UnknownTarget, which callers word as a wrong one)."""


def _reason(exc: BaseException) -> str:
    """Hydra's message as one sentence: its first, the paragraph's lines joined."""
    lines = [line for line in str(exc).splitlines() if not line.startswith("full_key:")]
    text = " ".join(" ".join(lines).split())
    return text.partition(". ")[0].rstrip(".")


def _fix(exc: InstantiationException, target: str) -> str:
    """What to do about a target Hydra or kdsweep refused: allow it, or make it import
    (nothing for those Hydra never runs, such as os.system)."""
    package = target.partition(".")[0]
    if isinstance(exc, RefusedTarget) or (
        "not in the Hydra execution whitelist" in str(exc) and package in PARTLY_TRUSTED
    ):
        return (
            "kdsweep trusts what builds networks, losses, data sets, optimizers, samplers and"
            f" pruners; if you trust it, allow it by name: 'allowed_targets=[{target}]'"
        )
    if "not in the Hydra execution whitelist" in str(exc):
        return f"add its package to allowed_targets, e.g. 'allowed_targets=[{package}.*]'"
    if "Error locating target" in str(exc):
        return "check the name, and that its package is installed or on PYTHONPATH"
    return ""


def _import_failure(exc: BaseException, target: str) -> str:
    """Why a module on the target's path exists but raises on import (a SyntaxError, a
    missing dependency of its own, any error), as "Type: first line (file:line)"; "" when
    nothing raised but the name itself is missing."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if cause is exc or isinstance(cause, AttributeError):
        return ""
    if isinstance(cause, ModuleNotFoundError) and _matches(
        target, (str(cause.name), f"{cause.name}.*")
    ):
        return ""  # the target's own module (or package) is not there
    if isinstance(cause, SyntaxError) and cause.filename:
        where = f"{cause.filename}:{cause.lineno}"
    else:
        # The frame that raised, below Hydra's import and importlib's.
        frames = [
            f for f in traceback.extract_tb(cause.__traceback__)
            if not f.filename.startswith(("<frozen", HYDRA_DIR))
        ]  # fmt: skip
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return f"{type(cause).__name__}: {first_line(cause)} ({where})"


@dataclass(frozen=True)
class Target:
    """A ``_target_`` node as configured (resolved), built on demand."""

    key: str  # where it sits in the config: model, teacher.model, optimizer...
    node: dict[str, Any]
    allowed: tuple[str, ...] = ()  # the user's allowed_targets

    @property
    def target(self) -> str:
        return str(self.node.get("_target_"))

    @property
    def name(self) -> str:
        """The option's ``name``, else the callable's own (``mypkg.nets.Tiny``: Tiny)."""
        return str(self.node.get(NAME) or self.target.rpartition(".")[2])

    @property
    def arguments(self) -> dict[str, Any]:
        return {k: v for k, v in self.node.items() if k not in ("_target_", NAME)}

    def identity(self) -> dict[str, Any]:
        """What the built object depends on (cache keys, saved students): the target and
        its arguments, not the option's name."""
        return {"_target_": self.target, **self.arguments}

    def check_nested(self) -> None:
        """Every ``_target_`` inside the arguments is authorized as the node's own is
        (locate), each refusal one line naming its key."""
        for where, target in targets_in(self.arguments, self.key):
            Target(where, {"_target_": target}, self.allowed).locate()

    def locate(self) -> Any:
        """The callable, once the allow-list lets it run and it imports; else one line."""
        try:
            return authorized(self.target, self.allowed)
        except InstantiationException as exc:
            where = f"{self.key}._target_={self.target}"
            failure = _import_failure(exc, self.target)
            if failure:
                raise BrokenImport(
                    f"{where}: it is found but fails to import: {failure}: fix that error"
                ) from None
            reason, fix = _reason(exc), _fix(exc, self.target)
            if not fix:
                raise ConfigError(f"{where}: {reason}") from None
            raise UnknownTarget(f"{where}: {reason}: {fix}", f"{reason}: {fix}") from None

    def untaken_keys(self) -> list[str]:
        """The node's keys that its callable does not take: not a field of a dataclass,
        not a parameter of anything else (none if it takes ``**kwargs``)."""
        made = self.locate()
        if is_dataclass(made):
            taken = {f.name for f in fields(made)}
        else:
            try:
                parameters = inspect.signature(made).parameters.values()
            except (TypeError, ValueError):
                return []
            if any(p.kind is p.VAR_KEYWORD for p in parameters):
                return []
            taken = {p.name for p in parameters}
        return [k for k in self.node if k != "_target_" and k not in taken]

    def build(self, *args: Any, **offered: Any) -> Any:
        """Instantiate the target with ``args``, its arguments, and those of ``offered``
        (and ``name``) that its signature names: not through ``**kwargs``, which
        torchvision's builders hand on to a class that may refuse them, except
        ``num_classes``, which their classes all take. Raises what the callable raises (a
        loss's ValueError names its key)."""
        self.check_nested()
        made = self.locate()
        try:
            named = inspect.signature(made).parameters
        except (TypeError, ValueError):  # a builtin without a signature: offer nothing
            named = {}
        wanted = {k: v for k, v in {**offered, NAME: self.name}.items() if k in named}
        if "num_classes" in offered and any(p.kind is p.VAR_KEYWORD for p in named.values()):
            # torchvision's builders (resnet18(*, weights, progress, **kwargs)) hand their
            # **kwargs to the model's class, and every classifier takes num_classes.
            wanted.setdefault("num_classes", offered["num_classes"])
        arguments = {**self.arguments, **wanted}
        if is_dataclass(made):
            # The fields type the arguments (and refuse unknown keys) before the class
            # checks their ranges in __post_init__.
            typed = OmegaConf.merge(OmegaConf.structured(made), arguments)
            arguments = OmegaConf.to_container(typed)  # type: ignore[assignment]
        try:
            # Plain lists and dicts, not OmegaConf's containers, reach the callable.
            node = {"_target_": self.target, "_convert_": "all", **arguments}
            return instantiate_trusted(node, *args, allowed=self.allowed)
        except InstantiationException as exc:
            raise (exc.__cause__ or exc) from None


def build_network(target: Target, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A network for images of ``input_shape`` (C, H, W) and ``num_classes`` classes."""
    from torch import nn

    shape = tuple(int(d) for d in input_shape)
    network = target.build(input_shape=shape, in_channels=shape[0], num_classes=int(num_classes))
    if not isinstance(network, nn.Module):
        raise ConfigError(
            f"{target.key}._target_={target.target} built a {type(network).__name__}, not a"
            f" torch nn.Module: name a class or function that returns one"
        )
    return network
