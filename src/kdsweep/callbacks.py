"""Hydra callbacks. TutorialTable ends ``kdsweep -m 'experiment=glob(tutorial_*)'`` with the
PyTorch KD tutorial's comparison table, beside the tutorial's published CIFAR-10 figures.

It reads each job's results.json (kdsweep.tracking.RunTracker), so it works with any
launcher, including ones that run the jobs in other processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdsweep.files import atomic_write_text

log = logging.getLogger("kdsweep")

# run name -> (row label, the tutorial's published CIFAR-10 test accuracy in %)
TUTORIAL_ROWS = {
    "tutorial-teacher": ("Teacher (DeepNN)", 75.10),
    "tutorial-student-ce": ("Student without teacher (LightNN, CE)", 69.86),
    "tutorial-kd": ("Student with CE + KD", 70.80),
    "tutorial-cosine": ("Student with CE + cosine", 71.50),
}


def collect_results(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """run name -> the newest results.json record found under the sweep directory."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(sweep_dir.glob("*/results.json"), key=lambda p: p.stat().st_mtime):
        record = json.loads(path.read_text())
        name = record.get("tags", {}).get("mlflow.runName")
        if name:
            found[name] = record
    return found


def tutorial_table(results: dict[str, dict[str, Any]], data_name: str) -> str:
    lines = [
        "| run | val acc % | test acc % | status | tutorial, CIFAR-10 test acc % |",
        "|---|---:|---:|---|---:|",
    ]
    for run_name, (label, published) in TUTORIAL_ROWS.items():
        record = results.get(run_name)
        if record is None:
            lines.append(f"| {label} | – | – | not run | {published:.2f} |")
            continue
        metrics = record.get("metrics", {})
        val, test = metrics.get("best_val_acc"), metrics.get("test_acc")
        cells = [f"{v:.2f}" if isinstance(v, (int, float)) else "–" for v in (val, test)]
        status = record.get("status", "?")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {status} | {published:.2f} |")
    header = f"Tutorial comparison on data={data_name} (tutorial figures: CIFAR-10, 10 epochs)"
    return header + "\n\n" + "\n".join(lines) + "\n"


class TutorialTable(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        results = collect_results(sweep_dir)
        if not any(name in TUTORIAL_ROWS for name in results):
            return  # not a tutorial multirun
        table = tutorial_table(results, str(config.data.name))
        out = sweep_dir / "tutorial_comparison.md"
        atomic_write_text(out, table)
        print("\n" + table + f"\n(saved to {out})")
