"""Image grids saved as PNG: any batch in rows, or originals in the first row with each view below."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from augment.presets import to_unit_float

MIN_CELL = 96  # small images are enlarged (nearest neighbour) so a person can see them


def save_image_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    """Write each of ``rows`` ``(N, C, h, w)`` (uint8 or [0, 1] float, ``N`` the same for all) as one row of a
    grid to ``path``; small images are enlarged to ``MIN_CELL`` pixels."""
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
