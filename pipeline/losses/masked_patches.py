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


def standardised_patches(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t', mean, std)``: each patch of ``t (B, L, P)`` standardised, ``t' = (t - mean_j t) / sqrt(var_j t +
    1e-6)`` (unbiased variance, as the paper's code), and the ``(B, L, 1)`` statistics that undo it."""
    mean = target.mean(-1, keepdim=True)
    std = (target.var(-1, keepdim=True) + NORM_PIX_EPS).sqrt()
    return (target - mean) / std, mean, std


@in_float32
def masked_patch_errors(
    prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """``(B,)``: for each image ``i``, ``sum_l m_il mean_j (p_ilj - t_ilj)^2 / sum_l m_il``, the mean squared error
    of its predicted patches ``p (B, L, P)`` against its target patches ``t (B, L, P)`` over the masked ones
    (``m (B, L)``, true where masked); with ``norm_pix`` each target patch is first standardised
    (:func:`standardised_patches`)."""
    if norm_pix:
        target = standardised_patches(target)[0]
    weights = masked.to(prediction.dtype)
    return ((prediction - target).square().mean(-1) * weights).sum(1) / weights.sum(1)


def masked_patch_loss(
    prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """MAE's loss: the batch's mean of :func:`masked_patch_errors` (every image masks as many patches, so this is
    the mean over all masked patches)."""
    return masked_patch_errors(prediction, target, masked, norm_pix).mean()
