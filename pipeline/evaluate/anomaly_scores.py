"""Anomaly scores of test images against the images a method pretrained on (higher = more anomalous), and the
AUROC of each: distances in the encoder's embedding (mean cosine distance to the k nearest training embeddings;
the Mahalanobis distance under one Gaussian fitted to them), beside reconstruction error and PCA's residual
(:mod:`pipeline.evaluate.reconstruction`)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from pipeline.evaluate.knn import nearest
from pipeline.evaluate.rows import FeatureRows, as_unit_rows

KNN, MAHALANOBIS, RECONSTRUCTION, NEGATIVE_ELBO, PCA_RESIDUAL = "knn", "mahalanobis", "recon", "neg_elbo", "pca"


def auroc(scores: np.ndarray, anomalous: np.ndarray) -> float:
    """Area under the ROC curve of ``scores (N,)`` separating ``anomalous (N,)`` (bool) from the rest: 0.5 is
    chance, 1.0 perfect."""
    return float(roc_auc_score(anomalous, scores))


def anomalous_labels(labels: np.ndarray, excluded: tuple[int, ...]) -> np.ndarray:
    """``(N,)`` bool: which ``labels`` pretraining left out (:meth:`pipeline.sections.DataConfig.exclude_classes`)."""
    return np.isin(labels, excluded)


@torch.no_grad()
def knn_cosine_scores(
    train: np.ndarray, test: np.ndarray, k: int, device: torch.device | str = "cpu", chunk: int | None = None
) -> np.ndarray:
    """``(M,)``: each of ``test (M, D)``'s mean cosine distance ``1 - cos`` to its ``k`` nearest rows of
    ``train (N, D)``, the bank read ``chunk`` rows at a time on ``device`` (:func:`pipeline.evaluate.knn.nearest`)."""
    device = torch.device(device)
    bank = FeatureRows.of(train, np.zeros(len(train), np.int64), device, chunk)
    similarity, _ = nearest(bank, as_unit_rows(test, device), k)
    return (1 - similarity.mean(1)).cpu().numpy()


def mahalanobis_scores(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``(M,)``: the squared Mahalanobis distance of ``test (M, D)`` under one Gaussian fitted to ``train (N, D)``,
    its covariance shrunk by Ledoit-Wolf (so that D close to or above N still inverts)."""
    return LedoitWolf().fit(np.asarray(train, dtype=np.float64)).mahalanobis(np.asarray(test, dtype=np.float64))
