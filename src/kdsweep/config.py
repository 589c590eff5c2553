"""Typed schemas for every config group, and the validation that turns Hydra's composed
DictConfig into checked dataclasses.

Hydra already rejects overrides of keys that do not exist (struct mode). What it cannot
know is which keys belong to which group option (``loss.temperature`` exists for ``kd``
only), the types, and the ranges: those are checked here, once, before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdsweep.errors import ConfigError

# --- data -------------------------------------------------------------------------------


@dataclass
class DataConf:
    name: str = "digits"
    val_fraction: float = 0.1
    split_seed: int = 0
    augment: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.augment and self.name not in ("cifar10", "cifar100", "synthetic"):
            raise ValueError(
                f"data.augment=true is for 32x32 colour images (cifar10, cifar100, synthetic),"
                f" not data={self.name}"
            )


@dataclass
class DigitsDataConf(DataConf):
    name: str = "digits"
    # digits has no official test split: a seeded fraction is held out once, for good.
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class SyntheticDataConf(DataConf):
    name: str = "synthetic"
    size: int = 5000
    test_size: int = 1000
    num_classes: int = 10
    image_size: int = 32
    channels: int = 3
    noise: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("size", "test_size", "num_classes", "image_size", "channels"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_classes < 2:
            raise ValueError(f"data.num_classes must be >= 2, got {self.num_classes}")
        if self.image_size % 4:
            raise ValueError(f"data.image_size must be a multiple of 4, got {self.image_size}")
        if self.noise < 0:
            raise ValueError(f"data.noise must be >= 0, got {self.noise}")


@dataclass
class CifarDataConf(DataConf):
    name: str = "cifar10"
    root: str = "data"
    download: bool = False
    # torchvision checks the official archives' md5; a hand-made CIFAR-format subset
    # (or a test fixture) can switch that off.
    verify_checksum: bool = True
    # Use only the first N training images (quick experiments); null = all.
    train_subset: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_subset is not None and self.train_subset < 2:
            raise ValueError(f"data.train_subset must be >= 2 or null, got {self.train_subset}")


DATA_SCHEMAS: dict[str, type[DataConf]] = {
    "digits": DigitsDataConf,
    "synthetic": SyntheticDataConf,
    "cifar10": CifarDataConf,
    "cifar100": CifarDataConf,
}

# --- models -----------------------------------------------------------------------------

ARCHITECTURES = ("deep", "light")


@dataclass
class ModelConf:
    name: str = "light"
    architecture: str = "light"
    # The seed's Modified*Cosine variants: forward also yields the flattened conv features.
    returns_hidden: bool = False
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {ARCHITECTURES}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


# --- optimizers -------------------------------------------------------------------------


@dataclass
class OptimizerConf:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class AdamConf(OptimizerConf):
    name: str = "adam"


@dataclass
class SGDNesterovConf(OptimizerConf):
    name: str = "sgd_nesterov"
    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        # torch refuses these combinations only when the optimizer is built; we refuse
        # them at start-up, before any data or teacher work.
        if self.momentum <= 0:
            raise ValueError(
                f"optimizer.momentum must be > 0 for Nesterov momentum, got {self.momentum}"
            )
        if self.dampening != 0:
            raise ValueError(
                f"optimizer.dampening must be 0 for Nesterov momentum, got {self.dampening}"
            )


OPTIMIZER_SCHEMAS: dict[str, type[OptimizerConf]] = {
    "adam": AdamConf,
    "sgd_nesterov": SGDNesterovConf,
}

# --- losses -----------------------------------------------------------------------------


def _check_weights(weights: dict[str, float]) -> None:
    for key, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"loss.{key} must be a finite number >= 0, got {value}")
    if all(value == 0 for value in weights.values()):
        raise ValueError(f"loss weights {', '.join(weights)} are all 0: nothing would be learned")


@dataclass
class LossConf:
    name: str = "ce"


@dataclass
class CELossConf(LossConf):
    name: str = "ce"


@dataclass
class KDLossConf(LossConf):
    name: str = "kd"
    temperature: float = 2.0
    soft_target_weight: float = 0.25
    ce_weight: float = 0.75

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")
        _check_weights({"soft_target_weight": self.soft_target_weight, "ce_weight": self.ce_weight})


@dataclass
class CosineLossConf(LossConf):
    name: str = "cosine"
    hidden_weight: float = 0.25
    ce_weight: float = 0.75

    def __post_init__(self) -> None:
        _check_weights({"hidden_weight": self.hidden_weight, "ce_weight": self.ce_weight})


@dataclass
class MultiMarginLossConf(LossConf):
    name: str = "multimargin"
    p: int = 1
    margin: float = 1.0

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ValueError(f"loss.p must be 1 or 2 (torch.nn.MultiMarginLoss), got {self.p}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"loss.margin must be > 0, got {self.margin}")


LOSS_SCHEMAS: dict[str, type[LossConf]] = {
    "ce": CELossConf,
    "kd": KDLossConf,
    "cosine": CosineLossConf,
    "multimargin": MultiMarginLossConf,
}
# Losses that learn from a teacher; the others train the student alone.
TEACHER_LOSSES = ("kd", "cosine")

# --- teacher, trainer, tracking ---------------------------------------------------------


@dataclass
class TeacherConf:
    architecture: str = "deep"
    # A checkpoint to use instead of training one (written by kdsweep, or a plain
    # state_dict of the same architecture). null: train once and cache.
    checkpoint: str | None = None
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    # Precompute the frozen teacher's outputs once per data set (no augmentation only).
    cache_outputs: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"teacher.architecture must be one of {ARCHITECTURES}")
        if self.epochs < 1:
            raise ValueError(f"teacher.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"teacher.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TrainerConf:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    seed: int = 0
    device: str = "auto"
    # auto: a bar on a terminal, one log line per epoch otherwise.
    progress: str = "auto"
    # Which epoch's val accuracy is the objective, and whose weights are tested.
    objective: str = "best"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"trainer.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"trainer.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"trainer.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        choices = {
            "device": ("auto", "cpu", "cuda", "mps"),
            "progress": ("auto", "bar", "log", "none"),
            "objective": ("best", "last"),
            "precision": ("fp32", "bf16"),
        }
        for key, allowed in choices.items():
            value = getattr(self, key)
            base = value.split(":")[0] if key == "device" else value
            if base not in allowed:
                raise ValueError(f"trainer.{key} must be one of {allowed}, got {value!r}")


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
    role: str = "trial"


@dataclass
class Settings:
    data: DataConf
    model: ModelConf
    teacher: TeacherConf
    teacher_optimizer: OptimizerConf
    loss: LossConf
    optimizer: OptimizerConf
    trainer: TrainerConf
    tracking: TrackingConf
    sweep: SweepContext
    cache_dir: str = ".kdsweep_cache"

    @property
    def uses_teacher(self) -> bool:
        return self.loss.name in TEACHER_LOSSES


def _typed(node: Any, schema: type, where: str) -> Any:
    """Merge a config node onto its schema (types, unknown keys), then build the
    dataclass so its range checks run."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        # OmegaConf messages carry a multi-line "full_key / object_type" trailer.
        first = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        prefix = f"{where}.{key}" if key else where
        raise ConfigError(f"{prefix}: {first}") from None
    except ValueError as exc:
        message = str(exc)
        # A schema names its own group ("optimizer.lr"); nested under another
        # ("teacher.optimizer") the message must name the key the user sets.
        parent, _, group = where.rpartition(".")
        if parent and message.startswith(f"{group}."):
            message = f"{parent}.{message}"
        raise ConfigError(message) from None


def _option(node: Any, schemas: dict[str, type], where: str) -> Any:
    name = node.get("name") if isinstance(node, DictConfig) else None
    if name not in schemas:
        raise ConfigError(f"{where}.name must be one of {sorted(schemas)}, got {name!r}")
    return _typed(node, schemas[name], where)


def validate(cfg: DictConfig) -> Settings:
    """Check the composed config and return it typed. Raises ConfigError (one line)."""
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
    teacher = _typed(cfg.teacher, TeacherConf, "teacher")
    settings = Settings(
        data=_option(cfg.data, DATA_SCHEMAS, "data"),
        model=_typed(cfg.model, ModelConf, "model"),
        teacher=teacher,
        teacher_optimizer=_option(
            OmegaConf.create(teacher.optimizer), OPTIMIZER_SCHEMAS, "teacher.optimizer"
        ),
        loss=_option(cfg.loss, LOSS_SCHEMAS, "loss"),
        optimizer=_option(cfg.optimizer, OPTIMIZER_SCHEMAS, "optimizer"),
        trainer=_typed(cfg.trainer, TrainerConf, "trainer"),
        tracking=_typed(cfg.tracking, TrackingConf, "tracking"),
        sweep=_typed(cfg.get("sweep") or {}, SweepContext, "sweep"),
        cache_dir=str(cfg.get("cache_dir", ".kdsweep_cache")),
    )
    check_combination(settings)
    return settings


def check_combination(settings: Settings) -> None:
    """Refuse model x loss x optimizer combinations that cannot train, naming the fix."""
    if settings.loss.name == "cosine" and not settings.model.returns_hidden:
        raise ConfigError(
            f"loss=cosine needs a student that returns its hidden representation;"
            f" model={settings.model.name} does not: use model=modified"
        )
