"""Losses: pure functions of embeddings, one per module, the equation in each docstring."""

from pipeline.losses.byol import byol_loss
from pipeline.losses.nt_xent import nt_xent
from pipeline.losses.sparsity import kl_sparsity, l1_sparsity

__all__ = ["byol_loss", "kl_sparsity", "l1_sparsity", "nt_xent"]
