"""Batched on-device augmentation for 32x32 colour images: random crop with padding and
horizontal flip, applied to a whole batch with tensor ops (no per-image Python work)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_and_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Each image gets its own random shift in [-padding, padding] and a coin-flip mirror."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device)
    rows = dy[:, None] + torch.arange(height, device=device)[None, :]  # n x H
    cols = dx[:, None] + torch.arange(width, device=device)[None, :]  # n x W
    flip = torch.rand(n, device=device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    # Gather rows then columns: n x C x H x W without a Python loop over images.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
