"""BYOL's regression loss (Grill et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.losses.precision import in_float32


@in_float32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``2 - 2 cos(p_i, z_i)`` for predictions ``p`` and targets ``z`` ``(B, D)``; the
    caller detaches ``z`` (stop-gradient on the target branch). 0 for aligned vectors, 4 for opposite ones."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
