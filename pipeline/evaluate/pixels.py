"""The raw-pixel baseline at scale: what it reads (the images' own pixels, or a downsampled copy) and how many of
them it probes (every image, or a seeded subsample), decided from the manifest before the run starts so that the
run's params can say so.

A split whose float32 pixels would take more than ``eval.pixels_max_gb`` is first downsampled (area averages) to
:data:`DOWNSAMPLED_SIDE` px and, if still above, probed on a seeded subsample that fits. Fashion-MNIST (0.18 GiB
of training pixels) is read whole; ImageNet at 224 px (about 770 GB) becomes 32 px images, 21,845 of them at the
default 0.25 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.manifest import Manifest

DOWNSAMPLED_SIDE = 32
GIB = 1 << 30
FLOAT_BYTES = 4


@dataclass(frozen=True)
class PixelPlan:
    side: int  # the images' side as the baseline reads them
    channels: int
    native_side: int  # the images' own side (photos: the crop size)
    samples: dict[str, int]  # per split: images the probe uses (all of them unless above the budget)
    totals: dict[str, int]  # per split: images the split holds

    @property
    def whole(self) -> bool:
        """Every image, at its own size: the baseline as it always was."""
        return self.side == self.native_side and self.samples == self.totals

    def params(self) -> dict[str, int]:
        """What the run's params record about the baseline."""
        return {
            "eval.baseline_pixels_side": self.side,
            "eval.baseline_pixels_samples": self.samples["train"],
            "eval.baseline_pixels_test_samples": self.samples["test"],
        }


def pixel_plan(manifest: Manifest, max_gb: float, photo_size: int | None = None) -> PixelPlan:
    """The plan for the ``train`` and ``test`` splits of ``manifest`` (photos read as ``photo_size`` crops)."""
    channels, side = (3, photo_size) if manifest.photos else (manifest.image_shape[0], manifest.image_shape[1])
    if side is None:
        raise ValueError("photo shards need the crop size (data.image_size)")
    totals = {split: sum(manifest.split(split).counts) for split in ("train", "test")}
    budget = int(max_gb * GIB)
    size = side
    if totals["train"] * channels * size * size * FLOAT_BYTES > budget:
        size = min(side, DOWNSAMPLED_SIDE)
    fitting = max(1, budget // (channels * size * size * FLOAT_BYTES))
    return PixelPlan(size, channels, side, {split: min(n, fitting) for split, n in totals.items()}, totals)


def pixel_rows(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> uint8 ``(B, C * side * side)``: the pixels themselves at their own size, else
    area averages, rounded."""
    if images.shape[-1] != side:
        images = F.adaptive_avg_pool2d(images.float(), side).round_().to(torch.uint8)
    return images.contiguous().flatten(1)


def subsample(total: int, samples: int, seed: int) -> np.ndarray:
    """Sorted positions ``(samples,)`` of ``total``: all of them, or a seeded random subset."""
    if samples >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng([seed, total]).choice(total, samples, replace=False))
