"""Self-supervised methods, one module each: its options (``Options``), its modules, its loss call and its
evaluation capabilities (:mod:`pipeline.methods.capabilities`). ``METHODS`` maps ``method.name`` to the class."""

from __future__ import annotations

from pipeline import options
from pipeline.data.manifest import Manifest
from pipeline.methods.autoencoder import AutoEncoder
from pipeline.methods.base import Method, MethodOptions
from pipeline.methods.byol import BYOL
from pipeline.methods.dino import DINO
from pipeline.methods.mae import MAE
from pipeline.methods.simclr import SimCLR
from pipeline.methods.vae import VAE
from pipeline.models import EncoderSpec, ModelConfig, encoder_spec

METHODS: dict[str, type[Method]] = {
    method.Options.name: method for method in (SimCLR, BYOL, AutoEncoder, VAE, MAE, DINO)
}


def build_method(method_options: MethodOptions, spec: EncoderSpec, model: ModelConfig) -> Method:
    """The method that ``method_options`` (checked: they may come from Python) belong to, its encoder built from
    ``spec``."""
    options.check(method_options, "method")
    return METHODS[method_options.name](method_options, spec, model)


def trained_method(
    method_options: MethodOptions, model: ModelConfig, manifest: Manifest, state: dict, photo_size: int | None = None
) -> Method:
    """The method of ``method_options`` for the images of ``manifest`` (photos cropped to ``photo_size``), with
    the weights of checkpoint ``state``."""
    method = build_method(method_options, encoder_spec(model, manifest, photo_size), model)
    method.load_state_dict(state["model"])
    return method


__all__ = ["METHODS", "Method", "MethodOptions", "build_method", "trained_method"]
