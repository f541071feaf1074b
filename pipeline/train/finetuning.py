"""Fine-tuning's step for the harness: an encoder (an export's weights, or a fresh one of the same spec) with a
linear head, trained end to end with cross-entropy on one augmented view of each labeled image.

The job is the fine-tuning's own: ``data.shards`` the labeled subset, ``data.batch_size`` the images per step per
rank, ``augment.preset`` the views, ``train.epochs`` this fraction's epochs, and the ``finetune`` section's
optimizer: AdamW, the head at ``finetune.lr`` and the encoder at ``finetune.lr x finetune.encoder_lr_scale``, weight
decay off for BatchNorm and biases, one epoch of linear warm-up then a cosine to 0. Rank 0 runs the
``evaluations`` it is handed (the test split's accuracy) after the last epoch. The ranks report every
``ceil(epochs / REPORTS)`` epochs and after the last: a report costs up to a couple of seconds, against a fraction
of a second for an epoch of a small subset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.job_config import JobConfig
from pipeline.data import Manifest
from pipeline.models import EncoderSpec, build_encoder
from pipeline.optim import parameter_groups
from pipeline.sections import FinetuneConfig
from pipeline.train.step import Step

REPORTS = 10
Evaluation = Callable[[nn.Module, torch.device], dict[str, float]]  # rank 0, after the last epoch: model -> metrics


def classifier(spec: EncoderSpec, num_classes: int, weights: dict[str, torch.Tensor] | None) -> nn.Sequential:
    """``Sequential(encoder, Linear(D, num_classes))``: float ``(B, C, H, W)`` in [0, 1] -> logits
    ``(B, num_classes)``; the encoder of ``spec`` holds ``weights`` (its state dict) or, without, its initial ones."""
    encoder, dim = build_encoder(spec)
    if weights is not None:
        encoder.load_state_dict(weights)
    return nn.Sequential(encoder, nn.Linear(dim, num_classes))


def finetune_optimizer(model: nn.Sequential, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s encoder (``model[0]``, at ``lr x encoder_lr_scale``) and head (``model[1]``, at
    ``lr``), each split into a decayed group and one without decay (BatchNorm, biases)."""
    parts = ((model[0], config.encoder_lr_scale), (model[1], 1.0))
    groups = [
        {**group, "lr": config.lr * scale}
        for part, scale in parts
        for group in parameter_groups(part, config.weight_decay)
    ]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=config.lr)


@dataclass(frozen=True)
class Finetuning(Step):
    """The encoder of ``spec`` with ``weights`` (``None``: random initialisation); ``evaluations`` picklable."""

    spec: EncoderSpec
    weights: dict[str, torch.Tensor] | None
    evaluations: tuple[Evaluation, ...] = ()

    def build(self, config: JobConfig, manifest: Manifest) -> tuple[nn.Sequential, EncoderSpec]:
        return classifier(self.spec, len(manifest.class_names), self.weights), self.spec

    def optimizer(self, module: nn.Sequential, config: JobConfig, world_size: int) -> tuple[torch.optim.AdamW, float]:
        return finetune_optimizer(module, config.finetune), 1.0

    def forward(
        self, model: nn.Module, views: list[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the first view's logits; tallies the correct predictions."""
        labels = labels.to(views[0].device, non_blocking=True)
        logits = model(views[0])
        return F.cross_entropy(logits.float(), labels), (logits.argmax(1) == labels).sum().float()

    def advice(self, config: JobConfig) -> str:
        return f"lower finetune.lr (now {config.finetune.lr})"

    def epoch_metrics(self, module: nn.Module, tallies: torch.Tensor, images: float) -> dict[str, float]:
        return {"train_accuracy": tallies.item() / max(1.0, images)}

    def report_every(self, epochs: int) -> int:
        return math.ceil(epochs / REPORTS)

    def evaluate(self, module: nn.Module, device: torch.device, last: bool) -> dict[str, float]:
        metrics = {}
        for evaluation in self.evaluations if last else ():
            metrics |= evaluation(module, device)
        return metrics
