"""Self-supervised methods: each builds its modules, computes its loss from views, and names its encoder."""

from __future__ import annotations

from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.methods.autoencoder import AutoEncoder
from pipeline.methods.base import Method
from pipeline.methods.byol import BYOL
from pipeline.methods.simclr import SimCLR
from pipeline.methods.vae import VAE
from pipeline.models import EncoderSpec

METHODS: dict[str, type[Method]] = {"simclr": SimCLR, "byol": BYOL, "autoencoder": AutoEncoder, "vae": VAE}


def build_method(config: JobConfig, spec: EncoderSpec) -> Method:
    if config.method.name not in METHODS:
        raise ConfigError(f"method.name: unknown method {config.method.name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[config.method.name](config, spec)


__all__ = ["METHODS", "Method", "build_method"]
