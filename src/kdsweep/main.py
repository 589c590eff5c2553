"""The command line: ``kdsweep`` and ``python -m kdsweep`` are this one @hydra.main.

It returns the run's objective (validation accuracy) so Hydra sweepers can optimize it.
User errors print one line and exit 2 in a single run; inside a sweep they propagate, so
the sweeper records the trial as failed and goes on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdsweep.errors import KdsweepError, NonFiniteLossError
from kdsweep.secrets import mask_secrets

log = logging.getLogger("kdsweep")


def config_dir() -> str:
    """conf/ ships inside the wheel; a source checkout (editable install) uses the repo's."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")


def report_error(exc: BaseException) -> None:
    message = " ".join(str(exc).split())
    print(f"kdsweep: error: {mask_secrets(message)}", file=sys.stderr)


# Hydra 1.4 asks the call site which instantiate() targets config may name: ours only
# (the tutorial-table callback); plugins and samplers carry their own lists.
@hydra.main(
    config_path=config_dir(), config_name="config", execution_whitelist=("kdsweep.callbacks.*",)
)
def hydra_main(cfg: DictConfig) -> float:
    from kdsweep.config import validate

    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate(cfg)  # before importing torch and MLflow: a typo fails in a second
        from kdsweep.run import run
        from kdsweep.trial_link import trial_hooks

        result = run(cfg, trial_hooks(cfg), output_dir=hydra_cfg.runtime.output_dir)
    except (KdsweepError, NonFiniteLossError) as exc:
        if in_sweep:
            raise
        report_error(exc)
        raise SystemExit(2 if isinstance(exc, KdsweepError) else 1) from None
    return result.objective


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
