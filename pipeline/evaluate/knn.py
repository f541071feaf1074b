"""Weighted kNN classification of frozen features (Wu et al., 2018; the usual SSL monitor) on the device: the bank
is read a chunk at a time (:class:`~pipeline.evaluate.rows.FeatureRows`, so it may be a memory-mapped float16
matrix of ImageNet's size) and every query keeps its running ``k`` best."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.evaluate.rows import FeatureRows, as_unit_rows, unit_rows

SIMILARITY_ELEMENTS = 1 << 24  # a batch's (queries x bank chunk) similarities: 64 MiB of float32


@torch.no_grad()
def nearest(bank: FeatureRows, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(similarities (M, k), bank labels (M, k))`` of each of ``queries (M, D)`` (unit rows) to its ``k`` most
    cosine-similar rows of ``bank``, best first; one pass over the bank, queries in batches whose similarities
    stay within :data:`SIMILARITY_ELEMENTS`."""
    k = min(k, len(bank))
    best = queries.new_empty((len(queries), 0))
    labels = bank.labels.new_zeros((len(queries), 0))
    for x, y in bank.transformed(unit_rows).chunks():
        batch = max(1, SIMILARITY_ELEMENTS // len(x))
        merged = [
            _merge(best[i : i + batch], labels[i : i + batch], queries[i : i + batch] @ x.T, y, k)
            for i in range(0, len(queries), batch)
        ]
        best, labels = torch.cat([m[0] for m in merged]), torch.cat([m[1] for m in merged])
    return best, labels


def _merge(
    best: torch.Tensor, labels: torch.Tensor, similarity: torch.Tensor, chunk_labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of a batch's running ``best (m, j)`` with their ``labels`` and a chunk's ``similarity (m, c)``."""
    top, index = similarity.topk(min(k, similarity.shape[1]), dim=1)
    values, order = torch.cat([best, top], 1).topk(min(k, best.shape[1] + top.shape[1]), dim=1)
    return values, torch.cat([labels, chunk_labels[index]], 1).gather(1, order)


@torch.no_grad()
def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Each test point votes with its ``k`` nearest train points by cosine similarity ``s``, weighted
    ``exp(s / temperature)``; accuracy of the class with the largest vote. ``(N, D)``, ``(M, D)`` features of any
    float dtype; the bank is read ``chunk`` rows at a time (default :func:`~pipeline.evaluate.rows.chunk_rows`)."""
    device = torch.device(device)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    similarity, labels = nearest(FeatureRows.of(train_x, train_y, device, chunk), as_unit_rows(test_x, device), k)
    votes = similarity.new_zeros(len(similarity), num_classes).scatter_add_(1, labels, (similarity / temperature).exp())
    truth = torch.as_tensor(np.asarray(test_y), device=device)
    return float((votes.argmax(1) == truth).sum().item() / len(test_x))
