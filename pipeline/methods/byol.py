"""BYOL: online encoder + projector + predictor regress an EMA target encoder + projector (no negatives).

The target is a copy of the online network, never seen by the optimizer (``requires_grad=False``) and updated
after each optimizer step as ``target = tau target + (1 - tau) online`` with
``tau = 1 - (1 - ema_base) (cos(pi k / K) + 1) / 2`` for step ``k`` of ``K`` (so resuming at step ``k`` gives the
same ``tau``). BatchNorm buffers are not averaged: the target runs in train mode with batch statistics, as in
BYOL, and keeps its own running statistics; only the online encoder is evaluated and exported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.losses import byol_loss
from pipeline.methods.base import Method
from pipeline.models import EncoderSpec, mlp_head
from pipeline.schedules import ema_momentum


class BYOL(Method):
    def __init__(self, config: JobConfig, spec: EncoderSpec) -> None:
        super().__init__(spec)
        self.projector = mlp_head(self.dim, config.model.head_hidden, config.model.head_dim)
        self.predictor = mlp_head(config.model.head_dim, config.model.head_hidden, config.model.head_dim)
        self.target = copy.deepcopy(nn.Sequential(self.encoder, self.projector)).requires_grad_(False)
        self.ema_base = config.method.ema_base
        self.tau = config.method.ema_base

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Views ``(B, C, H, W)`` -> symmetrised ``byol_loss(p1, z2') + byol_loss(p2, z1')``."""
        p1 = self.predictor(self.projector(self.encoder(view1)))
        p2 = self.predictor(self.projector(self.encoder(view2)))
        with torch.no_grad():
            z1, z2 = self.target(view1), self.target(view2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.tau = ema_momentum(step, total_steps, self.ema_base)
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        for target, source in zip(self.target.parameters(), online, strict=True):
            target.lerp_(source, 1 - self.tau)

    def epoch_metrics(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """``ema_tau``: the target's momentum after the epoch's last step (the same on every rank)."""
        return {"ema_tau": self.tau}
