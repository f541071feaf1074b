"""BYOL: online encoder + projector + predictor regress an EMA target encoder + projector (no negatives).

The target is a copy of the online network, never seen by the optimizer (``requires_grad=False``) and updated
after each optimizer step as ``target = tau target + (1 - tau) online`` with
``tau = 1 - (1 - ema_base) (cos(pi k / K) + 1) / 2`` for step ``k`` of ``K`` (so resuming at step ``k`` gives the
same ``tau``). BatchNorm buffers are not averaged: the target runs in train mode with batch statistics, as in
BYOL, and keeps its own running statistics; only the online encoder is evaluated and exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from annotated_types import Interval
from torch import nn

from pipeline.losses import byol_loss
from pipeline.methods.base import Method, MethodOptions
from pipeline.methods.ema import follow, follower_of
from pipeline.models import EncoderSpec, ModelConfig, build_encoder, mlp_head
from pipeline.schedules import ema_momentum


@dataclass
class BYOLOptions(MethodOptions):
    name: ClassVar[str] = "byol"
    ema_base: Annotated[float, Interval(ge=0, lt=1), "target momentum at step 0, rising to 1 on a cosine"] = 0.99


class BYOL(Method):
    Options = BYOLOptions
    model_keys = ("head_hidden", "head_dim")
    needs_augmentation = True  # identical views make the regression trivial

    def __init__(self, options: BYOLOptions, spec: EncoderSpec, model: ModelConfig) -> None:
        super().__init__(spec)
        self.encoder, dim = build_encoder(spec)
        self.projector = mlp_head(dim, model.head_hidden, model.head_dim)
        self.predictor = mlp_head(model.head_dim, model.head_hidden, model.head_dim)
        self.target = follower_of(self.encoder, self.projector)
        self.ema_base = options.ema_base
        self.tau = options.ema_base

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Views ``(B, C, H, W)`` -> symmetrised ``byol_loss(p1, z2') + byol_loss(p2, z1')``."""
        p1 = self.predictor(self.projector(self.encoder(view1)))
        p2 = self.predictor(self.projector(self.encoder(view2)))
        with torch.no_grad():
            z1, z2 = self.target(view1), self.target(view2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` modules: the target's encoder and projector follow the online ones."""
        return [(self.encoder, self.target[0]), (self.projector, self.target[1])]

    def after_step(self, step: int, total_steps: int) -> None:
        self.tau = ema_momentum(step, total_steps, self.ema_base)
        follow(self.momentum_pairs(), self.tau)

    def epoch_metrics(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """``ema_tau``: the target's momentum after the epoch's last step (the same on every rank)."""
        return {"ema_tau": self.tau}
