"""Encoders: images float ``(B, C, H, W)`` in [0, 1] -> representation ``(B, D)``.

Every encoder starts by normalising with the data set's channel mean/std (stored as buffers), so an exported
encoder takes plain [0, 1] images and needs no preprocessing code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from pipeline.data.manifest import Manifest
from pipeline.errors import ConfigError
from pipeline.models.backbones import (
    ALIASES,
    check_name,
    constructor_args,
    has_resnet_stem,
    library_backbone,
    library_model,
)
from pipeline.models.model_options import ModelConfig

BUILT_IN = ("small_cnn", "linear")
ENCODERS = (*BUILT_IN, *ALIASES, "torchvision:<name>", "timm:<name>")  # what model.encoder accepts
SMALL_STEM_MAX_SIZE = 64  # model.cifar_stem unset: the small-image stem up to this size, the ImageNet stem above


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder without its training code."""

    arch: str  # small_cnn, linear, torchvision:<name> or timm:<name> (resnet18 and resnet50: torchvision's)
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    width: int = 24
    embed_dim: int = 256
    last_kernel: int = 3  # small_cnn: 1 or 3
    cifar_stem: bool = True
    bottleneck: int = 0  # > 0: a linear layer to this many units ends the encoder (autoencoders)
    code_activation: Literal["none", "sigmoid"] = "none"  # sigmoid: codes in (0, 1), as KL sparsity needs
    flatten: bool = False  # small_cnn: flatten the last feature map instead of pooling it (keeps where things are)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # a library backbone's constructor arguments

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
    library = check_encoder(model)
    small_stem = has_resnet_stem(model.encoder) and (
        size <= SMALL_STEM_MAX_SIZE if model.cifar_stem is None else model.cifar_stem
    )
    args = constructor_args(*library, manifest.channels, size, model.backbone_args) if library else {}
    return EncoderSpec(
        arch=ALIASES.get(model.encoder, model.encoder),
        channels=manifest.channels,
        image_size=size,
        mean=manifest.channel_mean,
        std=manifest.channel_std,
        width=model.width,
        embed_dim=model.embed_dim,
        last_kernel=model.last_kernel,
        cifar_stem=small_stem,
        backbone_args=args,
    )


def check_encoder(model: ModelConfig) -> tuple[str, str] | None:
    """Raise naming the key when ``model``'s encoder, its ``backbone_args`` or ``cifar_stem`` cannot be built;
    returns ``(library, name)`` of a library backbone, ``None`` for a built-in encoder."""
    library = library_model(model.encoder)
    if library is None and model.encoder not in BUILT_IN:
        raise ConfigError(f"model.encoder: unknown encoder {model.encoder!r}; choose one of {', '.join(ENCODERS)}")
    if library is None and model.backbone_args:
        raise ConfigError(
            f"model.backbone_args: {model.encoder} is built in and takes none; they are for "
            "torchvision:<name> and timm:<name>"
        )
    if model.cifar_stem and library is not None and not has_resnet_stem(model.encoder):
        raise ConfigError(
            f"model.cifar_stem: {model.encoder} has no ResNet stem to replace; unset it (timm models "
            "take their own options in model.backbone_args)"
        )
    if library is not None:
        check_name(*library)
    return library


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _block(inputs: int, outputs: int, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    ]


def small_cnn(
    channels: int, image_size: int, width: int, embed_dim: int, flatten: bool, last_kernel: int
) -> tuple[nn.Module, int]:
    """Conv-BN-ReLU blocks of ``width``, ``2 width`` (each followed by a 2x2 max-pool), ``4 width`` and
    ``embed_dim`` channels (3x3 convolutions; the last one ``last_kernel`` square), then global average pooling:
    ``(B, C, H, W) -> (B, embed_dim)``; with ``flatten`` the last map itself: ``(B, embed_dim * (H // 4) ** 2)``.
    Sized for 28-32 px on CPUs (width 24, 256-d: about 700 images/s of SimCLR training on 2 cores). At 1024-d the
    last 3x3 convolution is ~94% of the multiply-adds; ``last_kernel=1`` cuts them ~6x."""
    layers = [
        *_block(channels, width),
        nn.MaxPool2d(2),
        *_block(width, 2 * width),
        nn.MaxPool2d(2),
        *_block(2 * width, 4 * width),
        *_block(4 * width, embed_dim, last_kernel),
    ]
    if flatten:
        return nn.Sequential(*layers, nn.Flatten()), embed_dim * (image_size // 4) ** 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), embed_dim


def build_features(spec: EncoderSpec) -> tuple[nn.Sequential, int]:
    """``(features, D)``: normalisation and the encoder's body, ``(B, C, H, W)`` in [0, 1] -> ``(B, D)``, before
    any bottleneck. ``linear`` is the flattened pixels (a bottleneck makes it one linear map); library backbones
    are :func:`~pipeline.models.backbones.library_backbone` (the body, ``features[1]``, keeps the library's keys)."""
    library = library_model(spec.arch)
    if library is not None:
        body, dim = library_backbone(*library, spec.channels, spec.cifar_stem, spec.backbone_args)
    elif spec.arch == "small_cnn":
        body, dim = small_cnn(
            spec.channels, spec.image_size, spec.width, spec.embed_dim, spec.flatten, spec.last_kernel
        )
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
