"""Sparsity penalties on autoencoder codes ``z`` ``(B, k)``."""

from __future__ import annotations

import torch

from pipeline.losses.precision import in_float32

EPS = 1e-6


@in_float32
def l1_sparsity(z: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_j |z_bj|``: the L1 penalty pushing most units to 0 for any given input."""
    return z.abs().sum(dim=1).mean()


@in_float32
def kl_sparsity(z: torch.Tensor, rho: float) -> torch.Tensor:
    """``sum_j KL(rho || rho_hat_j)`` with ``rho_hat_j = mean_b z_bj`` the mean activation of unit ``j`` (codes in
    (0, 1)): ``rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat))``, 0 when every unit fires at
    the target rate ``rho``."""
    rho_hat = z.mean(dim=0).clamp(EPS, 1 - EPS)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
