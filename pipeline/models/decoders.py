"""Decoders for autoencoders: codes ``(B, k)`` -> images ``(B, C, H, W)``."""

from __future__ import annotations

from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.encoders import EncoderSpec


def check_decodable(spec: EncoderSpec) -> None:
    """Raise naming the image size when the decoder of ``spec`` cannot produce it."""
    if spec.arch != "linear" and spec.image_size % 4:
        raise ConfigError(f"the conv decoder needs an image size divisible by 4, got {spec.image_size}")


def build_decoder(spec: EncoderSpec) -> nn.Module:
    """The mirror of ``build_encoder(spec)``: a linear map for ``linear`` (no nonlinearity, so the pair spans the
    PCA subspace under MSE), else a transposed-conv decoder ending in a sigmoid (images in [0, 1])."""
    channels, size, k = spec.channels, spec.image_size, spec.bottleneck
    if spec.arch == "linear":
        return nn.Sequential(nn.Linear(k, channels * size * size), nn.Unflatten(1, (channels, size, size)))
    check_decodable(spec)
    width, start = spec.width, size // 4
    return nn.Sequential(
        nn.Linear(k, 4 * width * start * start),
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (4 * width, start, start)),
        nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, channels, 3, padding=1),
        nn.Sigmoid(),
    )
