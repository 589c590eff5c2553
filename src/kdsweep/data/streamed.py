"""A split that does not fit in memory: images streamed through a DataLoader.

It stands where an in-memory split's tensor stands (``TensorSplits.train_x`` ...): its
length, a slice as a normalized batch tensor (shape probes, a saved student's example),
and ``batches`` for epochs. Worker processes decode, resize and augment each image as
uint8 (a quarter of the bytes a float image takes to move between processes and to the
device); the batch is normalized once it is on the device, with one tensor operation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kdsweep.core.errors import DataError
from kdsweep.core.signals import check_interrupt

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset


@dataclass(frozen=True)
class ImageSplit:
    """A torch Dataset of (uint8 C x H x W image, label) pairs, served normalized on
    ``device``. Its labels are not read: the split's label tensor holds them, so that
    hidden labels (``labelled_fraction``) are hidden by index. ``content`` is a digest of
    its images' files (names and bytes): what keys the teacher outputs cached for it."""

    dataset: Dataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    content: str
    workers: int = 0
    device: str = "cpu"

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.dataset[0][0].shape)

    def to(self, device: torch.device | str) -> ImageSplit:
        return replace(self, device=str(device))

    @property
    def nbytes(self) -> int:
        """Bytes held in memory, as ``Tensor.nbytes``: none, the images stay on disk."""
        return 0

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """The images of ``rows`` (a slice) as one normalized batch, as a tensor split
        would give them."""
        import torch

        positions = range(len(self))[rows]
        return self._normalized(torch.stack([self.dataset[i][0] for i in positions]))

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(sample indices on the CPU, normalized images on ``device``) per batch, in
        ``order`` (None: as stored). The indices address the teacher's cached outputs."""
        import torch
        from torch.utils.data import DataLoader

        n = len(self)
        order = torch.arange(n) if order is None else order.cpu()
        chunks: Sequence[torch.Tensor] = order.split(batch_size)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[chunk.tolist() for chunk in chunks],
            num_workers=self.workers,
            pin_memory=torch.device(self.device).type == "cuda",
        )
        batches = iter(loader)
        for index in chunks:
            try:
                images, _ = next(batches)
            except DataError as exc:  # an image gone or broken since the data loaded
                raise _own_message(exc) from None
            check_interrupt()  # a signal stops every loop over a split between two batches
            yield index, self._normalized(images)

    def _normalized(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        x = images.to(self.device, non_blocking=True).float()
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def _own_message(exc: DataError) -> DataError:
    """The error a DataLoader worker raised, with its own one-line message: torch raises
    it again in this process with the worker's traceback as the message, whose last line
    is the error's own, after its type's name."""
    last = str(exc).strip().splitlines()[-1]
    return DataError(last.removeprefix(f"{DataError.__module__}.{DataError.__qualname__}: "))
