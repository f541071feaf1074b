"""Autoencoders with a bottleneck of ``k`` units: undercomplete (conv), linear (``model.encoder: linear``, MSE:
spans the PCA subspace), sparse (L1 on the codes, or KL of each unit's mean sigmoid activation to a target rate,
which allows ``k > d``) and denoising (the input corrupted with ``method.corruption``, the target clean).

Loss: per-pixel MSE between the reconstruction and the clean image in [0, 1], plus
``sparsity_weight * penalty``. The exported encoder ends at the code ``(B, k)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from augment import Corruption
from pipeline.config import JobConfig, one_of
from pipeline.losses import kl_sparsity, l1_sparsity
from pipeline.methods.base import ReconstructionMethod
from pipeline.models import EncoderSpec

SPARSITY = ("none", "l1", "kl")


class AutoEncoder(ReconstructionMethod):
    def __init__(self, config: JobConfig, spec: EncoderSpec) -> None:
        options = config.method
        sparsity = one_of("method.sparsity", options.sparsity, SPARSITY)
        super().__init__(spec, options.bottleneck, "sigmoid" if sparsity == "kl" else "none")
        self.corruption = Corruption(options.corruption, options.corruption_amount) if options.corruption else None
        self.sparsity, self.sparsity_weight, self.sparsity_target = (
            options.sparsity, options.sparsity_weight, options.sparsity_target,
        )

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction (B, C, H, W), code (B, k))`` of ``x``."""
        code = self.encoder(x)
        return self.decoder(code), code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> scalar loss (corruption only while training)."""
        inputs = self.corruption(x) if self.corruption is not None and self.training else x
        reconstruction, code = self.reconstruct(inputs)
        loss = F.mse_loss(reconstruction, x)
        if self.sparsity == "l1":
            loss = loss + self.sparsity_weight * l1_sparsity(code)
        elif self.sparsity == "kl":
            loss = loss + self.sparsity_weight * kl_sparsity(code, self.sparsity_target)
        return loss
