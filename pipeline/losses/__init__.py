"""Losses: pure functions of embeddings, one per module, the equation in each docstring."""

from pipeline.losses.nt_xent import nt_xent

__all__ = ["nt_xent"]
