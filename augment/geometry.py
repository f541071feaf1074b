"""Random resized crops and horizontal flips of a whole batch on its own device, nothing read back to the host.

The crop draws as torchvision's ``RandomResizedCrop`` does (area share uniform in ``scale``, log aspect ratio
uniform in ``log ratio``, the first of 10 candidates that fits, else the centred fallback), all images and all
candidates at once; each box is resampled to ``size x size`` bilinearly by one ``grid_sample`` over the batch, its
output pixel centres spread evenly over the box as ``torch.nn.functional.interpolate`` (``align_corners=False``,
no antialiasing) spreads them over an image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTEMPTS = 10  # torchvision's candidates per image
RATIO = (3 / 4, 4 / 3)


def _fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's centred crop ``(h, w)`` for an image none of whose candidates fit."""
    aspect = width / height
    if aspect < min(ratio):
        return round(width / min(ratio)), width
    if aspect > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def crop_boxes(
    batch: int, height: int, width: int, scale: tuple[float, float], device: torch.device, ratio=RATIO
) -> torch.Tensor:
    """``(B, 4)`` float boxes ``(top, left, h, w)`` in pixels, one per image of ``height x width``, drawn as
    torchvision's ``RandomResizedCrop.get_params`` draws one (whole pixels; offsets uniform over the places the box
    fits)."""
    area = torch.empty(batch, ATTEMPTS, device=device).uniform_(*scale) * (height * width)
    log_ratio = torch.empty(batch, ATTEMPTS, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w = torch.sqrt(area * log_ratio.exp()).round()
    h = torch.sqrt(area / log_ratio.exp()).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first fitting candidate (0 where none fits)
    any_fits = fits.any(dim=1)
    fallback_h, fallback_w = _fallback(height, width, ratio)
    h = torch.where(any_fits, h.gather(1, first)[:, 0], float(fallback_h))
    w = torch.where(any_fits, w.gather(1, first)[:, 0], float(fallback_w))
    offsets = torch.rand(batch, 2, device=device)
    top = torch.where(any_fits, (offsets[:, 0] * (height - h + 1)).floor(), float((height - fallback_h) // 2))
    left = torch.where(any_fits, (offsets[:, 1] * (width - w + 1)).floor(), float((width - fallback_w) // 2))
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` float ``(B, C, H, W)``, ``boxes`` ``(B, 4)`` ``(top, left, h, w)`` -> ``(B, C, size, size)``: each
    box resampled bilinearly (sampling points that fall outside the image take its border pixels)."""
    height, width = x.shape[-2:]
    centres = (torch.arange(size, device=x.device, dtype=boxes.dtype) + 0.5) / size  # (size,) in (0, 1)
    top, left, h, w = boxes.unbind(1)
    # grid_sample's normalised coordinate of pixel position p (edges at 0 and W) is 2 p / W - 1
    xs = 2 * (left[:, None] + centres * w[:, None]) / width - 1  # (B, size)
    ys = 2 * (top[:, None] + centres * h[:, None]) / height - 1
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)  # (B, size, size, 2)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


class RandomResizedCrop(nn.Module):
    """``x`` float ``(B, C, H, W)`` -> ``(B, C, size, size)``: a random box of each image (area share in
    ``scale``, aspect ratio in ``ratio``) resized to ``size``."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float] = RATIO) -> None:
        super().__init__()
        self.size, self.scale, self.ratio = size, scale, ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes = crop_boxes(len(x), *x.shape[-2:], self.scale, x.device, self.ratio)
        return resized_crops(x, boxes, self.size)


class RandomHorizontalFlip(nn.Module):
    """``x`` ``(B, C, H, W)``: each image mirrored left to right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(x), device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)
