"""Linear probe: standardised features, multinomial logistic regression, train -> test. Up to
:data:`SKLEARN_MAX_VALUES` training feature values scikit-learn's L-BFGS (``C=1``, as it always was); above, the
torch probe of :mod:`pipeline.evaluate.linear` (its weight decay chosen on held-out train, on the GPU when present).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.evaluate.linear import torch_probe

SKLEARN_MAX_VALUES = 1 << 26  # N x D of train: 256 MiB of float32, e.g. Fashion-MNIST's 60,000 x 784 pixels
Solver = Literal["auto", "sklearn", "torch"]
QUIET = (ConvergenceWarning,)  # a capped probe is still the reported number: callers running probes in threads
# silence these around the threads (warning filters are process-wide, so a thread cannot set its own)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """:data:`QUIET` warnings silenced, in the main thread only (elsewhere a filter would race other threads')."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        for category in QUIET:
            warnings.simplefilter("ignore", category)
        yield


@dataclass
class ProbeResult:
    accuracy: float
    confusion: np.ndarray  # (K, K): rows true class, columns predicted
    solver: str = "sklearn"
    weight_decay: float | None = None  # the torch probe's choice


def probe_solver(train_x: np.ndarray, solver: Solver = "auto") -> str:
    """``sklearn`` or ``torch`` for training features ``train_x (N, D)``."""
    if solver != "auto":
        return solver
    return "sklearn" if train_x.size <= SKLEARN_MAX_VALUES else "torch"


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    max_iter: int = 1000,
    solver: Solver = "auto",
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Fit on ``train_x (N, D)``, score on ``test_x (M, D)``; the torch probe runs on ``device`` (default: CUDA
    when present)."""
    labels = np.unique(np.concatenate([train_y, test_y]))
    if probe_solver(train_x, solver) == "torch":
        result = torch_probe(train_x, train_y, test_x, test_y, max_iter, device)
        return ProbeResult(
            result.accuracy, confusion_matrix(test_y, result.predicted, labels=labels), "torch", result.weight_decay
        )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with quiet():  # half-precision features in float32 (scikit-learn would take float16 to float64)
        probe.fit(np.asarray(train_x, np.float32), train_y)
    predicted = probe.predict(np.asarray(test_x, np.float32))
    return ProbeResult(float(accuracy_score(test_y, predicted)), confusion_matrix(test_y, predicted, labels=labels))
