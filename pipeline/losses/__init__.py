"""Losses: pure functions of embeddings, one per module, the equation in each docstring."""

from pipeline.losses.byol import byol_loss
from pipeline.losses.nt_xent import nt_xent

__all__ = ["byol_loss", "nt_xent"]
