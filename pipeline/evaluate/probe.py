"""Linear probe: standardised features, multinomial logistic regression (scikit-learn), train -> test."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class ProbeResult:
    accuracy: float
    confusion: np.ndarray  # (K, K): rows true class, columns predicted


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, max_iter: int = 1000
) -> ProbeResult:
    """Fit on ``train_x (N, D)``, score on ``test_x (M, D)``."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped probe is still the reported number
        probe.fit(train_x, train_y)
    predicted = probe.predict(test_x)
    labels = np.unique(np.concatenate([train_y, test_y]))
    return ProbeResult(float(accuracy_score(test_y, predicted)), confusion_matrix(test_y, predicted, labels=labels))
