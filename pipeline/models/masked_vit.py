"""A timm ViT that sees only some of its patches, and the light decoder that fills in the rest: the two halves of
a masked autoencoder (He et al., 2022). The encoder is the job's ``timm:`` ViT itself (its weights are what is
exported), run on the visible patches' tokens; the decoder exists only while pretraining."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError


def vit_body(encoder: nn.Sequential) -> nn.Module:
    """The timm ViT of ``encoder`` (normalisation, then the ViT), or a :class:`ConfigError` naming
    ``model.encoder``."""
    body = encoder[1]
    if not all(hasattr(body, name) for name in ("patch_embed", "_pos_embed", "blocks", "num_prefix_tokens")):
        raise ConfigError(
            f"model.encoder: method mae needs a timm ViT (e.g. timm:vit_tiny_patch16_224 with "
            f"model.backbone_args={{patch_size: 4}} at 28 px), not {type(body).__name__}"
        )
    return body


def encode_visible(vit: nn.Module, images: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Normalised images ``(B, C, H, W)`` -> the ViT's tokens ``(B, P + keep, D)`` (``P`` prefix tokens, e.g. the
    class token) when only the patches ``kept (B, keep)`` are visible: every patch embedded with its position,
    the masked ones dropped before the first block, as ``forward_features`` runs otherwise."""
    tokens = vit._pos_embed(vit.patch_embed(images))
    prefix, patches = tokens[:, : vit.num_prefix_tokens], tokens[:, vit.num_prefix_tokens :]
    visible = patches.gather(1, kept[..., None].expand(-1, -1, patches.shape[-1]))
    return vit.norm(vit.blocks(vit.norm_pre(torch.cat([prefix, visible], 1))))


class MaskedDecoder(nn.Module):
    """Visible tokens ``(B, P + keep, D)`` -> every patch's pixels ``(B, L, patch_values)``: a linear map to
    ``dim``, a learned mask token at each masked position, learned positions, ``depth`` transformer blocks of
    ``heads`` heads (timm's), a linear map to the patch's values."""

    def __init__(
        self, encoder_dim: int, patches: int, prefix: int, patch_values: int, dim: int, depth: int, heads: int
    ) -> None:
        from timm.models.vision_transformer import Block

        super().__init__()
        self.prefix = prefix
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, prefix + patches, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_values)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        batch, dim = x.shape[0], x.shape[-1]
        patches = self.mask_token.to(x.dtype).expand(batch, self.position.shape[1] - self.prefix, dim)
        patches = patches.scatter(1, kept[..., None].expand(-1, -1, dim), x[:, self.prefix :])
        x = torch.cat([x[:, : self.prefix], patches], 1) + self.position
        return self.head(self.norm(self.blocks(x))[:, self.prefix :])
