"""What evaluation can ask of a method beyond its encoder. A method declares its capabilities in one place, its
class attribute ``capabilities``; what each one promises is the interface of the same name below."""

from __future__ import annotations

import enum
from typing import Protocol

import torch

from pipeline.models import EncoderSpec


class Capability(enum.Enum):
    RECONSTRUCTS = "reconstructs"  # images -> code -> images (:class:`Reconstructs`)
    GENERATIVE = "generative"  # a likelihood and a prior over the code (:class:`Generative`)
    MASKED = "masked"  # rebuilds the patches it did not see (:class:`MaskedReconstructs`)


class Reconstructs(Protocol):
    """Images to a ``spec.bottleneck``-unit code and back: evaluation reports reconstruction error beside PCA's
    with the same k, reconstructions, interpolations between codes and anomaly scores."""

    spec: EncoderSpec

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] -> ``(reconstruction (B, C, H, W), code (B, k))``."""
        ...

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, k)`` -> images ``(B, C, H, W)``."""
        ...


class Generative(Reconstructs, Protocol):
    """A likelihood and a standard normal prior over the code: evaluation reports the ELBO and decodes samples
    of the prior."""

    def elbo_terms(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(nll (B,), kl (B, k), mu (B, k))`` of images ``(B, C, H, W)``; ``sample=False`` decodes the mean."""
        ...


class MaskedReconstructs(Protocol):
    """Rebuilds images from a random subset of their patches: evaluation reports the error on the masked patches
    over the test split and a grid of masked inputs, reconstructions and originals."""

    def masked_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] -> ``(error on the masked patches (B,), masked input (B, C, H, W),
        reconstruction (B, C, H, W))``, images in [0, 1], the reconstruction keeping the visible patches."""
        ...
