"""Image grids saved as PNG: any batch in rows, or originals in the first row with each view below."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from augment.presets import ViewAugmenter, to_unit_float
from pipeline.data import ShardLoader

MIN_CELL = 96  # small images are enlarged (nearest neighbour) so a person can see them


def save_image_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    """Write each of ``rows`` ``(N, C, h, w)`` (uint8 or [0, 1] float, ``N`` the same for all) as one row of a
    grid to ``path``; small images are enlarged to ``MIN_CELL`` pixels."""
    from torchvision.utils import make_grid, save_image  # here: importing torchvision costs every process ~2.5 s

    rows = [to_unit_float(r.detach().cpu()) for r in rows]
    cell = max(MIN_CELL, *(r.shape[-1] for r in rows))
    rows = [F.interpolate(r, size=(cell, cell), mode="nearest") for r in rows]
    grid = make_grid(torch.cat(rows), nrow=len(rows[0]), padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


def save_view_grid(originals: torch.Tensor, views: list[torch.Tensor], path: str | Path) -> Path:
    """Write ``originals`` ``(N, C, H, W)`` (uint8 or [0, 1] float) above each view ``(N, C, h, w)`` to ``path``."""
    return save_image_grid([originals, *views], path)


def preview_batch(
    loader: ShardLoader, preset: str, num_views: int, photo_size: int, seed: int, path: str | Path,
    **strengths: float | None,
) -> Path:
    """Write the first batch of ``loader`` above its ``num_views`` views of ``preset`` (with :class:`ViewAugmenter`'s
    ``strengths``) to ``path``. The loader crops photos (random-resized crops of ``photo_size``: the first crop
    stands for the photo); arrays are cropped here, as in training."""
    images = next(iter(loader))[0]
    photos = loader.manifest.photos
    size = photo_size if photos else loader.manifest.image_shape[1]
    augmenter = ViewAugmenter(preset, size, loader.manifest.channels, num_views, seed=seed, crop=not photos,
                             **strengths)
    return save_view_grid(images[:, 0] if photos else images, augmenter(images), path)
