"""Losses run in float32 whatever autocast is doing around them.

Under bf16 autocast a matmul of unit vectors rounds cosine similarities by up to ~0.004 (at temperature 0.2,
logits by ~0.02), ``1 - 1e-6`` rounds to 1.0 (an infinite KL-sparsity penalty), and CUDA autocast refuses
``binary_cross_entropy`` outright. A loss is a few small tensors, so computing it in float32 costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

Loss = TypeVar("Loss", bound=Callable[..., torch.Tensor])


def _float(value: object) -> object:
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def in_float32(loss: Loss) -> Loss:
    """``loss`` with autocast off and its floating-point tensor arguments cast to float32."""

    @functools.wraps(loss)
    def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return loss(*map(_float, args), **{k: _float(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
