"""Encoders: images float ``(B, C, H, W)`` in [0, 1] -> representation ``(B, D)``.

Every encoder starts by normalising with the data set's channel mean/std (stored as buffers), so an exported
encoder takes plain [0, 1] images and needs no preprocessing code.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torchvision
from torch import nn

from pipeline.data.manifest import Manifest
from pipeline.errors import ConfigError
from pipeline.models.options import Encoder, ModelConfig

ENCODERS = typing.get_args(Encoder)
SMALL_STEM_MAX_SIZE = 64  # model.cifar_stem unset: the small-image stem up to this size, the ImageNet stem above


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder without its training code."""

    arch: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    width: int = 24
    embed_dim: int = 256
    cifar_stem: bool = True
    bottleneck: int = 0  # > 0: a linear layer to this many units ends the encoder (autoencoders)
    code_activation: Literal["none", "sigmoid"] = "none"  # sigmoid: codes in (0, 1), as KL sparsity needs
    flatten: bool = False  # small_cnn: flatten the last feature map instead of pooling it (keeps where things are)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> EncoderSpec:
        return cls(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})


def encoder_spec(model: ModelConfig, manifest: Manifest, photo_size: int | None = None) -> EncoderSpec:
    """The spec of ``model``'s encoder for the (square) images of ``manifest``, or its photos cropped to
    ``photo_size``, normalised with their channel statistics."""
    if manifest.photos:
        if photo_size is None:
            raise ConfigError("photo shards need the size to crop them to (data.image_size)")
        size = photo_size
    else:
        size = manifest.image_shape[1]
    small_stem = size <= SMALL_STEM_MAX_SIZE if model.cifar_stem is None else model.cifar_stem
    return EncoderSpec(
        arch=model.encoder, channels=manifest.channels, image_size=size, mean=manifest.channel_mean,
        std=manifest.channel_std, width=model.width, embed_dim=model.embed_dim, cifar_stem=small_stem,
    )


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _block(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


def small_cnn(channels: int, image_size: int, width: int, embed_dim: int, flatten: bool) -> tuple[nn.Module, int]:
    """Conv-BN-ReLU blocks of ``width``, ``2 width`` (each followed by a 2x2 max-pool), ``4 width`` and
    ``embed_dim`` channels, then global average pooling: ``(B, C, H, W) -> (B, embed_dim)``; with ``flatten``
    the last map itself: ``(B, embed_dim * (H // 4) ** 2)``. Sized for 28-32 px on CPUs (width 24, 256-d: about
    700 images/s of SimCLR training on 2 cores)."""
    layers = [
        *_block(channels, width), nn.MaxPool2d(2),
        *_block(width, 2 * width), nn.MaxPool2d(2),
        *_block(2 * width, 4 * width), *_block(4 * width, embed_dim),
    ]
    if flatten:
        return nn.Sequential(*layers, nn.Flatten()), embed_dim * (image_size // 4) ** 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), embed_dim


def resnet(arch: str, channels: int, cifar_stem: bool) -> tuple[nn.Module, int]:
    """torchvision ResNet without its classifier; the CIFAR stem is a 3x3 stride-1 conv and no max-pool."""
    model = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem:
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, dim


def build_features(spec: EncoderSpec) -> tuple[nn.Sequential, int]:
    """``(features, D)``: normalisation and the encoder's body, ``(B, C, H, W)`` in [0, 1] -> ``(B, D)``, before
    any bottleneck. ``linear`` is the flattened pixels (a bottleneck makes it one linear map)."""
    if spec.arch == "small_cnn":
        body, dim = small_cnn(spec.channels, spec.image_size, spec.width, spec.embed_dim, spec.flatten)
    elif spec.arch in ("resnet18", "resnet50"):
        body, dim = resnet(spec.arch, spec.channels, spec.cifar_stem)
    elif spec.arch == "linear":
        body, dim = nn.Flatten(), spec.channels * spec.image_size**2
    else:
        raise ConfigError(f"model.encoder: unknown encoder {spec.arch!r}; choose one of {', '.join(ENCODERS)}")
    return nn.Sequential(Normalize(spec.mean, spec.std), body), dim


def build_encoder(spec: EncoderSpec) -> tuple[nn.Sequential, int]:
    """``(encoder, D)``: the encoder maps ``(B, C, H, W)`` in [0, 1] to ``(B, D)``: :func:`build_features`, then
    a linear layer to ``spec.bottleneck`` units if set (``D = bottleneck``) and the code activation."""
    features, dim = build_features(spec)
    layers = [*features]
    if spec.bottleneck:
        layers.append(nn.Linear(dim, spec.bottleneck))
        dim = spec.bottleneck
    if spec.code_activation == "sigmoid":
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers), dim
