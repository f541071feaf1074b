"""What a trained decoder makes: samples from a generative method's prior and paths between two images' codes."""

from __future__ import annotations

import torch

from pipeline.methods.capabilities import Generative, Reconstructs


@torch.no_grad()
def prior_samples(method: Generative, count: int, seed: int = 0) -> torch.Tensor:
    """Decoder means ``(count, C, H, W)`` of codes ``z ~ N(0, I)`` drawn with ``seed``."""
    method.eval()
    z = torch.randn(count, method.spec.bottleneck, generator=torch.Generator().manual_seed(seed))
    return method.decode(z.to(next(method.parameters()).device))


@torch.no_grad()
def interpolations(method: Reconstructs, starts: torch.Tensor, ends: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """One row ``(steps, C, H, W)`` per pair of images ``starts[i], ends[i]`` ``(R, C, H, W)``: the decoded codes
    ``(1 - t) code(start) + t code(end)`` for ``t`` from 0 to 1."""
    method.eval()
    device = next(method.parameters()).device
    code_a, code_b = method.reconstruct(starts.to(device))[1], method.reconstruct(ends.to(device))[1]
    t = torch.linspace(0, 1, steps, device=device)[:, None]
    return [
        method.decode(torch.lerp(a.expand(steps, -1), b.expand(steps, -1), t))
        for a, b in zip(code_a, code_b, strict=False)
    ]
