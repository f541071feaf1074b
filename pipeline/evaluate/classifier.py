"""A classifier's accuracy over a whole labeled split, read in order: what fine-tuning is scored by."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from augment.presets import to_unit_float
from pipeline.data import evaluation_loader


@dataclass(frozen=True)
class SplitAccuracy:
    """``accuracy(model, device) -> {"<split>_accuracy": a}`` for a ``model`` mapping float ``(B, C, H, W)`` in
    [0, 1] to logits ``(B, K)``, over every (readable) sample of ``split`` at ``location``; photos as center crops
    of ``image_size``. Picklable: made where the job is configured, it runs where training ends (rank 0)."""

    location: str
    split: str = "test"
    batch_size: int = 1024
    image_size: int | None = None
    url_template: str | None = None
    skip_bad_samples: bool = False

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        loader = evaluation_loader(self.location, self.split, self.batch_size, image_size=self.image_size,
                                   url_template=self.url_template, skip_bad_samples=self.skip_bad_samples)
        was_training = model.training
        model.eval()
        correct = seen = 0
        for images, labels, _ in loader:
            x = to_unit_float(images.to(device)).contiguous(memory_format=torch.channels_last)
            correct += int((model(x).argmax(1).cpu() == labels).sum())
            seen += len(labels)
        model.train(was_training)
        return {f"{self.split}_accuracy": correct / max(1, seen)}
