"""The config's schemas, registered in Hydra's ConfigStore.

Hydra checks types while it composes: every option file in ``conf/`` starts from its
schema (``defaults: [/schema/<group>/<Schema>@_here_, _self_]``), so ``trainer.epochs=abc``
or ``trainer.objective=worst`` fails at composition. What composition cannot know, the
ranges and the cross-field rules, kdsweep.validation checks once.

The schemas of losses and data sets are those classes themselves (their fields are their
config keys); the rest are the dataclasses below. Defaults live in the schemas; the YAML
files name the ``_target_`` and say in comments what each option is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from kdsweep.config.choices import (
    DEVICES,
    MAX_SEED,
    Architecture,
    EpochChoice,
    Precision,
    Progress,
    SaveModel,
)
from kdsweep.data import DataSet
from kdsweep.losses import Objective

# instantiate() may build these and nothing else: a config (or a command line) cannot make
# kdsweep call arbitrary code. Hydra 1.4 enforces the list (hydra.main and each call).
TRUSTED_TARGETS = ("kdsweep.*", "torch.optim.*")


def instantiate_trusted(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` under kdsweep's target whitelist."""
    from hydra.utils import instantiate

    return instantiate(node, *args, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)


# --- models and optimizers ------------------------------------------------------------------


@dataclass
class ModelConf:
    name: str = "light"
    architecture: Architecture = Architecture.light
    # The seed's Modified*Cosine variants: forward also yields the flattened conv features.
    returns_hidden: bool = False
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class OptimizerConf:
    """A ``torch.optim`` class by ``_target_``, built with the parameters when the run has
    a model (``_partial_``). The other fields are its keyword arguments."""

    _target_: str = MISSING
    _partial_: bool = True
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(
                f"optimizer.weight_decay must be a finite number >= 0, got {self.weight_decay}"
            )


@dataclass
class SGDNesterovConf(OptimizerConf):
    name: str = "sgd_nesterov"
    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.0
    nesterov: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        # torch refuses these combinations only when the optimizer is built; we refuse
        # them at start-up, before any data or teacher work.
        if not (math.isfinite(self.momentum) and self.momentum > 0):
            raise ValueError(
                f"optimizer.momentum must be > 0 for Nesterov momentum, got {self.momentum}"
            )
        if self.dampening != 0:
            raise ValueError(
                f"optimizer.dampening must be 0 for Nesterov momentum, got {self.dampening}"
            )


@dataclass
class SGDConf(OptimizerConf):
    """Plain SGD with momentum, RepDistiller's CIFAR-100 optimizer (lr 0.05, momentum 0.9,
    weight decay 5e-4)."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")


def check_lr_steps(prefix: str, milestones: list[int], gamma: float) -> None:
    """Step decay (torch's MultiStepLR): increasing epochs >= 1, a factor in (0, 1]."""
    if any(int(m) < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ValueError(
            f"{prefix}.lr_milestones must be increasing epochs >= 1, got {list(milestones)}"
        )
    if not (math.isfinite(gamma) and 0 < gamma <= 1):
        raise ValueError(f"{prefix}.lr_gamma must be in (0, 1], got {gamma}")


# --- teacher, trainer, tracking, sweep context ----------------------------------------------


@dataclass
class TeacherConf:
    architecture: Architecture = Architecture.deep
    # A checkpoint to use instead of training one (written by kdsweep, or a plain
    # state_dict of the same architecture). null: train once and cache.
    checkpoint: str | None = None
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    # An optimizer option (conf/optimizer/*.yaml) that trains the teacher.
    optimizer: Any = MISSING
    # Precompute the frozen teacher's outputs once per data set (no augmentation only).
    cache_outputs: bool = True
    # Step decay of the teacher's lr: multiplied by lr_gamma after each of these epochs.
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        check_lr_steps("teacher", self.lr_milestones, self.lr_gamma)
        if self.epochs < 1:
            raise ValueError(f"teacher.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"teacher.batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"teacher.seed must be in [0, {MAX_SEED}], got {self.seed}")


@dataclass
class TrainerConf:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    seed: int = 0
    # auto: cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps
    device: str = "auto"
    progress: Progress = Progress.auto
    # Which epoch's val accuracy is the objective, and whose weights are tested.
    objective: EpochChoice = EpochChoice.best
    precision: Precision = Precision.fp32
    channels_last: bool = False
    compile: bool = False
    # CPU threads for torch; 0: torch's default. 1 pays on a busy shared machine
    # (kdsweep.plan.cpu_threads has the measurements).
    threads: int = 0
    # What a completed run keeps of its student (kdsweep.student).
    save_model: SaveModel = SaveModel.best
    # Step decay of the lr (torch's MultiStepLR): multiplied by lr_gamma after each of these
    # epochs; [] keeps it constant (the tutorial's recipe).
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        check_lr_steps("trainer", self.lr_milestones, self.lr_gamma)
        if self.threads < 0:
            raise ValueError(f"trainer.threads must be >= 0 (0: torch's), got {self.threads}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"trainer.device must be one of {DEVICES}, got {self.device!r}")
        kind, _, index = self.device.partition(":")
        if index and (kind not in ("cuda", "mps") or not index.isdigit()):
            raise ValueError(f"trainer.device must be cuda:N with N a number, got {self.device!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"trainer.seed must be in [0, {MAX_SEED}], got {self.seed}")


@dataclass
class TrackingConf:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "kdsweep"
    run_name: str | None = None

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ValueError("tracking.experiment must not be empty")


@dataclass
class SweepContext:
    """Filled in by kdsweep's sweeper for each trial; null for a plain run."""

    trial_number: int | None = None
    trial_id: int | None = None
    parent_run_id: str | None = None
    study_name: str | None = None
    # trial | baseline | confirm; a confirmation run also names its arm (top1, ablation...)
    role: str = "trial"
    arm: str | None = None


# --- registration ---------------------------------------------------------------------------


# Options whose class is their own schema: the YAML's _target_ names one of these.
def _subclasses(base: type) -> tuple[type, ...]:
    """Every class derived from ``base``: a new loss or data set needs no list of ours."""
    found: list[type] = []
    for cls in base.__subclasses__():
        found += [cls, *_subclasses(cls)]
    return tuple(found)


BUILT_PARTS: dict[str, tuple[type, ...]] = {
    "loss": _subclasses(Objective),
    "data": _subclasses(DataSet),
}
SCHEMAS: dict[str, tuple[type, ...]] = {
    "model": (ModelConf,),
    "optimizer": (OptimizerConf, SGDNesterovConf, SGDConf),
    "teacher": (TeacherConf,),
    "trainer": (TrainerConf,),
    "tracking": (TrackingConf,),
}


def register_schemas() -> None:
    """Store every schema as ``schema/<group>/<ClassName>`` in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    for group, classes in BUILT_PARTS.items():
        for cls in classes:
            hints = get_type_hints(cls)  # the real types: annotations here are strings
            schema = make_dataclass(
                cls.__name__,
                [("_target_", str, field(default=MISSING))]
                + [(f.name, hints[f.name], field(default=f.default)) for f in fields(cls)],
            )
            store.store(group=f"schema/{group}", name=cls.__name__, node=schema, provider="kdsweep")
    for group, classes in SCHEMAS.items():
        for cls in classes:
            store.store(group=f"schema/{group}", name=cls.__name__, node=cls, provider="kdsweep")


register_schemas()
