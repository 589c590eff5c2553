"""Which torch device a run uses: ``trainer.device=auto`` picks cuda, then mps, then cpu;
a named device must exist on this machine (checked before anything trains)."""

from __future__ import annotations

import torch

from kdsweep.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda, then mps, then cpu; else the named device, which must exist here
    (a ConfigError in one line if it does not)."""
    if name != "auto":
        check_device(name)
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(name: str) -> None:
    """Refuse ``trainer.device`` naming a device this machine lacks (cuda, cuda:7, mps)."""
    kind, _, index = name.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        wanted = int(index) if index else 0
        if wanted >= count:
            raise ConfigError(
                f"trainer.device={name} is not available: this machine has {count} CUDA"
                " device(s); use trainer.device=cpu or auto"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"trainer.device={name} is not available on this machine: use trainer.device=cpu"
            " or auto"
        )
