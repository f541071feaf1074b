"""What a masked-image model rebuilds on the test split: the error on the patches it did not see, and a grid of
masked inputs, reconstructions and originals."""

from __future__ import annotations

import numpy as np
import torch

from augment.presets import to_unit_float
from pipeline.data import LabeledShards
from pipeline.methods.capabilities import MaskedReconstructs

SHOWN = 8  # test images in the grid


@torch.no_grad()
def masked_reconstructions(
    method: MaskedReconstructs, shards: LabeledShards, device: torch.device
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """``({"masked_recon_mse": mean error on the masked patches}, [masked inputs, reconstructions, originals] of the
    first :data:`SHOWN` test images)`` over the test split of ``shards``, in order, the masks seeded (the global
    generator left as it was)."""
    method.eval().to(device)
    errors, rows = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for images, _, _ in shards.loader("test"):
            x = to_unit_float(images.to(device))
            error, masked, rebuilt = method.masked_reconstruction(x)
            errors.append(error.cpu().numpy())
            if not rows:
                rows = [masked[:SHOWN].cpu(), rebuilt[:SHOWN].cpu(), x[:SHOWN].cpu()]
    return {"masked_recon_mse": float(np.concatenate(errors).mean())}, rows
