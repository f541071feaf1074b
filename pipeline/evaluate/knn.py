"""Weighted kNN classification of frozen features (Wu et al., 2018; the usual SSL monitor)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 200,
    temperature: float = 0.1, chunk: int = 1024,
) -> float:
    """Each test point votes with its ``k`` nearest train points by cosine similarity ``s``, weighted
    ``exp(s / temperature)``; accuracy of the class with the largest vote. ``(N, D)``, ``(M, D)`` features."""
    train = F.normalize(torch.from_numpy(train_x).float(), dim=1)
    labels = torch.from_numpy(train_y).long()
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test_x), chunk):
        query = F.normalize(torch.from_numpy(test_x[start : start + chunk]).float(), dim=1)
        similarity, index = (query @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(query), num_classes).scatter_add_(1, labels[index], (similarity / temperature).exp())
        correct += (votes.argmax(1).numpy() == test_y[start : start + chunk]).sum()
    return float(correct / len(test_x))
