"""The command line: ``kdsweep`` and ``python -m kdsweep`` are this one @hydra.main.

It returns the run's objective (validation accuracy) so Hydra sweepers can optimize it.
User errors print one line and exit 2 in a single run; inside a sweep they propagate, so
the sweeper records the trial as failed and goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdsweep.config.folder import config_dir
from kdsweep.config.schema import HYDRA_TARGETS
from kdsweep.config.validation import validate
from kdsweep.core.errors import (
    Interrupted,
    KdsweepError,
    NonFiniteLossError,
    interrupt_name,
    report_error,
)
from kdsweep.core.secrets import mask_secrets
from kdsweep.core.signals import cooperative, install_signal_handlers

log = logging.getLogger("kdsweep")


# Hydra 1.4 asks the call site which targets config may name for what Hydra itself builds
# (callbacks, log filters); kdsweep's parts are built under their own list
# (kdsweep.config.targets), and plugins carry theirs.
@hydra.main(config_path=config_dir(), config_name="config", execution_whitelist=HYDRA_TARGETS)
def hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
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
        if in_sweep:
            raise
        report_error(exc)
        raise SystemExit(2 if isinstance(exc, KdsweepError) else 1) from None
    return result.objective


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
    probe = Path(given.split("${")[0] or ".").expanduser().absolute()
    while not probe.exists() and probe != probe.parent:  # the nearest existing ancestor
        probe = probe.parent
    where = f"{key}={given}" if given else f"the working directory ({key})"
    if not probe.is_dir():
        return f"{where} cannot be created ({probe} is a file): give {key} a writable directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{where} cannot be created ({probe} is not writable): give {key} another directory"
    return None


def composition_error(exc: BaseException) -> str | None:
    """The one line for a value Hydra refused while composing against the schemas (a
    wrong type, a choice outside its Enum), or None for Hydra's other errors (an unknown
    option or key), which are reported as Hydra reports them."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    cause = exc.__cause__
    if getattr(cause, "full_key", None) == "hydra.sweeper.pruner.name":
        # Before the pruner was a _target_ node, it was picked by this key.
        return (
            "hydra.sweeper.pruner.name is gone: pick the pruner with"
            " hydra/sweeper/pruner=none|median|hyperband|successive_halving"
        )
    if not isinstance(exc, ConfigCompositionException) or not isinstance(cause, ValidationError):
        return None
    key = getattr(cause, "full_key", None)
    message = str(cause).splitlines()[0]
    return f"{key}: {message}" if key else message


def _is_hydra_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(exc, (HydraException, OmegaConfBaseException))


def report_interrupt(exc: BaseException, multirun: bool) -> int:
    """The one line for an interrupted run or sweep; returns the exit code."""
    what = (
        "the sweep's trials in flight were marked FAIL and their MLflow runs ended KILLED:"
        " rerun the same command to resume"
        if multirun
        else "the MLflow run (if one was started) was ended KILLED"
    )
    print(f"kdsweep: interrupted by {interrupt_name(exc)}: {what}", file=sys.stderr)
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def main() -> None:
    problem = unusable_output_dir(sys.argv[1:])
    if problem:
        print(f"kdsweep: error: {mask_secrets(problem)}", file=sys.stderr)
        raise SystemExit(2)
    # Hydra prints composition errors itself (several lines, exit 1); with HYDRA_FULL_ERROR
    # it raises them instead, so that a refused value can be reported in one line here. A
    # user who set HYDRA_FULL_ERROR keeps Hydra's full report.
    user_asked_full_errors = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    install_signal_handlers()
    try:
        hydra_main()
    except KeyboardInterrupt as exc:
        multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
        raise SystemExit(report_interrupt(exc, multirun)) from None
    except (KdsweepError, NonFiniteLossError) as exc:
        # A job of a plain multirun failed: Hydra's basic sweeper runs every job, names the
        # failed one's overrides, then raises its error here. One line, as for a run.
        if user_asked_full_errors:
            raise
        report_error(exc)
        raise SystemExit(2 if isinstance(exc, KdsweepError) else 1) from None
    except Exception as exc:
        if user_asked_full_errors or not _is_hydra_error(exc):
            raise
        line = composition_error(exc)
        if line is not None:
            report_error(KdsweepError(line))
            raise SystemExit(2) from None
        # What Hydra prints without HYDRA_FULL_ERROR.
        print(mask_secrets(str(exc)), file=sys.stderr)
        if exc.__cause__ is not None:
            print(mask_secrets(str(exc.__cause__)), file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        # Leave the environment as it was: a caller that runs main() in-process (tests, a
        # notebook) must not inherit HYDRA_FULL_ERROR as if its user had asked for it.
        if not user_asked_full_errors:
            os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
