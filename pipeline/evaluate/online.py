"""A representation-quality signal cheap enough for every epoch: kNN accuracy of the current encoder on a fixed
labelled slice of the training split (never the test split: searches select on it). Hyperparameter searches
stop trials early on it, because training losses are not comparable across temperatures, methods or sizes."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from augment.presets import to_unit_float
from pipeline.data import ShardLoader
from pipeline.evaluate.knn import knn_accuracy

QUERY_FRACTION = 4  # one query image for every 4 images in the bank


class OnlineKnn:
    """``online_knn(encoder, device) -> accuracy``: the first ``bank_size`` training images (in shard order)
    vote for the next ``bank_size / 4``; held in memory as uint8."""

    def __init__(self, location: str, bank_size: int, k: int, temperature: float,
                 url_template: str | None = None, skip_bad_samples: bool = False) -> None:
        total = bank_size + bank_size // QUERY_FRACTION
        loader = ShardLoader(location, "train", 1024, rank=0, world_size=1, num_workers=0, shuffle=False,
                             drop_last=False, url_template=url_template,
                             skip_bad_samples=skip_bad_samples)
        batches = list(itertools.islice(loader, -(-total // 1024)))
        images = torch.cat([b[0] for b in batches])[:total]
        labels = torch.cat([b[1] for b in batches])[:total].numpy()
        self.images, self.labels, self.bank_size = images, labels, min(bank_size, len(images) * QUERY_FRACTION // (QUERY_FRACTION + 1))
        self.k, self.temperature = k, temperature

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, device: torch.device) -> float:
        was_training = encoder.training
        encoder.eval()
        features = np.concatenate([
            encoder(to_unit_float(chunk.to(device)).contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
            for chunk in self.images.split(1024)
        ])
        encoder.train(was_training)
        bank = slice(0, self.bank_size)
        queries = slice(self.bank_size, None)
        return knn_accuracy(features[bank], self.labels[bank], features[queries], self.labels[queries],
                            self.k, self.temperature)
