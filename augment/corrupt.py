"""Input corruptions for denoising autoencoders: pure functions of a float batch ``(B, C, H, W)`` in [0, 1].

* ``gaussian``: ``x + amount * N(0, 1)``, clipped to [0, 1].
* ``mask``: each pixel (all channels together) set to 0 with probability ``amount``.
* ``salt_pepper``: each pixel replaced with probability ``amount``, half by 0 (pepper), half by 1 (salt).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from pipeline.errors import ConfigError


def _pixel_uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) of shape ``(B, 1, H, W)``: one draw per pixel, shared by its channels."""
    return torch.rand((x.shape[0], 1, *x.shape[2:]), generator=generator, device=x.device, dtype=x.dtype)


def gaussian_noise(x: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + amount * noise).clamp(0.0, 1.0)


def masking(x: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return x * (_pixel_uniform(x, generator) >= amount)


def salt_and_pepper(x: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    u = _pixel_uniform(x, generator)
    out = torch.where(u < amount / 2, torch.zeros_like(x), x)
    return torch.where((u >= amount / 2) & (u < amount), torch.ones_like(x), out)


CorruptionKind = Literal["gaussian", "mask", "salt_pepper"]
CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian": gaussian_noise,
    "mask": masking,
    "salt_pepper": salt_and_pepper,
}


def corrupt(x: torch.Tensor, kind: str, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply corruption ``kind`` of strength ``amount`` (noise std or pixel fraction) to ``x (B, C, H, W)``."""
    if kind not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {kind!r}: choose one of {', '.join(CORRUPTIONS)}")
    if not 0.0 <= amount <= (float("inf") if kind == "gaussian" else 1.0):
        raise ConfigError(f"corruption amount for {kind!r} out of range: {amount}")
    return CORRUPTIONS[kind](x, amount, generator)


class Corruption(nn.Module):
    """Module form of :func:`corrupt` for use inside a method: ``Corruption("mask", 0.3)(x)``."""

    def __init__(self, kind: str, amount: float) -> None:
        super().__init__()
        corrupt(torch.zeros(1, 1, 1, 1), kind, amount)  # validate now, not at the first batch
        self.kind, self.amount = kind, amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return corrupt(x, self.kind, self.amount)
