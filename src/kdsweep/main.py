"""The command line: ``kdsweep`` and ``python -m kdsweep`` are this one @hydra.main.

It returns the run's objective (validation accuracy) so Hydra sweepers can optimize it.
User errors print one line and exit 2 in a single run; inside a sweep they propagate, so
the sweeper records the trial as failed and goes on.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException, ValidationError

from kdsweep.config.folder import config_dir
from kdsweep.config.schema import HYDRA_TARGETS
from kdsweep.config.validation import validate
from kdsweep.core.boundary import command
from kdsweep.core.errors import ConfigError, KdsweepError, NonFiniteLossError, first_line
from kdsweep.core.files import directory_problem
from kdsweep.core.signals import cooperative

log = logging.getLogger("kdsweep")


# Hydra 1.4 asks the call site which targets config may name for what Hydra itself builds
# (callbacks, log filters); kdsweep's parts are built under their own list
# (kdsweep.config.targets), and plugins carry theirs.
@hydra.main(config_path=config_dir(), config_name="config", execution_whitelist=HYDRA_TARGETS)
def hydra_main(cfg: DictConfig) -> float:
    """One run. Inside a sweep its errors propagate to the sweeper, which records the
    trial as failed and goes on; in a single run a user error is handed to main(), past
    Hydra (which would print "Error executing job ..." above the one line)."""
    hydra_cfg = HydraConfig.get()
    try:
        # A job the sweeper's launcher runs in this process is kdsweep's code: it checks
        # for a signal between its batches, never inside a write.
        with cooperative():
            settings = validate(cfg)  # once, before torch and MLflow: a typo fails at once
            from kdsweep.run.experiment import run
            from kdsweep.sweep.trial_hooks import trial_hooks

            result = run(
                cfg, trial_hooks(cfg), output_dir=hydra_cfg.runtime.output_dir, settings=settings
            )
    except (KdsweepError, NonFiniteLossError) as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        _single_run_error.append(exc)
        return float("nan")
    return result.objective


_single_run_error: list[BaseException] = []  # hydra_main's error, for main() to raise


INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")


def unusable_output_dir(argv: Sequence[str]) -> str | None:
    """Hydra creates hydra.run.dir (hydra.sweep.dir with -m) before any kdsweep code runs,
    and one it cannot create ends in a traceback; so it is checked here first: the
    directory given on the command line, else the working directory (Hydra's default)."""
    if any(arg.split("=")[0] in INFO_FLAGS for arg in argv):
        return None
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    values = [arg.split("=", 1)[1].strip("'\"") for arg in argv if arg.startswith(f"{key}=")]
    given = values[-1] if values else ""
    where = f"{key}={given}" if given else f"the working directory ({key})"
    problem = directory_problem(given.split("${")[0] or ".", min_free=0)
    if problem:
        return f"{where} cannot be created ({problem}): give {key} a writable directory"
    return None


def composition_error(exc: BaseException) -> str | None:
    """The one line for a command line Hydra refused while composing (an unknown option
    or key, a wrong type, a choice outside its Enum), or None for an error that is not
    Hydra's."""
    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    cause = exc.__cause__
    if getattr(cause, "full_key", None) == "hydra.sweeper.pruner.name":
        # Before the pruner was a _target_ node, it was picked by this key.
        return (
            "hydra.sweeper.pruner.name is gone: pick the pruner with"
            " hydra/sweeper/pruner=none|median|hyperband|successive_halving"
        )
    if isinstance(cause, ValidationError):  # a value the schemas refuse
        key = getattr(cause, "full_key", None)
        message = first_line(cause)
        return f"{key}: {message}" if key else message
    message = first_line(exc).rstrip(".")
    if isinstance(exc, MissingConfigException) and exc.options:
        return f"{message}: pick one of {', '.join(sorted(exc.options))}"
    if message.startswith("Could not override"):
        # Hydra's own advice (+key=value) appends a key kdsweep's schemas then refuse.
        return f"{message}: no such key (kdsweep --cfg job shows the keys and their values)"
    return message


def _interrupted() -> str:
    """What a signal left behind, for the boundary's one line."""
    if any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        return (
            "the sweep's trials in flight were marked FAIL and their MLflow runs ended KILLED:"
            " rerun the same command to resume"
        )
    return "the MLflow run (if one was started) was ended KILLED"


@command("kdsweep", interrupted=_interrupted)
def main() -> None:
    problem = unusable_output_dir(sys.argv[1:])
    if problem:
        raise ConfigError(problem)
    # Hydra prints composition errors itself (several lines, exit 1); with HYDRA_FULL_ERROR
    # it raises them instead, so that they can be reported in one line here. A user who
    # set HYDRA_FULL_ERROR keeps Hydra's full report.
    user_asked_full_errors = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    _single_run_error.clear()
    try:
        hydra_main()
        if _single_run_error:
            raise _single_run_error.pop()
    except (HydraException, OmegaConfBaseException) as exc:
        # A KdsweepError (a plain multirun raises its failed job's) passes to the boundary.
        line = None if user_asked_full_errors else composition_error(exc)
        if line is None:
            raise
        raise ConfigError(line) from exc
    finally:
        # Leave the environment as it was: a caller that runs main() in-process (tests, a
        # notebook) must not inherit HYDRA_FULL_ERROR as if its user had asked for it.
        if not user_asked_full_errors:
            os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
