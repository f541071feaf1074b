"""Masked autoencoders' loss (He et al., 2022): images as rows of patches, random masks, and the error on the
patches the encoder did not see."""

from __future__ import annotations

import torch

from pipeline.losses.precision import in_float32

NORM_PIX_EPS = 1e-6  # the paper's: added to each patch's variance


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Images ``(B, C, H, W)`` -> patches ``(B, L, patch * patch * C)``, ``L = (H / patch) (W / patch)``, in the
    row-major order a ViT's patch embedding reads them; each patch's values ordered ``(row, column, channel)``."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, side: int) -> torch.Tensor:
    """The inverse of :func:`patchify` for square images of ``side`` px: ``(B, L, patch * patch * C)`` ->
    ``(B, C, side, side)``."""
    cells, batch = side // patch, patches.shape[0]
    grid = patches.reshape(batch, cells, cells, patch, patch, channels)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, side, side)


def random_masking(batch: int, patches: int, keep: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept (B, keep) int64, ascending; masked (B, L) bool)``: for each of ``batch`` samples a uniformly random
    subset of ``keep`` of its ``patches`` positions stays visible, the rest are masked; drawn on ``device`` (the
    noise sorted, as MAE does: nothing is read back)."""
    kept = torch.rand(batch, patches, device=device).argsort(1)[:, :keep].sort(1).values
    masked = torch.ones(batch, patches, dtype=torch.bool, device=device).scatter_(1, kept, False)
    return kept, masked


@in_float32
def masked_patch_loss(
    prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """``sum_i sum_l m_il mean_j (p_ilj - t_ilj)^2 / sum_il m_il``: the mean squared error of predicted patches
    ``p (B, L, P)`` against target patches ``t (B, L, P)`` over the masked ones (``m (B, L)``, true where masked);
    with ``norm_pix`` each target patch is first standardised, ``t <- (t - mean_j t) / sqrt(var_j t + 1e-6)``
    (unbiased variance, as the paper's code)."""
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + NORM_PIX_EPS).sqrt()
    per_patch = (prediction - target).square().mean(-1)
    weights = masked.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum()
