"""Image grids saved as PNG: any batch in rows, or originals in the first row with each view below."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from augment.presets import ViewAugmenter, to_unit_float
from pipeline.data import ShardLoader

MIN_CELL = 96  # small images are enlarged (nearest neighbour) so a person can see them
PADDING = 2


def save_image_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    """Write each of ``rows`` ``(N, C, h, w)`` (uint8 or [0, 1] float, ``N`` the same for all) as one row of a
    grid to ``path``: cells ``PADDING`` px apart on white (torchvision's ``make_grid`` layout, without the ~2.5 s
    that importing torchvision costs each process); small images are enlarged to ``MIN_CELL`` pixels."""
    rows = [to_unit_float(r.detach().cpu()) for r in rows]
    cell = max(MIN_CELL, *(r.shape[-1] for r in rows))
    cells = F.pad(
        torch.stack([F.interpolate(r, size=(cell, cell), mode="nearest") for r in rows]),
        (PADDING, 0, PADDING, 0),
        value=1.0,
    )  # (R, N, C, cell + pad, cell + pad): a border above and left
    num_rows, num_cols, channels, height, width = cells.shape
    grid = F.pad(
        cells.permute(2, 0, 3, 1, 4).reshape(channels, num_rows * height, num_cols * width),
        (0, PADDING, 0, PADDING),
        value=1.0,
    )
    pixels = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).squeeze(-1)  # (H, W[, C])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def save_view_grid(originals: torch.Tensor, views: list[torch.Tensor], path: str | Path) -> Path:
    """Write ``originals`` ``(N, C, H, W)`` (uint8 or [0, 1] float) above each view ``(N, C, h, w)`` to ``path``."""
    return save_image_grid([originals, *views], path)


def preview_batch(
    loader: ShardLoader,
    preset: str,
    num_views: int,
    photo_size: int,
    seed: int,
    path: str | Path,
    **strengths: float | None,
) -> Path:
    """Write the first batch of ``loader`` above its ``num_views`` views of ``preset`` (with :class:`ViewAugmenter`'s
    ``strengths``) to ``path``. The loader crops photos (random-resized crops of ``photo_size``: the first crop
    stands for the photo); arrays are cropped here, as in training."""
    images = next(iter(loader))[0]
    photos = loader.manifest.photos
    size = photo_size if photos else loader.manifest.image_shape[1]
    augmenter = ViewAugmenter(
        preset, size, loader.manifest.channels, num_views, seed=seed, crop=not photos, **strengths
    )
    return save_view_grid(images[:, 0] if photos else images, augmenter(images), path)
