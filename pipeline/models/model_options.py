"""The ``model`` section of a job: the encoder, the options of each kind of encoder (:attr:`ModelConfig.kind`), and
the projection heads of the methods that have them (keys that only such methods read: their ``model_keys``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from annotated_types import Gt

from pipeline.models.backbones import library_model
from pipeline.options import When

SMALL_CNN, LIBRARIES = When("kind", "small_cnn"), When("kind", "torchvision", "timm")


@dataclass
class ModelConfig:
    encoder: Annotated[
        str,
        "the representation: `small_cnn`, `torchvision:<name>` (a classification model of "
        "torchvision.models), `timm:<name>` (any timm model), `resnet18`/`resnet50` "
        "(torchvision's), or `linear` (one linear map of the pixels; autoencoders and VAEs "
        "only)",
    ] = "small_cnn"
    backbone_args: Annotated[
        dict[str, Any],
        LIBRARIES,
        "constructor arguments, e.g. {patch_size: 4} for a ViT on "
        "small images (timm ViTs get the image size by themselves)",
    ] = field(default_factory=dict)
    width: Annotated[int, Gt(0), SMALL_CNN, "channels of the first block"] = 24
    embed_dim: Annotated[int, Gt(0), SMALL_CNN, "size of the representation"] = 256
    last_kernel: Annotated[
        Literal[1, 3],
        SMALL_CNN,
        "kernel of the last convolution (1: a 1x1 projection to embed_dim, 1.7-1.9x the epochs per minute at 1024-d)",
    ] = 3
    cifar_stem: Annotated[
        bool | None,
        When("kind", "torchvision"),
        "ResNets: 3x3 stem without max-pool (small images); unset: for images up to 64 px, the ImageNet stem above",
    ] = None
    head_hidden: Annotated[int, Gt(0), "hidden units of the projector (and predictor)"] = 512
    head_dim: Annotated[int, Gt(0), "output size of the projector (and predictor)"] = 128

    @property
    def kind(self) -> str:
        """What decides which keys apply: ``small_cnn``, ``linear``, or the library of a library backbone
        (``torchvision``, ``timm``)."""
        library = library_model(self.encoder)
        return self.encoder if library is None else library[0]
