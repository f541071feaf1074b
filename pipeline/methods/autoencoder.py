"""Autoencoders with a bottleneck of ``k`` units: undercomplete (conv), linear (``model.encoder: linear``, MSE:
spans the PCA subspace), sparse (L1 on the codes, or KL of each unit's mean sigmoid activation to a target rate,
which allows ``k > d``) and denoising (the input corrupted with ``method.corruption``, the target clean).

Loss: per-pixel MSE between the reconstruction and the clean image in [0, 1], plus
``sparsity_weight * penalty``. The exported encoder ends at the code ``(B, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval

from augment import Corruption
from augment.corrupt import CorruptionKind
from pipeline.losses import kl_sparsity, l1_sparsity
from pipeline.methods.base import MethodOptions, ReconstructionMethod
from pipeline.models import EncoderSpec, ModelConfig, build_encoder
from pipeline.options import When


@dataclass
class AutoEncoderOptions(MethodOptions):
    name: ClassVar[str] = "autoencoder"
    bottleneck: Annotated[int, Gt(0), "code size k"] = 32
    sparsity: Annotated[
        Literal["none", "l1", "kl"],
        "`l1` on the codes, or `kl` of each unit's mean sigmoid "
        "activation to `sparsity_target` (allows k above the pixels)",
    ] = "none"
    sparsity_weight: Annotated[float, Ge(0), When("sparsity", "l1", "kl"), "weight of the sparsity penalty"] = 1.0e-3
    sparsity_target: Annotated[float, Interval(gt=0, lt=1), When("sparsity", "kl"), "target firing rate"] = 0.05
    corruption: Annotated[
        CorruptionKind | None, "makes it a denoising autoencoder: the input corrupted, the target clean"
    ] = None
    corruption_amount: Annotated[
        float,
        Interval(ge=0, le=1),
        When("corruption", *get_args(CorruptionKind)),
        "noise std (gaussian) or pixel fraction",
    ] = 0.3


class AutoEncoder(ReconstructionMethod):
    Options = AutoEncoderOptions

    def __init__(self, options: AutoEncoderOptions, spec: EncoderSpec, model: ModelConfig) -> None:
        super().__init__(spec, options.bottleneck, "sigmoid" if options.sparsity == "kl" else "none")
        self.encoder, _ = build_encoder(self.spec)
        self.build_decoder()
        self.corruption = Corruption(options.corruption, options.corruption_amount) if options.corruption else None
        self.sparsity, self.sparsity_weight, self.sparsity_target = (
            options.sparsity,
            options.sparsity_weight,
            options.sparsity_target,
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
