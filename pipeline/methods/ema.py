"""Weights that follow others by an exponential moving average: BYOL's target network and DINO's teacher. A method
makes its follower with :func:`follower_of` and declares its ``(online, follower)`` module pairs, as solo-learn's
``momentum_pairs``; one call of :func:`follow` moves every follower's parameters at once."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


def follower_of(*modules: nn.Module) -> nn.Sequential:
    """A copy of ``modules`` in sequence that the optimizer never sees (``requires_grad=False``): it changes only by
    :func:`follow`."""
    return copy.deepcopy(nn.Sequential(*modules)).requires_grad_(False)


@torch.no_grad()
def follow(pairs: Sequence[tuple[nn.Module, nn.Module]], tau: float) -> None:
    """``follower = tau follower + (1 - tau) online`` for every parameter of each ``(online, follower)`` pair of
    modules of the same structure, in a few fused kernels (``torch._foreach_lerp_``) rather than a few per
    parameter. BatchNorm's running statistics are buffers, not parameters: each follower keeps its own."""
    online = [p for source, _ in pairs for p in source.parameters()]
    followers = [p for _, follower in pairs for p in follower.parameters()]
    if len(online) != len(followers):
        raise ValueError(f"momentum pairs differ in parameters: {len(online)} online, {len(followers)} following")
    torch._foreach_lerp_(followers, online, 1 - tau)
