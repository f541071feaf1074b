"""What the shared training loop needs from a method."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from pipeline.models import EncoderSpec, build_encoder
from pipeline.models.decoders import build_decoder


class Method(nn.Module):
    """``loss = method(*views)`` (subclasses define ``forward``); ``method.encoder`` is what gets evaluated and exported.

    ``num_views`` views per image come from the ``augment.preset`` augmenter. ``after_step`` runs after every
    optimizer step (e.g. an EMA update) with the global step and the total number of steps; ``epoch_metrics``
    after every epoch (e.g. diagnostics gathered while training). Methods that
    reconstruct their input also define ``reconstruct(x) -> (reconstruction, code)``, which evaluation uses.
    """

    num_views: int = 2

    def __init__(self, spec: EncoderSpec) -> None:
        """Builds ``self.encoder`` from ``spec`` (the method's own, e.g. with a bottleneck); ``self.dim`` is its
        output size."""
        super().__init__()
        self.spec = spec
        self.encoder, self.dim = build_encoder(spec)

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook for methods with state outside the optimizer; nothing by default."""

    def epoch_metrics(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Metrics of the epoch that just ended, reported beside the loss; ``total`` sums a tensor over all ranks
        (every rank calls this). Nothing by default."""
        return {}


class ReconstructionMethod(Method):
    """A method with a decoder: the encoder ends at a ``bottleneck``-unit code (the small CNN keeps its last
    feature map's layout instead of pooling it) and ``self.decoder`` mirrors it, code ``(B, k)`` -> images."""

    num_views = 1

    def __init__(self, spec: EncoderSpec, bottleneck: int, code_activation: str = "none") -> None:
        code_spec = dataclasses.replace(spec, bottleneck=bottleneck, flatten=True, code_activation=code_activation)
        super().__init__(code_spec)
        self.decoder = build_decoder(self.spec)
