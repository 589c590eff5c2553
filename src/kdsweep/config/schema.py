"""The config's schemas, registered in Hydra's ConfigStore.

Hydra checks types while it composes: every option file in ``conf/`` starts from its
schema (``defaults: [/schema/<group>/<Schema>@_here_, _self_]``), so ``trainer.epochs=abc``
or ``trainer.objective=worst`` fails at composition. What composition cannot know, the
ranges and the cross-field rules, kdsweep.validation checks once.

The recipes below (teacher, trainer, tracking) keep their defaults in these dataclasses.
The pluggable parts (data set, student, teacher's network, loss, optimizers) are
``_target_`` nodes built by kdsweep.config.targets (a dataclass target types and checks
its own arguments). kdsweep's losses and data sets are dataclasses: their fields' defaults
are the one home of their options' values, stored here as untyped ``_target_`` nodes
(``schema/loss/<Class>``, ``schema/data/<Class>``) that ``conf/loss`` and ``conf/data``
start from. Untyped, not the dataclasses themselves: a user's own ``_target_`` with
other keys still composes, and a bad value is refused by the class that is built, in
kdsweep's one-line message, as for a loss written outside kdsweep. The YAML keeps the
words: what the option is, and the values that differ from the class's defaults.
"""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from kdsweep import data, losses
from kdsweep.config.choices import DEVICES, MAX_SEED, EpochChoice, Precision, Progress, SaveModel

# What a config's ``_target_`` may name: what builds a run's parts and a sweep's sampler
# and pruner, not whole packages, so a config (or a command line) cannot make kdsweep call
# other code. ``torch.*`` would let it call torch.hub.load (a folder's hubconf.py, a GitHub
# repository) or torch.load (a pickle); ``kdsweep.*`` would let it write files.
# kdsweep.config.targets applies it to every ``_target_`` node, nested ones too, by Hydra
# 1.4's execution allow-list and REFUSED_MODULES; the top-level key ``allowed_targets``
# adds what the user trusts (``[mypkg.*]``).
TRUSTED_TARGETS = (
    "kdsweep.nets.*",  # networks
    "kdsweep.losses.*",
    "kdsweep.data.*",
    "torch.nn.*",  # layers (less REFUSED_MODULES)
    "torch.optim.*",  # optimizers, and their lr schedulers
    "torchvision.models.*",  # network builders (weights from torchvision's URLs, hash-checked)
    "optuna.samplers.*",
    "optuna.pruners.*",
    # hydra-optuna-sweeper's sampler options that are factories (hydra/sweeper/sampler=...)
    "hydra_plugins.hydra_optuna_sweeper._impl.create_nsgaii_sampler",
    "hydra_plugins.hydra_optuna_sweeper._impl.create_nsgaiii_sampler",
    "hydra_plugins.hydra_optuna_sweeper.config.raise_motpe_removed",
)
# Modules under TRUSTED_TARGETS whose callables load code or files or pick a callable by
# name: refused wherever a trusted name leads to them (unless the user's allowed_targets
# names it).
REFUSED_MODULES = (
    "torch.nn.attention",  # registers kernels by importing the module it is given
    "torch.nn.parallel",  # DistributedDataParallel: process groups, pickled state
    "torch.nn.utils",  # imports modules by name (_deprecation_utils); builds no layer
    "torchvision.models._api",  # get_model, get_weight: a builder or weights by name
    "torchvision.models.feature_extraction",  # rewrites a given network; builds none
)
# What Hydra itself builds from kdsweep's config (the hydra.main allow-list): the
# multirun callbacks (hydra.callbacks) and the log handlers' filters (hydra/job_logging).
HYDRA_TARGETS = (
    "kdsweep.multirun.callbacks.TutorialTable",
    "kdsweep.multirun.callbacks.SeedsTable",
    "kdsweep.core.secrets.MaskSecrets",
    "kdsweep.console.QuietConsole",
)


# --- the teacher's recipe, trainer, tracking, sweep context -------------------------------


@dataclass
class TeacherConf:
    # The teacher's network and the optimizer that trains it: ``_target_`` nodes, built
    # as the student's are (kdsweep.config.targets).
    model: Any = MISSING
    optimizer: Any = MISSING
    # A checkpoint to use instead of training one (written by kdsweep, or a plain
    # state_dict of the same network). null: train once and cache.
    checkpoint: str | None = None
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    # Precompute the frozen teacher's outputs once per data set (no augmentation only).
    cache_outputs: bool = True
    # The teacher's lr schedule: a _target_ node like trainer.scheduler's (null: none).
    scheduler: Any = None
    # The share of the training split's labels the teacher trains on: all (1.0) stands for
    # a model trained elsewhere; data.labelled_fraction's value gives it the student's.
    labelled_fraction: float = 1.0
    # A teacher not clearly above chance on validation stops the run (it would teach
    # nothing: kdsweep.training.teacher.weak_teacher_problem); true distils from it anyway.
    allow_weak: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.labelled_fraction <= 1.0:  # NaN fails the comparison too
            raise ValueError(
                f"teacher.labelled_fraction must be in (0, 1], got {self.labelled_fraction}"
            )
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
    # The lr schedule, stepped once per epoch: a _target_ node naming a torch LRScheduler
    # (conf/trainer/scheduler: none, step, cosine), built over the optimizer with the
    # run's epochs offered as T_max (kdsweep.training.optim); null: none.
    scheduler: Any = None

    def __post_init__(self) -> None:
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


# MLflow's limit on an experiment's name (its SQL stores refuse longer ones).
MAX_EXPERIMENT_NAME = 500


@dataclass
class TrackingConf:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "kdsweep"
    run_name: str | None = None

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ValueError("tracking.experiment must not be empty")
        if len(self.experiment) > MAX_EXPERIMENT_NAME:
            raise ValueError(
                f"tracking.experiment is {len(self.experiment)} characters long: MLflow takes"
                f" at most {MAX_EXPERIMENT_NAME}, shorten it"
            )


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


SCHEMAS: dict[str, tuple[type, ...]] = {
    "teacher": (TeacherConf,),
    "trainer": (TrainerConf,),
    "tracking": (TrackingConf,),
}


#: The groups whose options are kdsweep's own dataclasses: (their package, their base).
PARTS: dict[str, tuple[ModuleType, type]] = {
    "loss": (losses, losses.Objective),
    "data": (data, data.DataSet),
}


def target_defaults(package: ModuleType, cls: type) -> dict[str, Any]:
    """The ``_target_`` node that builds ``cls`` (as ``package.<Class>``) with its
    fields' defaults."""
    node: dict[str, Any] = {"_target_": f"{package.__name__}.{cls.__name__}"}
    for f in fields(cls):
        node[f.name] = f.default if f.default is not NO_DEFAULT else f.default_factory()  # type: ignore[misc]
    return node


def register_schemas() -> None:
    """Store every schema as ``schema/<group>/<ClassName>`` in Hydra's ConfigStore."""
    store = ConfigStore.instance()
    for group, classes in SCHEMAS.items():
        for cls in classes:
            store.store(group=f"schema/{group}", name=cls.__name__, node=cls, provider="kdsweep")
    for group, (package, base) in PARTS.items():
        for name in package.__all__:
            cls = getattr(package, name)
            if isinstance(cls, type) and issubclass(cls, base) and cls is not base:
                node = target_defaults(package, cls)
                store.store(group=f"schema/{group}", name=name, node=node, provider="kdsweep")


register_schemas()
