"""MAE (He et al., 2022): a ViT encodes a random quarter of an image's patches, a light transformer decoder
rebuilds the rest, and the loss is the error on the masked patches only (their pixels standardised per patch with
``norm_pix_loss``). The exported encoder is the ViT on whole images: its pooled (class-token) features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from annotated_types import Gt, Interval

from pipeline.losses.masked_patches import (
    masked_patch_errors,
    masked_patch_loss,
    patchify,
    random_masking,
    standardised_patches,
    unpatchify,
)
from pipeline.methods.base import Method, MethodOptions
from pipeline.methods.capabilities import Capability
from pipeline.models import EncoderSpec, ModelConfig, build_encoder
from pipeline.models.masked_vit import MaskedDecoder, encode_visible, vit_body


@dataclass
class MAEOptions(MethodOptions):
    name: ClassVar[str] = "mae"
    mask_ratio: Annotated[float, Interval(gt=0, lt=1), "share of each image's patches masked"] = 0.75
    norm_pix_loss: Annotated[bool, "standardise each target patch's pixels (the paper's better setting)"] = True
    decoder_dim: Annotated[int, Gt(0), "the decoder's token width"] = 128
    decoder_depth: Annotated[int, Gt(0), "the decoder's transformer blocks"] = 2
    decoder_heads: Annotated[int, Gt(0), "the decoder's attention heads (dividing decoder_dim)"] = 4


class MAE(Method):
    Options = MAEOptions
    capabilities = frozenset({Capability.MASKED})
    num_views = 1

    def __init__(self, options: MAEOptions, spec: EncoderSpec, model: ModelConfig) -> None:
        super().__init__(spec)
        self.encoder, _ = build_encoder(spec)
        vit = vit_body(self.encoder)
        self.patch = vit.patch_embed.patch_size[0]
        self.patches = vit.patch_embed.num_patches
        self.keep = max(1, round(self.patches * (1 - options.mask_ratio)))
        self.norm_pix_loss = options.norm_pix_loss
        self.decoder = MaskedDecoder(
            vit.embed_dim,
            self.patches,
            vit.num_prefix_tokens,
            self.patch**2 * spec.channels,
            options.decoder_dim,
            options.decoder_depth,
            options.decoder_heads,
        )

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] -> ``(predicted patches (B, L, P), target patches (B, L, P), masked
        (B, L) bool)``, the targets being the normalised image's patches."""
        images = self.encoder[0](x)
        kept, masked = random_masking(len(x), self.patches, self.keep, x.device)
        prediction = self.decoder(encode_visible(self.encoder[1], images, kept), kept)
        return prediction, patchify(images, self.patch), masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> scalar loss on the masked patches."""
        prediction, target, masked = self.predict(x)
        return masked_patch_loss(prediction, target, masked, self.norm_pix_loss)

    def masked_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] -> ``(error on the masked patches (B,), masked input, reconstruction)``
        (:class:`~pipeline.methods.capabilities.MaskedReconstructs`): masked patches grey in the input; predicted
        ones (with ``norm_pix_loss`` given back each target patch's mean and spread, as the paper shows them)
        beside the visible ones in the reconstruction."""
        prediction, target, masked = self.predict(x)
        errors = masked_patch_errors(prediction, target, masked, self.norm_pix_loss)
        if self.norm_pix_loss:
            _, mean, std = standardised_patches(target)
            prediction = prediction * std + mean
        hidden = masked[..., None]
        normalise = self.encoder[0]

        def image(patches: torch.Tensor) -> torch.Tensor:
            pixels = unpatchify(patches.float(), self.patch, x.shape[1], x.shape[-1])
            return (pixels * normalise.std + normalise.mean).clamp(0, 1)

        grey = ((0.5 - normalise.mean) / normalise.std).flatten().repeat(self.patch**2).expand_as(target)  # (r, c, ch)
        return errors, image(torch.where(hidden, grey, target)), image(torch.where(hidden, prediction, target))
