"""Test helpers shared across modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data import ShardLoader


def read_split(location: Path, split: str, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sample of ``split`` in source order: ``(images (N, C, H, W), labels (N,), indices (N,))``."""
    options = dict(rank=0, world_size=1, num_workers=0, shuffle=False, drop_last=False) | kwargs
    batches = list(ShardLoader(location, split, 512, **options))
    images, labels, indices = (torch.cat(column).numpy() for column in zip(*batches))
    order = np.argsort(indices)
    return images[order], labels[order], indices[order]
