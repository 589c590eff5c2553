"""The student as MLflow serves it: raw pixels in, logits out, no kdsweep needed to load it.

The run's input normalization becomes the model's first layer (``Standardize``), so images
on the data set's pixel scale (as kdsweep loads them: digits 0..16, CIFAR 0..255) are
classified as they are. The saved model is an MLflow model of the ``pytorch`` flavour in
its ``pickle`` format, holding a ``torch.fx`` trace of that classifier: a plain
``nn.Module`` (``.eval()``, ``.to(device)``) whose pickle names only torch classes and the
traced ``forward`` code, so loading it needs torch, not kdsweep (and MLflow's default
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``). The pickle-free ``pt2`` format does not
do: ``torch.export``'s loaded module refuses ``.eval()``, and pyfunc, which picks the GPU
when there is one, cannot move its CPU weights there.
Its signature is one unnamed float32 tensor, N x C x H x W with N free, so pyfunc, ``mlflow
models serve`` and ``mlflow models predict`` hand the array straight to the module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Standardize(nn.Module):
    """x' = (x - mean[c]) / std[c] per channel: the normalization the run trained with."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        per_channel = (1, -1, 1, 1)  # broadcasts over N x C x H x W
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(per_channel)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(per_channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def on_raw_pixels(classifier: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """``classifier`` (normalized images -> logits) behind the run's normalization."""
    return nn.Sequential(Standardize(mean, std), classifier)


class Unstandardize(Standardize):
    """x' = x * std[c] + mean[c]: normalized images back on the data set's pixel scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def raw_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalized images back on the data set's pixel scale (``Standardize`` undone)."""
    return Unstandardize(mean, std)(images)


def signature(input_shape: Sequence[int], num_classes: int) -> Any:
    """Raw images (float32, N x C x H x W) -> logits (N x classes). The tensors are
    unnamed: a named input makes pyfunc pass a dict, which the pytorch flavour refuses."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    images = TensorSpec(np.dtype(np.float32), (-1, *input_shape))
    logits = TensorSpec(np.dtype(np.float32), (-1, num_classes))
    return ModelSignature(inputs=Schema([images]), outputs=Schema([logits]))


def save_served_model(
    model: nn.Module,
    folder: Path,
    input_shape: Sequence[int],
    num_classes: int,
    raw_example: torch.Tensor,
    metadata: dict[str, Any],
) -> None:
    """Write ``model`` (raw images -> logits, in eval mode on the CPU) as the MLflow model
    described above into ``folder``, with ``raw_example`` as its input example."""
    import cloudpickle
    import mlflow.pytorch

    # MLflow warns on every pickle-format save; kdsweep chose it knowingly (see above), and
    # a sweep would print the warning once per trial.
    flavour_log = logging.getLogger("mlflow.pytorch")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)
    try:
        mlflow.pytorch.save_model(
            torch.fx.symbolic_trace(model),
            str(folder),
            signature=signature(input_shape, num_classes),
            input_example=raw_example.numpy(),
            serialization_format="pickle",
            # Named, not inferred: inference imports the model in a subprocess (seconds).
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"cloudpickle=={cloudpickle.__version__}",
            ],
            metadata=metadata,
        )
    finally:
        flavour_log.setLevel(level)
