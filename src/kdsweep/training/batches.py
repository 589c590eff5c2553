"""What the training loop hands the loss for one batch: the teacher's outputs (indexed
from a cache or computed live), the student's forward pass, and the StepInputs they make."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from kdsweep.core.signals import check_interrupt
from kdsweep.data import ImageSplit
from kdsweep.losses import StepInputs
from kdsweep.nets import as_feature_net, pool_hidden

Images = torch.Tensor | ImageSplit


def batches_of(
    images: Images, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(sample indices, images) per batch in ``order`` (None: as stored): indexed from an
    in-memory tensor, or streamed through a split's DataLoader: every pass over a split
    (training, evaluation, the teacher's cached outputs) goes through here."""
    if isinstance(images, ImageSplit):
        yield from images.batches(batch_size, order)
        return
    for start in range(0, len(images), batch_size):
        check_interrupt()  # a signal stops the loop between two batches
        if order is None:  # a view, no copy
            stop = min(start + batch_size, len(images))
            yield torch.arange(start, stop, device=images.device), images[start:stop]
        else:
            index = order[start : start + batch_size]
            yield index, images.index_select(0, index)


@dataclass
class TeacherSource:
    """The teacher's outputs for a batch: indexed from precomputed tensors when the
    teacher is frozen and the inputs are not augmented, else a live forward pass."""

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    model: nn.Module | None = None
    pool_kernel: int = 1

    def for_batch(
        self, index: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The teacher's logits and hidden vector for the batch ``inputs`` (rows ``index``
        of its split), on the inputs' device: a memory-mapped cache serves them on the CPU."""
        if self.model is None:
            logits, hidden = (
                None if t is None else t.index_select(0, index).to(inputs.device, non_blocking=True)
                for t in (self.logits, self.hidden)
            )
            return logits, hidden
        with torch.no_grad():
            logits, hidden = self.model.forward_with_hidden(inputs)
        return logits.float(), pool_hidden(hidden.float(), self.pool_kernel)

    def with_features(
        self, index: torch.Tensor, inputs: torch.Tensor, features: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | None]:
        """for_batch, plus the stage feature maps when ``features``: those come from a live
        teacher only (kdsweep.plan says why they are not cached)."""
        if not features:
            return (*self.for_batch(index, inputs), None)
        if self.model is None:
            raise RuntimeError("the teacher's feature maps need a live teacher, not a cache")
        with torch.no_grad():
            logits, hidden, maps = self.model.forward_with_features(inputs)
        hidden = pool_hidden(hidden.float(), self.pool_kernel)
        return logits.float(), hidden, [m.float() for m in maps]


def student_forward(
    model: nn.Module, features: bool
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]]:
    """The student's forward pass for the loop: logits, hidden vector, and (``features``)
    its feature maps. ``model`` is any network (kdsweep.nets.as_feature_net): a teacher
    in training too."""
    net = as_feature_net(model)
    if features:
        return net.forward_with_features

    def without_maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        logits, hidden = net.forward_with_hidden(x)
        return logits, hidden, None

    return without_maps


def step_inputs(
    y: torch.Tensor,
    student: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None],
    teacher: tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | None],
    epoch: int,
) -> StepInputs:
    """What the loss sees: float32 logits, hidden vectors and feature maps (autocast may
    have made them bf16), the labels and the epoch."""
    logits, hidden, maps = student
    t_logits, t_hidden, t_maps = teacher
    maps = None if maps is None else [m.float() for m in maps]
    return StepInputs(y, logits.float(), hidden.float(), t_logits, t_hidden, epoch, maps, t_maps)
