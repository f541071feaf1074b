"""The ``model`` section of a job: the encoder and the projection heads of the methods that have them (keys that
only such methods read: their ``model_keys``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Gt

Encoder = Literal["small_cnn", "resnet18", "resnet50", "linear"]


@dataclass
class ModelConfig:
    encoder: Annotated[Encoder, "the representation; `linear` (one linear map of the pixels) for autoencoders and "
                                "VAEs only"] = "small_cnn"
    width: Annotated[int, Gt(0), "small_cnn: channels of the first block"] = 24
    embed_dim: Annotated[int, Gt(0), "small_cnn: size of the representation"] = 256
    cifar_stem: Annotated[bool | None, "resnets: 3x3 stem without max-pool (small images); unset: for images up "
                                       "to 64 px, the ImageNet stem above"] = None
    head_hidden: Annotated[int, Gt(0), "hidden units of the projector (and predictor)"] = 512
    head_dim: Annotated[int, Gt(0), "output size of the projector (and predictor)"] = 128
