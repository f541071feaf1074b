"""What the shared training loop needs from a method, and the options every method declares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from pipeline.methods.capabilities import Capability
from pipeline.models import EncoderSpec
from pipeline.models.decoders import build_decoder


@dataclass
class MethodOptions:
    """The ``method`` section of a job: ``name`` picks the method, the subclass's fields are its own options."""

    name: ClassVar[str]


class Method(nn.Module):
    """``loss = method(*views)`` (subclasses define ``forward``); ``method.encoder`` is what gets evaluated and
    exported, ``method.spec`` rebuilds it.

    A method is constructed as ``Method(options, spec, model)``: its own ``Options``, the encoder's spec for the
    data, and the job's ``model`` section, of which it reads ``model_keys`` (e.g. head sizes) beyond what the
    encoder's spec holds. ``num_views`` views per image come from the ``augment.preset``
    augmenter; a method whose views must differ (``needs_augmentation``) refuses the preset ``none``.
    ``after_step`` runs after every optimizer step (e.g. an EMA update) with the global step and the total number
    of steps; ``epoch_metrics`` after every epoch (e.g. diagnostics gathered while training). What evaluation can
    do beyond probing the encoder is its ``capabilities`` (:mod:`pipeline.methods.capabilities`).
    """

    Options: ClassVar[type[MethodOptions]]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    model_keys: ClassVar[tuple[str, ...]] = ()  # keys of the job's `model` section it reads beyond the encoder's
    num_views: ClassVar[int] = 2
    needs_augmentation: ClassVar[bool] = False
    encoder: nn.Module

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook for methods with state outside the optimizer; nothing by default."""

    def epoch_metrics(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Metrics of the epoch that just ended, reported beside the loss; ``total`` sums a tensor over all ranks
        (every rank calls this). Nothing by default."""
        return {}


class ReconstructionMethod(Method):
    """A method with a decoder: its encoder ends at a ``bottleneck``-unit code (the small CNN keeps its last
    feature map's layout instead of pooling it; ``self.spec`` describes that encoder) and ``self.decoder``, which
    subclasses build after their encoder (:meth:`build_decoder`), mirrors it: code ``(B, k)`` -> images
    ``(B, C, H, W)``. Subclasses implement :class:`~pipeline.methods.capabilities.Reconstructs`'s ``reconstruct``."""

    capabilities = frozenset({Capability.RECONSTRUCTS})
    num_views = 1
    decoder: nn.Module

    def __init__(self, spec: EncoderSpec, bottleneck: int, code_activation: str = "none") -> None:
        super().__init__(
            dataclasses.replace(spec, bottleneck=bottleneck, flatten=True, code_activation=code_activation)
        )

    def build_decoder(self) -> None:
        self.decoder = build_decoder(self.spec)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, k)`` -> images ``(B, C, H, W)``."""
        return self.decoder(code)
