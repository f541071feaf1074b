"""SimCLR: encoder + MLP projection head trained with NT-Xent on two augmented views."""

from __future__ import annotations

import torch

from pipeline.config import JobConfig
from pipeline.losses import nt_xent
from pipeline.methods.base import Method
from pipeline.models import EncoderSpec, mlp_head


class SimCLR(Method):
    def __init__(self, config: JobConfig, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.projector = mlp_head(self.dim, config.model.head_hidden, config.model.head_dim)
        self.temperature = config.method.temperature

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Views ``(B, C, H, W)`` -> scalar NT-Xent of their projections."""
        return nt_xent(self.projector(self.encoder(view1)), self.projector(self.encoder(view2)), self.temperature)
