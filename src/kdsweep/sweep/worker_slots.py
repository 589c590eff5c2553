"""How many sweep workers one command starts, on which device, with how many CPU threads
(``hydra.sweeper.workers``, ``hydra.sweeper.workers_per_device``). Pure: the machine's
GPUs and cores are arguments, so the plan is tested with any device count; the command
that starts the workers (kdsweep.sweep.workers) reads them from torch and the OS.

- GPUs: ``auto`` is one worker per visible GPU times ``workers_per_device``; worker i gets
  GPU i mod G as its only visible device (``CUDA_VISIBLE_DEVICES``), so ``trainer.device``
  auto or cuda inside it is that GPU, and the workers fill every GPU before doubling up.
- CPU: ``auto`` is as many workers as the cores allow at ``trainer.threads`` each (0,
  torch's default, counts as 1: torch's default is every core, which K workers would
  oversubscribe K times).
- Every worker gets its share of the cores (``trainer.threads`` when the user left it at 0,
  and ``OMP_NUM_THREADS`` for what torch starts before it), never fewer than one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

AUTO = "auto"


@dataclass(frozen=True)
class WorkerSlot:
    """One worker: its number (1..K), the GPU it sees (None: CPU) and its CPU threads."""

    index: int
    gpu: str | None
    threads: int

    @property
    def device(self) -> str:
        """How the console names its device: ``GPU 2`` (the machine's id) or ``cpu``."""
        return f"GPU {self.gpu}" if self.gpu is not None else "cpu"

    @property
    def label(self) -> str:
        return f"worker {self.index} ({self.device})"

    def environment(self) -> dict[str, str]:
        """The variables the worker's process gets on top of the command's."""
        env = {"OMP_NUM_THREADS": str(self.threads)}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env


def worker_count(workers: int | str, per_device: int, gpus: int, cores: int, threads: int) -> int:
    """K for ``hydra.sweeper.workers`` (a number, or ``auto``) on a machine with ``gpus``
    usable GPUs and ``cores`` cores, each worker at ``threads`` (0: torch's default)."""
    if workers != AUTO:
        return int(workers)
    if gpus:
        return gpus * per_device
    return max(1, cores // max(1, threads))


def plan_workers(
    workers: int | str, per_device: int, gpus: Sequence[str], cores: int, threads: int
) -> list[WorkerSlot]:
    """The workers to start: ``gpus`` are the ids of the usable GPUs as the machine names
    them (what ``CUDA_VISIBLE_DEVICES`` takes; empty: CPU only), ``cores`` the CPU cores
    this process may use, ``threads`` the user's ``trainer.threads`` (0: not set)."""
    count = worker_count(workers, per_device, len(gpus), cores, threads)
    share = threads if threads > 0 else max(1, cores // count)
    return [
        WorkerSlot(index=i + 1, gpu=gpus[i % len(gpus)] if gpus else None, threads=share)
        for i in range(count)
    ]


def gpu_ids(count: int, visible: str | None) -> list[str]:
    """The ids of the ``count`` GPUs torch sees, as ``CUDA_VISIBLE_DEVICES`` names them:
    its own list (``visible``, when set: ``4,5`` or GPU UUIDs) or 0 .. count - 1."""
    if visible is not None and visible.strip():
        return [name.strip() for name in visible.split(",")][:count]
    return [str(i) for i in range(count)]
