"""SimCLR: encoder + MLP projection head trained with NT-Xent on two augmented views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from annotated_types import Gt

from pipeline.losses import nt_xent
from pipeline.methods.base import Method, MethodOptions
from pipeline.models import EncoderSpec, ModelConfig, build_encoder, mlp_head


@dataclass
class SimCLROptions(MethodOptions):
    name: ClassVar[str] = "simclr"
    temperature: Annotated[float, Gt(0), "NT-Xent temperature"] = 0.5


class SimCLR(Method):
    Options = SimCLROptions
    model_keys = ("head_hidden", "head_dim")
    needs_augmentation = True  # identical views make a trivial positive pair

    def __init__(self, options: SimCLROptions, spec: EncoderSpec, model: ModelConfig) -> None:
        super().__init__(spec)
        self.encoder, dim = build_encoder(spec)
        self.projector = mlp_head(dim, model.head_hidden, model.head_dim)
        self.temperature = options.temperature

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Views ``(B, C, H, W)`` -> scalar NT-Xent of their projections."""
        return nt_xent(self.projector(self.encoder(view1)), self.projector(self.encoder(view2)), self.temperature)
