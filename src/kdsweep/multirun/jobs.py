"""The jobs of a plain multirun, read back from their output folders: each job's
results.json (kdsweep.run.tracking.RunTracker writes it whether or not MLflow tracks the run)
and its ``.hydra/overrides.yaml``, so any launcher works, including ones that run the jobs
in other processes. A job whose files cannot be read is logged and left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdsweep.config.parts import override_key
from kdsweep.core.errors import first_line
from kdsweep.core.values import finite_number

log = logging.getLogger("kdsweep")

SEED_KEY = "trainer.seed"
FINISHED = "FINISHED"
# File systems store mtimes coarsely (FAT: 2 s); a job of this multirun is never that old.
MTIME_SLACK_S = 2.0


@dataclass
class Job:
    """One job's results.json record and its task overrides (``.hydra/overrides.yaml``;
    None when that file is missing or unreadable)."""

    directory: Path
    record: dict[str, Any]
    overrides: list[str] | None

    @property
    def run_name(self) -> str | None:
        name = self.record.get("run_name")
        return str(name) if name else None

    @property
    def finished(self) -> bool:
        return self.record.get("status") == FINISHED

    @property
    def params(self) -> Mapping[str, Any]:
        return as_mapping(self.record.get("params"))

    @property
    def metrics(self) -> Mapping[str, Any]:
        return as_mapping(self.record.get("metrics"))

    @property
    def in_kdsweep_sweep(self) -> bool:
        """A run of kdsweep's sweeper (a trial, a baseline, ...): it sets sweep.trial_number
        or sweep.study_name, which a plain run leaves null."""
        unset = (None, "None", "null", "")
        keys = ("sweep.trial_number", "sweep.study_name")
        return any(self.params.get(key) not in unset for key in keys)

    @property
    def seed(self) -> int | None:
        value = self.params.get(SEED_KEY)
        if value is None:
            value = next(
                (o.split("=", 1)[1] for o in self.overrides or [] if override_key(o) == SEED_KEY),
                None,
            )
        try:
            return int(str(value))
        except ValueError:
            return None

    def metric(self, name: str) -> float | None:
        return finite_number(self.metrics.get(name))

    def val_acc(self) -> float | None:
        return objective_acc(self.metrics)


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def objective_acc(metrics: Mapping[str, Any]) -> float | None:
    """The run's val accuracy at its objective epoch (best by default): the epoch whose
    weights test_acc measured."""
    value = finite_number(metrics.get("objective"))
    return value if value is not None else finite_number(metrics.get("best_val_acc"))


def _job_order(directory: Path) -> tuple[int, float, str]:
    """Hydra's job number (the default subdir name) first; otherwise the record's age."""
    name = directory.name
    if name.isdigit():
        return (0, float(name), "")
    return (1, (directory / "results.json").stat().st_mtime, name)


def collect_jobs(sweep_dir: Path, since: float | None = None) -> list[Job]:
    """Every job under ``sweep_dir`` with a readable results.json, in job order. An
    unreadable record is logged and left out; it never stops the multirun. With ``since``
    (the multirun's start, epoch seconds), records written before it are left out too:
    jobs of an earlier multirun in the same ``hydra.sweep.dir``."""
    import yaml

    jobs: list[Job] = []
    earlier = 0
    for path in sweep_dir.glob("*/results.json"):
        try:
            if since is not None and path.stat().st_mtime < since - MTIME_SLACK_S:
                earlier += 1
                continue
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log.warning("multirun table: skipping %s (%s)", path, first_line(exc))
            continue
        overrides: list[str] | None = None
        overrides_file = path.parent / ".hydra" / "overrides.yaml"
        try:
            loaded = yaml.safe_load(overrides_file.read_text())
            if isinstance(loaded, list):
                overrides = [str(o) for o in loaded]
        except (OSError, yaml.YAMLError):
            pass
        jobs.append(Job(path.parent, record, overrides))
    if earlier:
        log.warning(
            "multirun table: left out %d job folder(s) of an earlier multirun in %s",
            earlier,
            sweep_dir,
        )
    try:
        jobs.sort(key=lambda job: _job_order(job.directory))
    except OSError:  # a record removed while we read: keep the directory order
        jobs.sort(key=lambda job: job.directory.name)
    return jobs


def collect_results(sweep_dir: Path, since: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """run name -> every results.json record under the sweep directory with that name, in
    job order (one per seed when the multirun repeats a run over seeds); ``since`` as for
    collect_jobs."""
    found: dict[str, list[dict[str, Any]]] = {}
    for job in collect_jobs(sweep_dir, since):
        if job.run_name and not job.in_kdsweep_sweep:
            found.setdefault(job.run_name, []).append(job.record)
    return found


def is_kdsweep_sweep(config: DictConfig) -> bool:
    """A multirun driven by kdsweep's own sweeper (hydra/sweeper=kdsweep)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    return "kdsweep" in str(target or "")
