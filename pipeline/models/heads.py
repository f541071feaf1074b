"""MLP heads: projection (SimCLR, BYOL), predictor (BYOL) and DINO's head onto prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """``(B, in_dim) -> (B, out_dim)``: ``layers - 1`` blocks of Linear-BN-ReLU, then a Linear."""
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    modules.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*modules)


class PrototypeHead(nn.Module):
    """DINO's head, ``(B, in_dim) -> (B, prototypes)``: an MLP (``in_dim -> hidden -> hidden -> bottleneck``, GELU
    between), the result L2-normalised, then a weight-normalised linear layer without bias whose norms stay 1 (the
    paper's ``norm_last_layer``): each output is the cosine to one prototype."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        magnitude = self.last.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The cosines to the prototypes in float32 under autocast too: divided by DINO's teacher temperature (0.04),
        bf16's rounding of a cosine (up to ~0.004) would move a logit by 0.1."""
        z = self.mlp(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.last(F.normalize(z.float(), dim=-1))
