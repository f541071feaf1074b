"""A classifier's accuracy over a whole labeled split, read in order: what fine-tuning is scored by."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from augment.presets import to_unit_float
from pipeline.data import LabeledShards


@dataclass(frozen=True)
class SplitAccuracy:
    """``accuracy(model, device) -> {"<split>_accuracy": a}`` for a ``model`` mapping float ``(B, C, H, W)`` in
    [0, 1] to logits ``(B, K)``, over every (readable) sample of ``split`` of ``shards``. Picklable: made where the
    job is configured, it runs where training ends (rank 0)."""

    shards: LabeledShards
    split: str = "test"

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        loader = self.shards.loader(self.split)
        was_training = model.training
        model.eval()
        correct = seen = 0
        for images, labels, _ in loader:
            x = to_unit_float(images.to(device)).contiguous(memory_format=torch.channels_last)
            correct += int((model(x).argmax(1).cpu() == labels).sum())
            seen += len(labels)
        model.train(was_training)
        return {f"{self.split}_accuracy": correct / max(1, seen)}
