"""The one way from a config node to an object: a ``_target_`` node and its arguments,
built by ``hydra.utils.instantiate`` under kdsweep's execution allow-list.

Every pluggable part is such a node: the data set and the loss (built once, when the
config is validated), the student, the teacher's network and both optimizers (kept as a
:class:`Target` until what they need exists: a network its data's shape, an optimizer the
parameters). kdsweep offers what it knows (``name``; ``input_shape``, ``in_channels``
and ``num_classes`` to a network) and the callable takes the ones its signature names;
everything else comes from the YAML. A dataclass target (a loss, a data set) has its
arguments typed by its own fields first: ``loss.temperature=4`` arrives as 4.0, and a key
it lacks is refused.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, is_dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kdsweep.config.schema import TRUSTED_TARGETS
from kdsweep.core.errors import ConfigError, first_line

# The key that names an option (run names, tags, messages): offered to the callable like
# the data's shape, so a loss or a data set (a field of theirs) gets it and a network not.
NAME = "name"


def instantiate_trusted(node: Any, *args: Any, allowed: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` under kdsweep's target allow-list, extended by the
    user's ``allowed_targets``."""
    trusted = (*TRUSTED_TARGETS, *allowed)
    return instantiate(node, *args, _execution_whitelist_=trusted, **kwargs)


class UnknownTarget(ConfigError):
    """A target that the allow-list refuses or that does not import: the user can fix it
    (allowed_targets, the name, PYTHONPATH). ``detail`` is why, and the fix."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _fix(exc: InstantiationException, target: str) -> str:
    """What to do about a target Hydra refused: allow its package, or make it import
    (nothing for those Hydra never runs, such as os.system)."""
    if "not in the Hydra execution whitelist" in str(exc):
        package = target.partition(".")[0]
        return f"add its package to allowed_targets, e.g. 'allowed_targets=[{package}.*]'"
    if "Error locating target" in str(exc):
        return "check the name, and that its package is installed or on PYTHONPATH"
    return ""


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

    def locate(self) -> Any:
        """The callable, once the allow-list lets it run and it imports; else one line."""
        try:
            node = {"_target_": self.target}
            return instantiate_trusted(node, _partial_=True, allowed=self.allowed).func
        except InstantiationException as exc:
            reason, fix = first_line(exc).rstrip("."), _fix(exc, self.target)
            where = f"{self.key}._target_={self.target}"
            if not fix:
                raise ConfigError(f"{where}: {reason}") from None
            raise UnknownTarget(f"{where}: {reason}: {fix}", f"{reason}: {fix}") from None

    def build(self, *args: Any, **offered: Any) -> Any:
        """Instantiate the target with ``args``, its arguments, and those of ``offered``
        (and ``name``) that its signature names: not through ``**kwargs``, which
        torchvision's builders hand on to a class that may refuse them, except
        ``num_classes``, which their classes all take. Raises what the callable raises (a
        loss's ValueError names its key)."""
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
