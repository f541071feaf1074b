"""Optimizers and their options (the ``optim`` section): Adam/AdamW and LARS, with weight decay (and LARS
adaptation) off for normalisation layers, biases and the parameters a model names in ``no_weight_decay()`` (timm's
convention: a ViT's position embedding and class token)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt, Interval
from torch import nn

from pipeline import options
from pipeline.options import When


@dataclass
class OptimConfig:
    name: Annotated[Literal["adamw", "adam", "lars"], "optimizer"] = "adamw"
    lr: Annotated[float, Gt(0), "at 256 images per global step; scaled linearly with the global batch"] = 2e-3
    weight_decay: Annotated[float, Ge(0), "not applied to BatchNorm weights and biases"] = 1e-4
    momentum: Annotated[float, Interval(ge=0, lt=1), When("name", "lars"), "momentum"] = 0.9
    warmup_epochs: Annotated[float, Ge(0), "linear warm-up, then a cosine to 0"] = 1.0


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al., 2017, as in lightly and solo-learn): for each
    weight ``w`` with gradient ``g``, ``trust = eta ||w|| / (||g|| + wd ||w||)`` (1 where either norm is 0), then
    ``v = momentum v + trust (g + wd w)`` and ``w -= lr v``. Groups with ``lars_exclude=True`` (BN, biases) take
    plain momentum SGD without decay: ``v = momentum v + g``."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        """One step for all parameters of a group at once (``torch._foreach_*``: a few kernels per group, not a
        few per parameter; nothing read back to the host)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                w_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm(grads))
                ratio = group["eta"] * w_norms / (g_norms + group["weight_decay"] * w_norms)
                trust = torch.where((w_norms > 0) & (g_norms > 0), ratio, 1.0)
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                torch._foreach_mul_(grads, per_element(trust, grads))
            buffers = [self._momentum_buffer(p) for p in params]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss

    def _momentum_buffer(self, parameter: torch.Tensor) -> torch.Tensor:
        state = self.state[parameter]
        if "momentum_buffer" not in state:  # (``setdefault`` would allocate and zero a new one every step)
            state["momentum_buffer"] = torch.zeros_like(parameter)
        return state["momentum_buffer"]


def per_element(factors: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``factors`` ``(N,)``, one per tensor, as ``N`` tensors of each tensor's size and strides, every element its
    factor: a list ``torch._foreach_mul_`` multiplies in its fused path (0-d factors would send it down a kernel
    per tensor). One buffer of the tensors' total size, filled on the device from views (no host copy)."""
    sizes = [t.numel() for t in tensors]
    flat = torch.cat([factor.expand(size) for factor, size in zip(factors.unbind(), sizes, strict=True)])
    starts = itertools.accumulate(sizes, initial=0)
    return [flat.as_strided(t.size(), t.stride(), start) for t, start in zip(tensors, starts, strict=False)]


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of the parameters that submodules of ``model`` exempt from decay with ``no_weight_decay()``."""
    names = set()
    for prefix, module in model.named_modules():
        if callable(exempt := getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{name}" if prefix else name for name in exempt()}
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of conv/linear layers with decay; normalisation parameters and biases (1-d) and the
    :func:`no_weight_decay` ones without."""
    exempt = no_weight_decay(model)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 or name in exempt else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer of ``config`` (checked: it may come from Python) with its LR scaled linearly by
    ``global_batch / 256``."""
    options.check(config, "optim")
    lr = config.lr * global_batch / 256
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=lr)  # L2 decay, applied to the decay group only
    return LARS(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
