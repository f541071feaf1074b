"""Losses: pure functions of embeddings, one per module, the equation in each docstring."""

from pipeline.losses.elbo import active_units, bernoulli_nll, gaussian_kl, gaussian_nll, negative_elbo
from pipeline.losses.normalized_mse import byol_loss
from pipeline.losses.nt_xent import nt_xent
from pipeline.losses.sparsity import kl_sparsity, l1_sparsity

__all__ = [
    "active_units",
    "bernoulli_nll",
    "byol_loss",
    "gaussian_kl",
    "gaussian_nll",
    "kl_sparsity",
    "l1_sparsity",
    "negative_elbo",
    "nt_xent",
]
