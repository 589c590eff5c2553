"""The closed choices of the config (Enums): Hydra refuses any other value while it
composes (``trainer.objective=worst``), and each reads as its value in messages, paths
and MLflow params."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A closed choice that reads as its value in messages, paths and MLflow params."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Progress(Choice):
    auto = "auto"  # a bar on a terminal, one log line per epoch otherwise
    bar = "bar"
    log = "log"
    none = "none"


class EpochChoice(Choice):
    best = "best"  # the best val epoch's weights are kept and tested
    last = "last"


class SaveModel(Choice):
    best = "best"  # the student the run tested (its selected epoch): MLflow model + state_dict
    none = "none"  # keep nothing (pruned and failed trials never save)


class Precision(Choice):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast on CUDA; ignored on the CPU


DEVICES = ("auto", "cpu", "cuda", "mps")
# numpy's and torch's seeds: 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
