"""Frozen-encoder features of a whole split, read in order from the shards."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from augment.presets import to_unit_float
from pipeline.data import evaluation_loader


@torch.no_grad()
def extract_features(
    encoder: nn.Module | None, location: str, split: str, batch_size: int = 1024,
    device: torch.device | str = "cpu", url_template: str | None = None, skip_bad_samples: bool = False,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D) float32, labels (N,) int64)`` for every sample of ``split`` (every readable one, with
    ``skip_bad_samples``; photos center-cropped to ``image_size``); ``encoder=None`` gives raw pixels in [0, 1],
    flattened ``(N, C*H*W)``."""
    loader = evaluation_loader(location, split, batch_size, image_size=image_size, url_template=url_template,
                               skip_bad_samples=skip_bad_samples)
    if encoder is not None:
        encoder.eval().to(device, memory_format=torch.channels_last)
    features, labels = [], []
    for images, batch_labels, _ in loader:
        x = to_unit_float(images.to(device)).contiguous(memory_format=torch.channels_last)
        features.append((encoder(x) if encoder is not None else x.flatten(1)).float().cpu().numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(features), np.concatenate(labels)
