"""Batched on-device augmentation: random crop with padding and horizontal flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsweep.data.augment import crop_and_flip


def _all_views(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop (and its mirror) that crop_and_flip may return for one image."""
    padded = F.pad(image[None], (padding,) * 4, mode="reflect")[0]
    _, height, width = image.shape
    views = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + height, dx : dx + width]
            views += [crop, crop.flip(-1)]
    return views


def test_each_output_is_a_shifted_or_mirrored_crop_of_its_own_image() -> None:
    torch.manual_seed(0)
    images = torch.randn(16, 3, 8, 8)
    out = crop_and_flip(images, padding=2)
    assert out.shape == images.shape
    for original, augmented in zip(images, out, strict=True):
        assert any(torch.equal(augmented, view) for view in _all_views(original, 2))


def test_images_get_different_shifts_and_flips() -> None:
    torch.manual_seed(1)
    # One image repeated: any difference between outputs comes from the augmentation.
    images = torch.randn(1, 3, 32, 32).repeat(64, 1, 1, 1)
    out = crop_and_flip(images)
    distinct = {tuple(o.flatten()[:64].tolist()) for o in out}
    assert len(distinct) > 10
    unchanged = sum(torch.equal(o, images[0]) for o in out)
    assert unchanged < 16  # most images moved or flipped


def test_zero_padding_only_flips() -> None:
    torch.manual_seed(2)
    images = torch.randn(32, 3, 8, 8)
    out = crop_and_flip(images, padding=0)
    for original, augmented in zip(images, out, strict=True):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(-1))
