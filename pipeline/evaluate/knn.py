"""Weighted kNN classification of frozen features (Wu et al., 2018; the usual SSL monitor), in batches of
queries on the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIMILARITY_ELEMENTS = 1 << 28  # a batch's (queries x bank) similarities: 1 GiB of float32


def query_chunk(bank_size: int) -> int:
    """Queries per batch against a bank of ``bank_size``: as many as keep their similarities within
    :data:`SIMILARITY_ELEMENTS`, at most 1024."""
    return max(1, min(1024, SIMILARITY_ELEMENTS // max(1, bank_size)))


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
    ``exp(s / temperature)``; accuracy of the class with the largest vote. ``(N, D)``, ``(M, D)`` features; the
    bank lives on ``device`` and the queries go there ``chunk`` at a time (default: as many as keep their
    similarities within :data:`SIMILARITY_ELEMENTS`, at most 1024)."""
    device = torch.device(device)
    train = F.normalize(torch.as_tensor(train_x, device=device).float(), dim=1)
    labels = torch.as_tensor(train_y, device=device).long()
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train))
    chunk = chunk or query_chunk(len(train))
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(test_x), chunk):
        query = F.normalize(torch.as_tensor(test_x[start : start + chunk], device=device).float(), dim=1)
        similarity, index = (query @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(query), num_classes, device=device).scatter_add_(
            1, labels[index], (similarity / temperature).exp()
        )
        truth = torch.as_tensor(test_y[start : start + chunk], device=device)
        correct += (votes.argmax(1) == truth).sum()
    return float(correct.item() / len(test_x))
