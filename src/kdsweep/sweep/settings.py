"""What the sweeper was asked to do: ``hydra.sweeper``'s options declared and checked
once, in ``SweepSettings`` (the Hydra plugin registers this dataclass as its config
schema), and the search space its ``params`` and the command line define."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING

from kdsweep.core.errors import KdsweepError, first_line
from kdsweep.core.secrets import mask_secrets
from kdsweep.core.stores import storage_file
from kdsweep.sweep.worker_slots import AUTO

if TYPE_CHECKING:  # optuna is imported when a sweep starts, not at plugin discovery
    from optuna.distributions import BaseDistribution

DEFAULT_STORAGE = "sqlite:///optuna.db"
DEFAULT_STUDY_NAME = "kdsweep"
NOP_PRUNER = "optuna.pruners.NopPruner"
#: Optuna stores study names in a 512-character column; the report folder and the parent
#: run's name are derived from it too.
MAX_STUDY_NAME = 200
#: The companion study of ``<study>`` (its CE baseline and confirmation runs) is
#: ``<study>:confirm`` (kdsweep.sweep.confirm): no sweep may take that name itself.
CONFIRM_SUFFIX = ":confirm"
#: numpy's and torch's seeds: 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: The most runs one stage of a sweep may plan (the search's n_trials; the confirmation's
#: arms x seeds). More is a typo (confirm.seeds=1000000), not a study: refused at start-up
#: with the figure, before minutes of queueing and months of training.
MAX_PLANNED_RUNS = 10_000
#: The confirmation's arms besides the top_k: the ablation, the reference, CE default.
EXTRA_ARMS = 3


def in_memory(url: str) -> bool:
    """Whether a storage URL names an in-memory database (``sqlite://``,
    ``sqlite:///:memory:``), which no other process can open."""
    return url.startswith("sqlite") and storage_file(url) is None


def storage_url(option: Any) -> str:
    """The storage ``hydra.sweeper.storage`` names, for the sweeper and its jobs alike: null
    is the default file, never an in-memory study (the jobs of a parallel launcher run in
    other processes, and a rerun resumes from it); an empty text stays empty (refused)."""
    return DEFAULT_STORAGE if option is None else str(option)


@dataclass
class ConfirmSettings:
    """``hydra.sweeper.confirm``: after the search, retrain the top_k configs, the best
    one's recipe without the teacher (the ablation) and the references with ``seeds``
    fresh seeds, paired across arms (kdsweep.sweep.confirm). The search configs switch it
    on. Bounds (checked by ``SweepSettings.check``): seeds x (top_k + 3) arms <= 10,000
    runs, like n_trials; first_seed + seeds <= 2**32 - 1."""

    enabled: bool = False
    seeds: int = 5
    top_k: int = 3
    # Confirmation seeds are first_seed, first_seed + 1, ... (never the search's seed).
    first_seed: int = 1000
    # After a search with costs: how many points of its front are confirmed (each beside
    # its ablation), spread over the costs (kdsweep.sweep.arms.pick_front).
    front_k: int = 5


@dataclass
class FrontSettings:
    """``hydra.sweeper.front``: how a search with costs is read. The report's first
    sentence names the smallest confirmed student whose confirmed val accuracy is within
    ``tolerance`` points of the best confirmed one (kdsweep.results.front)."""

    tolerance: float = 1.0


@dataclass
class SweepSettings:
    """The sweeper's options, less the sampler: hydra-optuna-sweeper's own (direction,
    storage, study_name, n_trials, n_jobs, max_failure_rate, params, custom_search_space)
    plus what the official sweeper lacks: a pruner, enqueued first trials, baselines, a
    report, heartbeats so a resumed or shared study can tell dead trials from running
    ones, and the confirmation stage. Hydra types them from this declaration
    (hydra_plugins.kdsweep_sweeper.config); ``check`` refuses the values no sweep can use.
    Not frozen: OmegaConf makes a frozen dataclass's node read-only, and the command line
    overrides these."""

    # Any: hydra-optuna-sweeper's Direction enum or a list of them arrive here too, and
    # check() names the fix rather than OmegaConf a type.
    direction: Any = "maximize"
    # A study persists by default, in the directory kdsweep runs from: rerunning the same
    # command continues it. journal:PATH selects Optuna's journal file storage; null picks
    # the default, an empty text is refused (storage= with nothing after it is a mistake).
    storage: Any | None = DEFAULT_STORAGE
    study_name: str | None = DEFAULT_STUDY_NAME  # null: the default
    n_trials: int = 20
    # Trials are launched n_jobs at a time (in parallel with the joblib launcher).
    n_jobs: int = 1
    # Worker processes the command starts on the study, each a sweep loop of its own
    # pinned to a device (kdsweep.sweep.workers): auto is one per visible GPU times
    # workers_per_device, or on CPU one per trainer.threads cores; 1 is one loop here.
    workers: Any = 1
    workers_per_device: int = 1
    # Failed trials tolerated, as a fraction of n_trials, before the sweep stops.
    max_failure_rate: float = 0.25
    params: dict[str, str] | None = None
    # A _target_ node like the sampler, picked with hydra/sweeper/pruner=NAME.
    pruner: Any = MISSING
    # Parameter sets tried first, once per study (e.g. the tutorial's defaults).
    enqueue_trials: list[dict[str, Any]] = field(default_factory=list)
    # Train a CE-only student once per study, for the report's baseline row.
    baselines: bool = True
    # Where the report goes: <report_dir>/<study name>/
    report_dir: str = "multirun_reports"
    # A RUNNING trial whose sweeper has not beaten for grace_period seconds is dead
    # (Optuna's RDB heartbeat; on this host a dead sweeper is known at once by its pid).
    heartbeat_interval: float = 10.0
    grace_period: float = 120.0
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    # What to minimize beside the objective (kdsweep.nets.costs: params, macs,
    # latency_ms), each an objective of its own after it: [] is a single-objective study.
    costs: list[str] = field(default_factory=list)
    front: FrontSettings = field(default_factory=FrontSettings)
    # A study records the settings that define it (config, search space, pruner); a rerun
    # with other settings is refused unless this is true (kdsweep.sweep.drift).
    allow_changed_settings: bool = False
    # hydra-optuna-sweeper's option, declared so that it is refused with a reason.
    custom_search_space: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SweepSettings:
        """From the keyword arguments Hydra instantiates the sweeper with (its config
        node's values). An unknown option is a TypeError, as for a call."""
        values = dict(options)
        # hydra-optuna-sweeper's Direction enum -> its name; anything else as text.
        direction = values.pop("direction", None)
        values["direction"] = str(getattr(direction, "name", direction))
        # null picks the default; an empty text is refused by check() (storage= typed
        # with nothing after it is a mistake, not a request for the default).
        storage, study_name = values.pop("storage", None), values.pop("study_name", None)
        values["storage"] = storage_url(storage)
        values["study_name"] = DEFAULT_STUDY_NAME if study_name is None else str(study_name)
        values["params"] = {str(k): v for k, v in (values.pop("params", None) or {}).items()}
        values["pruner"] = dict(values.pop("pruner", None) or {})
        values["enqueue_trials"] = [dict(t) for t in values.pop("enqueue_trials", None) or []]
        values["confirm"] = ConfirmSettings(**(values.pop("confirm", None) or {}))
        values["costs"] = [str(name) for name in values.pop("costs", None) or []]
        values["front"] = FrontSettings(**(values.pop("front", None) or {}))
        return cls(**values)

    def check(self) -> None:
        """Raise KdsweepError, naming the option to fix, for a value no sweep can use."""
        if self.custom_search_space:
            raise KdsweepError("hydra.sweeper.custom_search_space is not supported by kdsweep")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise KdsweepError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise KdsweepError("hydra.sweeper.max_failure_rate must be in [0, 1]")
        if self.direction not in ("maximize", "minimize"):
            raise KdsweepError("hydra.sweeper.direction must be maximize or minimize")
        self._check_costs()
        if self.confirm.seeds < 0 or self.confirm.top_k < 1:
            raise KdsweepError(
                "hydra.sweeper.confirm.seeds must be >= 0 (0: no confirmation)"
                " and confirm.top_k >= 1"
            )
        if self.confirm.front_k < 1:
            raise KdsweepError(
                f"hydra.sweeper.confirm.front_k={self.confirm.front_k}: give the number of"
                " front points to confirm, >= 1 (confirm.enabled=false skips the confirmation)"
            )
        tolerance = self.front.tolerance
        number = isinstance(tolerance, int | float) and not isinstance(tolerance, bool)
        if not number or not math.isfinite(tolerance) or tolerance < 0:
            raise KdsweepError(
                f"hydra.sweeper.front.tolerance={tolerance} must be a finite number >= 0"
                " (accuracy points below the best confirmed val accuracy; default 1.0)"
            )
        if not self.storage.strip():
            raise KdsweepError(
                "hydra.sweeper.storage is empty: give a URL (sqlite:///optuna.db,"
                " journal:optuna.journal.log, postgresql://user@host/db) or leave it unset"
            )
        if not self.study_name.strip() or len(self.study_name) > MAX_STUDY_NAME:
            raise KdsweepError(
                f"hydra.sweeper.study_name must be 1 to {MAX_STUDY_NAME} characters, got"
                f" {len(self.study_name)}: give a shorter name"
            )
        self._check_study_name()
        if not 0 <= self.confirm.first_seed <= MAX_SEED:
            raise KdsweepError(f"hydra.sweeper.confirm.first_seed must be in [0, {MAX_SEED}]")
        self._check_planned_work()
        self._check_liveness()
        self._check_workers()

    def _check_costs(self) -> None:
        """Each cost one kdsweep measures, named once (each is an objective of the study)."""
        if not self.costs:
            return  # a single-objective sweep starts without importing torch here
        from kdsweep.nets.costs import COSTS  # torch: imported when a sweep with costs starts

        known = ", ".join(COSTS)
        for position, name in enumerate(self.costs):
            if name not in COSTS:
                raise KdsweepError(f"hydra.sweeper.costs: unknown cost {name!r}: pick from {known}")
            if name in self.costs[:position]:
                raise KdsweepError(f"hydra.sweeper.costs lists {name} twice: name each cost once")

    @property
    def directions(self) -> list[str]:
        """The study's directions: the objective's, then one minimized per cost."""
        return [self.direction, *["minimize"] * len(self.costs)]

    def _check_study_name(self) -> None:
        """A name no other study uses by construction, that each job reads back as it is."""
        name = self.study_name
        if name.endswith(CONFIRM_SUFFIX):
            raise KdsweepError(
                f"hydra.sweeper.study_name={name} ends with {CONFIRM_SUFFIX}, which names a"
                " study's confirmation companion: give another name"
            )
        # Each job learns its study as the override sweep.study_name=NAME: a name Hydra
        # reads as something else (a,b is a choice; ${x} an interpolation) is refused.
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        try:
            parsed = OverridesParser.create().parse_override(f"sweep.study_name={name}")
            plain = not parsed.is_sweep_override() and parsed.value() == name
        except HydraException:  # the parser's OverrideParseException: not an override
            plain = False
        if not plain or "${" in name:
            raise KdsweepError(
                f"hydra.sweeper.study_name={name!r} is not a plain name for a Hydra override:"
                " use letters, digits and - _ . / : only"
            )

    def _check_planned_work(self) -> None:
        """No stage may plan more than MAX_PLANNED_RUNS runs, nor seeds past MAX_SEED."""
        if self.n_trials > MAX_PLANNED_RUNS:
            raise KdsweepError(
                f"hydra.sweeper.n_trials={self.n_trials} plans more than {MAX_PLANNED_RUNS}"
                " trials: lower it (a rerun continues the study)"
            )
        if not self.confirm.enabled:
            return
        seeds, top_k = self.confirm.seeds, self.confirm.top_k
        arms = min(top_k, self.n_trials) + EXTRA_ARMS
        knob = "confirm.top_k"
        if self.costs:  # a front point and its ablation each (kdsweep.sweep.arms)
            arms, knob = 2 * min(self.confirm.front_k, self.n_trials), "confirm.front_k"
        if arms * seeds > MAX_PLANNED_RUNS:
            raise KdsweepError(
                f"hydra.sweeper.confirm.seeds={seeds} plans up to {arms * seeds} confirmation"
                f" runs ({arms} arms x {seeds} seeds), more than {MAX_PLANNED_RUNS}: lower"
                f" confirm.seeds or {knob}"
            )
        # One seed more than asked: the search's own seed is skipped if it is in the range.
        first_seed = self.confirm.first_seed
        if seeds and first_seed + seeds > MAX_SEED:
            raise KdsweepError(
                f"hydra.sweeper.confirm.first_seed={first_seed} with confirm.seeds={seeds}"
                f" runs past the largest seed {MAX_SEED}: lower confirm.first_seed"
            )

    def _check_liveness(self) -> None:
        """A live trial must never look dead: its heartbeat must fit twice in the grace
        period, or a second worker fails a trial that is still running."""
        beat, grace = self.heartbeat_interval, self.grace_period
        if not (math.isfinite(beat) and beat > 0):
            raise KdsweepError(f"hydra.sweeper.heartbeat_interval must be > 0 seconds, got {beat}")
        if not (math.isfinite(grace) and grace >= 2 * beat):
            raise KdsweepError(
                f"hydra.sweeper.grace_period={grace} must be at least twice"
                f" heartbeat_interval={beat}, or live trials look dead: raise grace_period"
            )

    def _check_workers(self) -> None:
        """workers: auto or a count; several need a storage other processes can open."""
        workers = self.workers
        counted = isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1
        if not (counted or workers == AUTO):
            raise KdsweepError(
                f"hydra.sweeper.workers={workers} is not a worker count: give auto (one per"
                " GPU, or per trainer.threads cores) or a number >= 1"
            )
        if self.workers_per_device < 1:
            raise KdsweepError(
                f"hydra.sweeper.workers_per_device={self.workers_per_device} must be >= 1"
                " (the workers each GPU runs at once)"
            )
        if workers != 1 and in_memory(self.storage):
            raise KdsweepError(
                f"hydra.sweeper.storage={self.storage} is in this process's memory: the"
                f" workers={workers} processes cannot share it; give a file"
                " (sqlite:///optuna.db, journal:optuna.journal.log) or a server"
            )

    @property
    def pruner_name(self) -> str:
        """The pruner's class name (MedianPruner), or "none"."""
        target = str(self.pruner.get("_target_") or "")
        return target.rpartition(".")[2] if target and target != NOP_PRUNER else "none"

    def too_many_failures(self, failed: int, launched: int) -> str | None:
        """The line that stops a sweep once more of its search trials failed (of
        ``launched``) than ``max_failure_rate`` allows, or None while they are within it."""
        if failed <= self.max_failure_rate * self.n_trials:
            return None
        return (
            f"{failed} of {launched} trials failed, more than"
            f" max_failure_rate={self.max_failure_rate} of n_trials={self.n_trials}:"
            " see the trials' errors in the report or MLflow (tag 'error')"
        )

    def confirmation_seeds(self, search_seed: int | None) -> list[int]:
        """The fresh seeds of the confirmation stage ([] when it is off): consecutive
        from confirm.first_seed, skipping the search's own seed."""
        if not self.confirm.enabled:
            return []
        wanted, seed, seeds = self.confirm.seeds, self.confirm.first_seed, []
        while len(seeds) < wanted:
            if seed != search_seed:
                seeds.append(seed)
            seed += 1
        return seeds

    def describe(self, sampler: Any, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        """What the study records about itself (its user attributes, the parent run's
        params); the storage URL with its password masked."""

        described = {
            "study_name": self.study_name,
            "sampler": type(sampler).__name__,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "pruner": self.pruner_name,
            "storage": mask_secrets(self.storage),
            # +model.width (a key the trials append) is the key model.width; MLflow's
            # param names take no "+".
            "search_space": {
                name.lstrip("+"): mask_secrets(str(dist)) for name, dist in space.items()
            },
        }
        if self.costs:  # a single-objective study's record stays as it was
            described["costs"] = list(self.costs)
        return described


@dataclass(frozen=True)
class SearchSpace:
    """The distributions Optuna samples, and the overrides every trial shares."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]


def search_space(params: Mapping[str, Any], arguments: list[str]) -> SearchSpace:
    """``hydra.sweeper.params`` then the command line's overrides (later ones win): sweep
    overrides (interval, choice, range, tag(log, ...)) become distributions, the others
    are passed to every trial as they are."""
    sweeper_params = [f"{name}={value}" for name, value in params.items()]
    try:
        space, fixed, fixed_overrides = _parse_overrides(sweeper_params + arguments)
    except ValueError as exc:  # an empty or reversed range, log of a range through 0...
        raise KdsweepError(
            f"search space: {first_line(exc)}: give each interval/range low < high"
            " (and low > 0 under tag(log, ...)) in hydra.sweeper.params or the command line"
        ) from None
    for name, dist in space.items():
        bounds = [getattr(dist, "low", 0.0), getattr(dist, "high", 0.0)]
        if not all(math.isfinite(float(b)) for b in bounds):
            raise KdsweepError(f"search space: {name} has a bound that is not a finite number")
    for name in fixed:
        space.pop(name, None)
    return SearchSpace(space, [f"{k}={v}" for k, v in fixed.items()] + list(fixed_overrides))


def _parse_overrides(
    overrides: list[str],
) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    # Private API, kept to this one function: hydra-optuna-sweeper has no public parser
    # from overrides to Optuna distributions, and its private one (checked against
    # hydra-optuna-sweeper 1.4.0rc3) handles range steps, shuffles and casts that a copy
    # would have to follow release by release. Returns (distributions, fixed values,
    # delete overrides).
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    return create_params_from_overrides(overrides)


def check_enqueued(space: SearchSpace, enqueue_trials: list[dict[str, Any]]) -> None:
    """Each enqueued trial's value of a searched choice() must be one of its choices: one
    it leaves out fails the reference trial when it is asked. (Optuna takes a number
    outside an interval, with a warning: the NaN tests enqueue lr=1e8 on purpose.)"""
    from optuna.distributions import CategoricalDistribution

    for trial in enqueue_trials:
        for name, value in trial.items():
            dist = space.distributions.get(name)
            if not isinstance(dist, CategoricalDistribution):
                continue
            try:
                dist.to_internal_repr(value)  # the index of the choice; ValueError if absent
            except (ValueError, TypeError):
                raise KdsweepError(
                    f"hydra.sweeper.enqueue_trials gives {name}={value}, not one of its choices"
                    f" {list(dist.choices)}: add it to the choice, or change enqueue_trials"
                ) from None
