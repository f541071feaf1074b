"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, final_fraction: float = 0.0) -> float:
    """Multiplier of the base LR: linear from ``1 / warmup_steps`` to 1 over the warm-up, then half a cosine to
    ``final_fraction`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's target momentum ``tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2``: ``base`` at step 0, 1 at the end."""
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def kl_weight(step: int | torch.Tensor, anneal_steps: int, beta: float) -> float | torch.Tensor:
    """KL annealing against posterior collapse: the KL weight ramps linearly from 0 to ``beta`` over
    ``anneal_steps`` steps (``beta`` at once when ``anneal_steps`` is 0). A tensor ``step`` (a counter on the
    training device) gives a tensor, so reading the weight inside a step does not wait for the device."""
    if anneal_steps <= 0:
        return beta
    ramp = step / anneal_steps
    return beta * (ramp.clamp(max=1.0) if isinstance(ramp, torch.Tensor) else min(1.0, ramp))
