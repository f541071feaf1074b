"""A representation-quality signal cheap enough for every epoch: kNN accuracy of the current encoder on a fixed
labelled slice of the training split (never the test split: searches select on it). Hyperparameter searches
stop trials early on it, because training losses are not comparable across temperatures, methods or sizes."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import torch
from torch import nn

from augment.presets import to_unit_float
from pipeline.data import LabeledShards
from pipeline.evaluate.knn import knn_accuracy

QUERY_FRACTION = 4  # one query image for every 4 images in the bank
CHUNK = 1024


class OnlineKnn:
    """``online_knn(encoder, device) -> {"online_knn_accuracy": accuracy}``: the first ``bank_size`` training
    images (in shard order) vote for the next ``bank_size / 4``. A training monitor: made where the job is
    configured, it reads its images (kept in memory as uint8) where it first runs, on rank 0."""

    def __init__(self, shards: LabeledShards, bank_size: int, k: int, temperature: float) -> None:
        self.shards = dataclasses.replace(shards, batch_size=CHUNK, num_workers=0)
        self.requested, self.k, self.temperature = bank_size, k, temperature

    @functools.cached_property
    def _slice(self) -> tuple[torch.Tensor, np.ndarray]:
        total = self.requested + self.requested // QUERY_FRACTION
        batches = list(itertools.islice(self.shards.loader("train"), -(-total // CHUNK)))
        return torch.cat([b[0] for b in batches])[:total], torch.cat([b[1] for b in batches])[:total].numpy()

    @property
    def images(self) -> torch.Tensor:
        """uint8 ``(N, C, H, W)``: the bank, then the queries."""
        return self._slice[0]

    @property
    def labels(self) -> np.ndarray:
        return self._slice[1]

    @property
    def bank_size(self) -> int:
        """``bank_size``, or four fifths of a split too small for it."""
        return min(self.requested, len(self.images) * QUERY_FRACTION // (QUERY_FRACTION + 1))

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, device: torch.device) -> dict[str, float]:
        was_training = encoder.training
        encoder.eval()
        features = np.concatenate(
            [
                encoder(to_unit_float(chunk.to(device)).contiguous(memory_format=torch.channels_last))
                .float()
                .cpu()
                .numpy()
                for chunk in self.images.split(CHUNK)
            ]
        )
        encoder.train(was_training)
        bank, queries = slice(0, self.bank_size), slice(self.bank_size, None)
        return {
            "online_knn_accuracy": knn_accuracy(
                features[bank], self.labels[bank], features[queries], self.labels[queries], self.k, self.temperature
            )
        }
