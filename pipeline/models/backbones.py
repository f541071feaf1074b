"""Backbones of torchvision and timm by name, without their classifier: ``torchvision:<name>`` (any classification
model of ``torchvision.models``) and ``timm:<name>`` (any model ``timm.create_model`` knows, built with
``num_classes=0``). Each maps normalised images ``(B, C, H, W)`` to pooled features ``(B, D)``; ``D`` is read from
the model. Their ``state_dict`` keys are the library's own, so the weights load back into the library's model
(:func:`load_recipe` says how)."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from pipeline.errors import ConfigError

LIBRARIES = ("torchvision", "timm")
ALIASES = {"resnet18": "torchvision:resnet18", "resnet50": "torchvision:resnet50"}  # the names of earlier jobs
RESNET_STEMS = ("resnet", "resnext", "wide_resnet")  # torchvision models with conv1 + maxpool, as ResNet has


def library_model(arch: str) -> tuple[str, str] | None:
    """``(library, name)`` of a library backbone (aliases resolved), ``None`` for the built-in encoders."""
    arch = ALIASES.get(arch, arch)
    if ":" not in arch:
        return None
    library, name = arch.split(":", 1)
    if library not in LIBRARIES:
        raise ConfigError(
            f"model.encoder: unknown library {library!r} in {arch!r}; use torchvision:<name> or timm:<name>"
        )
    return library, name


def has_resnet_stem(arch: str) -> bool:
    """Whether ``model.cifar_stem`` can replace the stem of ``arch`` (torchvision's ResNet family)."""
    model = library_model(arch)
    return model is not None and model[0] == "torchvision" and model[1].startswith(RESNET_STEMS)


def _library(library: str) -> Any:
    """``library`` imported on first use: seconds (timm 4, torchvision 2.5) that every process of a job without a
    library backbone would pay."""
    return importlib.import_module(library)


def check_name(library: str, name: str) -> None:
    """Raise naming ``model.encoder`` when ``library`` has no classification model ``name``."""
    if library == "torchvision":
        models = _library("torchvision").models
        if name not in models.list_models(module=models):
            raise ConfigError(
                f"model.encoder: torchvision has no classification model {name!r}; see "
                "torchvision.models.list_models(module=torchvision.models)"
            )
    if library == "timm" and not _library("timm").is_model(name):
        raise ConfigError(f"model.encoder: timm has no model {name!r}; see timm.list_models()")


def constructor_args(library: str, name: str, channels: int, image_size: int, args: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``library``'s constructor gets for ``name`` (beyond ``weights``/``num_classes``):
    the job's ``args`` and, for timm, ``in_chans`` and the ``img_size`` of models that take one (ViTs, Swin, ...),
    found by building the model on the meta device (no memory, milliseconds)."""
    if library == "torchvision":
        return dict(args)
    args = {"in_chans": channels, **args}
    if "img_size" in args:
        return args
    try:
        with torch.device("meta"):
            _library("timm").create_model(name, num_classes=0, img_size=image_size, **args)
    except TypeError as error:
        if "img_size" not in str(error):
            raise ConfigError(f"model.backbone_args: timm:{name} refuses them ({error})") from None
        return args
    return {**args, "img_size": image_size}


def library_backbone(
    library: str, name: str, channels: int, small_stem: bool, args: dict[str, Any]
) -> tuple[nn.Module, int]:
    """``(backbone, D)``: ``library``'s model ``name`` built with ``args`` (:func:`constructor_args`) and random
    weights, its classifier removed. torchvision's ResNets take ``channels`` and the small-image stem (3x3 stride-1
    conv, no max-pool) by replacing ``conv1`` and ``maxpool``; other torchvision models take 3 channels."""
    if library == "timm":
        model = _library("timm").create_model(name, pretrained=False, num_classes=0, **args)
        return model, getattr(model, "head_hidden_size", None) or model.num_features
    try:
        model = _library("torchvision").models.get_model(name, weights=None, **args)
    except TypeError as error:
        raise ConfigError(f"model.backbone_args: torchvision:{name} refuses them ({error})") from None
    if getattr(model, "aux_logits", False):
        raise ConfigError(
            f"model.encoder: torchvision:{name} returns auxiliary outputs when training; set "
            "model.backbone_args={aux_logits: false}"
        )
    if small_stem or channels != 3:
        if not has_resnet_stem(f"torchvision:{name}"):
            raise ConfigError(
                f"model.encoder: torchvision:{name} takes 3-channel images; for {channels} channels use "
                f"a torchvision ResNet or timm:{name} (in_chans)"
            )
        width = model.conv1.out_channels
        model.conv1 = (
            nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
            if small_stem
            else nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False)
        )
        if small_stem:
            model.maxpool = nn.Identity()
    path, classifier = classifier_of(model)
    model.set_submodule(path, nn.Identity())
    return model, classifier.in_features


def classifier_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(path, layer)`` of a torchvision classifier's output layer: its last ``nn.Linear``."""
    linears = [(path, module) for path, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"model.encoder: {type(model).__name__} has no linear classifier to remove")
    return linears[-1]


def classifier_path(library: str, name: str, args: dict[str, Any]) -> str | None:
    """Where the library's model ``name`` keeps the classifier that the backbone lacks (``None``: timm, whose
    ``num_classes=0`` models end at the features); built on the meta device."""
    if library == "timm":
        return None
    with torch.device("meta"):
        return classifier_of(_library("torchvision").models.get_model(name, weights=None, **args))[0]


def load_recipe(library: str, name: str, args: dict[str, Any], channels: int, small_stem: bool, file: str) -> str:
    """Python that rebuilds the backbone from ``file`` (its ``backbone.safetensors``) with the library alone, as
    ``model``; only the classifier is left at its initial weights."""
    if library == "timm":
        arguments = "".join(f", {key}={value!r}" for key, value in args.items())
        return (
            "import timm\n"
            f"model = timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay={{'file': {file!r}}}, "
            f"num_classes=0{arguments})  # num_classes=K for a new K-class head\n"
        )
    arguments = "".join(f", {key}={value!r}" for key, value in args.items())
    lines = [
        "import torch, torchvision",
        "from safetensors.torch import load_file",
        f"model = torchvision.models.get_model({name!r}, weights=None{arguments})",
    ]
    if small_stem:
        lines += [
            f"model.conv1 = torch.nn.Conv2d({channels}, model.conv1.out_channels, 3, 1, 1, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    elif channels != 3:
        lines.append(f"model.conv1 = torch.nn.Conv2d({channels}, model.conv1.out_channels, 7, 2, 3, bias=False)")
    lines.append(
        f"missing, unexpected = model.load_state_dict(load_file({file!r}), strict=False)  # missing: the "
        "classifier only"
    )
    return "\n".join(lines) + "\n"
