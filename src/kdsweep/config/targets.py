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


def instantiate_trusted(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` under kdsweep's target allow-list."""
    return instantiate(node, *args, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)


@dataclass(frozen=True)
class Target:
    """A ``_target_`` node as configured (resolved), built on demand."""

    key: str  # where it sits in the config: model, teacher.model, optimizer...
    node: dict[str, Any]

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
            return instantiate_trusted({"_target_": self.target}, _partial_=True).func
        except InstantiationException as exc:
            raise ConfigError(f"{self.key}._target_={self.target}: {first_line(exc)}") from None

    def build(self, *args: Any, **offered: Any) -> Any:
        """Instantiate the target with ``args``, its arguments, and those of ``offered``
        (and ``name``) that its signature names: not through ``**kwargs``, which
        torchvision's builders hand on to a class that may refuse them. Raises what the
        callable raises (a loss's ValueError names its key)."""
        made = self.locate()
        named = inspect.signature(made).parameters
        offered = {k: v for k, v in {**offered, NAME: self.name}.items() if k in named}
        arguments = {**self.arguments, **offered}
        if is_dataclass(made):
            # The fields type the arguments (and refuse unknown keys) before the class
            # checks their ranges in __post_init__.
            typed = OmegaConf.merge(OmegaConf.structured(made), arguments)
            arguments = OmegaConf.to_container(typed)  # type: ignore[assignment]
        try:
            # Plain lists and dicts, not OmegaConf's containers, reach the callable.
            node = {"_target_": self.target, "_convert_": "all", **arguments}
            return instantiate_trusted(node, *args)
        except InstantiationException as exc:
            raise (exc.__cause__ or exc) from None


def build_network(target: Target, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A network for images of ``input_shape`` (C, H, W) and ``num_classes`` classes."""
    shape = tuple(int(d) for d in input_shape)
    return target.build(input_shape=shape, in_channels=shape[0], num_classes=int(num_classes))
