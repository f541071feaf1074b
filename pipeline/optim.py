"""Optimizers: Adam/AdamW and LARS, with weight decay (and LARS adaptation) off for BatchNorm and biases."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import OptimConfig
from pipeline.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "lars")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio ``eta ||w|| / (||g|| + wd ||w||)`` (You et al., 2017), as
    used by SimCLR. Groups with ``lars_exclude=True`` (BN, biases) take plain momentum SGD without decay."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, 1.0)
                    grad = grad * trust
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(grad)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of conv/linear layers with decay; BatchNorm parameters and biases (1-d) without."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer of ``config`` with its LR scaled linearly by ``global_batch / 256``."""
    lr = config.lr * global_batch / 256
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=lr)  # L2 decay, applied to the decay group only
    if config.name == "lars":
        return LARS(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ConfigError(f"optim.name: unknown optimizer {config.name!r}; choose one of {', '.join(OPTIMIZERS)}")
