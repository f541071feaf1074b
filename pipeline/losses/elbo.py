"""The VAE objective (Kingma & Welling, 2014; beta-VAE, Higgins et al., 2017), per sample then batch-averaged."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.losses.precision import in_float32


@in_float32
def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per latent dimension, ``(B, k)``:
    ``0.5 (mu^2 + exp(logvar) - 1 - logvar)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


@in_float32
def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``-log p(x | z)`` for pixels in [0, 1] under independent Bernoullis of ``sigmoid(logits)``, summed over
    pixels: ``(B,)``. From logits: exact where a sigmoid saturates, and an op autocast allows."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


@in_float32
def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, std: float) -> torch.Tensor:
    """``-log N(x; mean, std^2 I)`` summed over pixels: ``(B,)``."""
    squared = ((x - mean) / std).pow(2).flatten(1)
    return 0.5 * squared.sum(1) + squared.shape[1] * (math.log(std) + 0.5 * math.log(2 * math.pi))


@in_float32
def negative_elbo(nll: torch.Tensor, kl: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0) -> torch.Tensor:
    """``mean_b [nll_b + beta * sum_j kl_bj]`` from ``nll (B,)`` and ``kl (B, k)``. With ``free_bits`` (nats per
    dimension) a dimension's batch-mean KL below it costs ``free_bits``, so the encoder is not pushed to collapse
    it."""
    kl_per_dim = kl.mean(0)
    if free_bits > 0:
        kl_per_dim = kl_per_dim.clamp(min=free_bits)
    return nll.mean() + beta * kl_per_dim.sum()


ACTIVE_UNIT_VARIANCE = 0.01


def active_units(mean_sum: torch.Tensor, square_sum: torch.Tensor, count: float) -> int:
    """Latent dimensions in use (Burda et al., 2016): ``Var_x(E_q[z_j]) > 0.01``, from the sums over ``count``
    images of the posterior means ``mu (k,)`` and their squares ``mu^2 (k,)``."""
    mean = mean_sum / count
    return int((square_sum / count - mean.pow(2) > ACTIVE_UNIT_VARIANCE).sum())
