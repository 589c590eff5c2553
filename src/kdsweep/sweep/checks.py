"""A sweep's start-up checks, before any study, run or file exists: the sweeper's settings,
the search space (every group choice and each end of a range must be a valid setting, and
the loss must stay finite there), the sampler, the config, the device, the study's
storage and the tracking store. Each refusal is one line (KdsweepError)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdsweep.config.validation import Settings, allowed_targets, plain_config, validate
from kdsweep.core.errors import ConfigError, KdsweepError, first_line
from kdsweep.sweep.settings import SearchSpace, SweepSettings, check_enqueued
from kdsweep.sweep.studies import build_pruner, check_storage_kind


def check_sweep(
    config: DictConfig,
    sweep_settings: SweepSettings,
    space: SearchSpace,
    compose: Callable[[list[str]], DictConfig],
    make_sampler: Callable[[int], Any],
) -> None:
    """Before anything is written: the settings, the search space, the config (``compose``
    gives a job's config from its overrides, ``make_sampler`` builds the sampler)."""
    sweep_settings.check()
    choices = config.hydra.runtime.choices
    for name in space.distributions:
        if _appended(name):  # +model.width=choice(...): each trial adds the key
            continue
        if name not in choices and OmegaConf.select(config, name) is None:
            raise KdsweepError(
                f"search parameter {name} is not in the config (loss={choices.get('loss')}):"
                " fix hydra.sweeper.params or pick a matching group"
            )
    settings = validate(config)  # the loss's dry run included
    tracking = settings.tracking
    # First of the slow checks: a storage server that does not answer costs its connect
    # timeout, and the bounds and dry runs below seconds more.
    check_storage_kind(sweep_settings.storage, tracking.uri if tracking.enabled else None)
    problem = pair_problem(settings)
    if problem:
        raise KdsweepError(problem)
    check_enqueued(space, sweep_settings.enqueue_trials)
    _check_workers(config, sweep_settings)
    _check_choices(compose, space, choices)
    _check_bounds(config, space, choices)
    _check_sampler(make_sampler)
    _check_pruner(sweep_settings.pruner, allowed_targets(config), sweep_settings.costs)
    if settings.trainer.device != "auto":
        from kdsweep.training.devices import check_device

        check_device(settings.trainer.device)
    # The tracking store must answer (a server) and be whole (a SQLite file) before
    # the study exists: an unreachable MLflow must not leave an empty study behind.
    from kdsweep.run.tracking import RunTracker

    RunTracker(settings.tracking, "sweep").check()


def _appended(name: str) -> bool:
    """A searched key the trials append (``+model.width``): absent from the config."""
    return name.startswith("+")


def _check_bounds(config: DictConfig, space: SearchSpace, groups: Any) -> None:
    """Each end of a searched range (and each choice) must be a valid setting:
    ``optimizer.lr=interval(0, 0.1)`` would fail the trials that draw near 0."""
    base = plain_config(config)
    for name, dist in space.distributions.items():
        if name in groups:  # a config group (optimizer=choice(adam, sgd_nesterov))
            continue
        values = getattr(dist, "choices", None) or (dist.low, dist.high)  # type: ignore[attr-defined]
        # +model.width=choice(...) appends a key the options leave out: the key is model.width.
        key = name.lstrip("+")
        for value in values:
            trial = OmegaConf.create(base)
            OmegaConf.update(trial, key, value, force_add=True)
            try:
                settings = validate(trial)  # the loss's dry run included: a formula that overflows
                if key.startswith("model."):  # the student's own argument (its width): built
                    # Deferred: torch's import (seconds) would delay every sweep's start.
                    from kdsweep.data import load_splits
                    from kdsweep.run.plan import network

                    network(settings.model, load_splits(settings.data))
            except ConfigError as exc:
                raise KdsweepError(
                    f"search space {name}={dist}: at {value}, {exc}: narrow the range"
                ) from exc


#: Group choices are checked together (every model with every loss) up to this many
#: combinations; beyond it, each choice with the others' first.
MAX_COMBINATIONS = 64


def _check_choices(
    compose: Callable[[list[str]], DictConfig], space: SearchSpace, groups: Any
) -> None:
    """Each choice of a searched config group (model=choice(light, modified)), composed
    as its trials will be, must be a valid config in which every searched key exists:
    a missing option or a loss the student cannot serve would fail its trials."""
    searched = {n: d for n, d in space.distributions.items() if n in groups}
    if not searched:
        return
    names = list(searched)
    options = [list(searched[n].choices) for n in names]  # type: ignore[attr-defined]
    combinations: Any = itertools.product(*options)
    if math.prod(len(o) for o in options) > MAX_COMBINATIONS:
        combinations = [
            [value if i == j else opts[0] for j, opts in enumerate(options)]
            for i, group in enumerate(options)
            for value in group
        ]
    others = [n for n in space.distributions if n not in groups and not _appended(n)]
    for combination in combinations:
        picked = [f"{n}={v}" for n, v in zip(names, combination, strict=True)]
        where = f"search space {', '.join(picked)}"
        try:
            config = compose([*space.fixed, *picked])
            settings = validate(config)
        except (HydraException, OmegaConfBaseException, KdsweepError) as exc:  # no such option
            raise KdsweepError(f"{where}: {first_line(exc)}: remove the choice") from exc
        for name in others:
            if OmegaConf.select(config, name) is None:
                raise KdsweepError(
                    f"{where}: search parameter {name} is not in the config: remove the"
                    " choice or fix hydra.sweeper.params"
                )
        problem = pair_problem(settings)
        if problem:
            raise KdsweepError(f"{where}: {problem}: remove the choice")


def pair_problem(settings: Settings) -> str | None:
    """Why the student and the teacher cannot be distilled with this loss, found as a
    trial would find it, before any teacher trains: both networks built (untrained), their
    layers hooked, and the loss run once on two images of the data through both (stages
    AT cannot pair, hidden widths the cosine loss cannot align, a forward that fails).
    The message names the fix. None if they train together, or the loss has no teacher."""
    import torch

    from kdsweep.data import load_splits
    from kdsweep.run.plan import hooked, network, teacher_probe
    from kdsweep.training.batches import step_inputs, student_forward

    loss = settings.loss
    if not loss.uses_teacher:
        return None
    pair = f"model={settings.model.name}, teacher={settings.teacher_model.name}"
    with torch.random.fork_rng(devices=[]):  # building the networks draws from it
        try:
            # Loaded once per process: in-process trials reuse it (kdsweep.data.load_splits).
            data = load_splits(settings.data)
            x, y = data.train_x[:2], data.train_y[:2]
            student_taps, teacher_taps = loss.taps()
            student = hooked(network(settings.model, data), student_taps, "student", settings)
            # The run's own probe (kdsweep.run.plan), on the CPU as the data is here.
            teacher, _ = teacher_probe(settings, student, teacher_taps, data, torch.device("cpu"))
            if teacher is None:  # only for a loss without a teacher, returned above
                return None
            # The loss itself, feature maps included (a run's dry step leaves those to
            # the shapes its attach checks).
            maps = loss.needs_student_features or loss.needs_teacher_features
            taught = teacher.with_features(torch.arange(len(y)), x, loss.needs_teacher_features)
            loss(step_inputs(y, student_forward(student, maps)(x), taught, 1))
        except KdsweepError as exc:  # the layers' and widths' own lines name the fix
            return str(exc)
        except Exception as exc:
            return (
                f"loss={loss.name} with {pair} fails on a dry batch ({type(exc).__name__}:"
                f" {first_line(exc)}): pick a matching model and teacher, or name their"
                " layers in loss.student_layers and loss.teacher_layers"
            )
    return None


def _check_sampler(make_sampler: Callable[[int], Any]) -> None:
    """The sampler is built once here, so a _target_ outside the allowed samplers or a
    bad sampler option is one line at start-up."""
    import optuna

    try:
        sampler = make_sampler(0)
    except Exception as exc:
        raise KdsweepError(
            f"hydra.sweeper.sampler cannot be built ({first_line(exc)}):"
            " use one of optuna.samplers.* (e.g. TPESampler) with its options"
        ) from exc
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise KdsweepError(
            f"hydra.sweeper.sampler built a {type(sampler).__name__}, not an Optuna sampler:"
            " use one of optuna.samplers.* (e.g. TPESampler) with its options"
        )


def _check_pruner(
    node: dict[str, Any], allowed: tuple[str, ...], costs: list[str] | None = None
) -> None:
    """The pruner is built once here and tried on a few reports of an in-memory study, so
    options its constructor accepts but its first decision fails on (HyperbandPruner's
    reduction_factor=0) are one line at start-up, not a failed trial. With costs, kdsweep
    prunes (kdsweep.sweep.cost_pruning): a pruner keeping rungs of its own cannot."""
    import optuna

    from kdsweep.sweep.cost_pruning import RUNG_PRUNERS

    options = ", ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
    try:
        pruner = build_pruner(node, allowed)
        if costs and isinstance(pruner, RUNG_PRUNERS):
            raise KdsweepError(
                f"hydra.sweeper.costs={costs} with {type(pruner).__name__}: its rungs cannot"
                " be kept among the trials that cost no more than each other; use"
                " hydra/sweeper/pruner=median (or none)"
            )
        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created..."
        try:
            study = optuna.create_study(pruner=pruner, direction="maximize")
            for value in (0.5, 0.7, 0.1):
                trial = study.ask()
                for step in (0, 1, 2):
                    trial.report(value, step)
                    trial.should_prune()
                study.tell(trial, value)
        finally:
            optuna.logging.set_verbosity(previous)
    except KdsweepError:
        raise
    except Exception as exc:
        target = str(node.get("_target_", "")).rpartition(".")[2]
        raise KdsweepError(
            f"hydra.sweeper.pruner ({target}{f' with {options}' if options else ''}) cannot"
            f" prune ({first_line(exc)}): fix its options, or pick"
            " another with hydra/sweeper/pruner=none|median|hyperband|successive_halving"
        ) from exc


def _check_workers(config: DictConfig, settings: SweepSettings) -> None:
    """Several workers each launch their trials one at a time, in their own process, with
    Hydra's basic launcher: a launcher that already runs jobs in other processes or on
    other machines (joblib, submitit) would stack a second fan-out on the first."""
    if settings.workers == 1:
        return
    launcher = config.hydra.runtime.choices.get("hydra/launcher")
    if launcher != "basic":
        raise KdsweepError(
            f"hydra.sweeper.workers={settings.workers} with hydra/launcher={launcher}: that"
            " launcher already runs the jobs elsewhere; drop hydra/launcher (each worker"
            " launches its own trials), or keep it with hydra.sweeper.workers=1"
        )
    if settings.n_jobs != 1:
        raise KdsweepError(
            f"hydra.sweeper.workers={settings.workers} runs one trial per worker at a time:"
            f" leave hydra.sweeper.n_jobs at 1 (got {settings.n_jobs})"
        )
