"""The linear probe for large feature sets, in torch (on the GPU when there is one): standardised features,
multinomial logistic regression by full-batch L-BFGS, its weight decay chosen from a small grid by accuracy on a
held-out tenth of train, then refitted on all of train and scored on test. The features are read a chunk at a time
(:class:`~pipeline.evaluate.rows.FeatureRows`): the objective and its gradient are sums over chunks, so the probe
needs the features once, in their own (half) precision, and a chunk in float32.

The objective for weights ``W (D, K)`` and bias ``b (K,)`` is ``mean_i CE(x_i W + b, y_i) + wd / 2 * |W|^2`` (the
bias not decayed): scikit-learn's ``LogisticRegression(C)`` is the same problem with ``wd = 1 / (C N)``. The grid
is walked from the largest decay down, each fit starting where the previous one ended and capped at a fifth of the
iterations (a regularisation path, as glmnet's); the final fit starts from the chosen one. The whole probe then
costs about two plain fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.evaluate.rows import FeatureRows, standardiser

WEIGHT_DECAYS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # per sample; sklearn's default C=1 is 1/N, e.g. 1.7e-5 at 60k
HELD_OUT_FRACTION = 0.1
TOLERANCE = 1e-4  # largest gradient entry at which L-BFGS stops (scikit-learn's tol, on the same mean objective)
PATH_SHARE = 5  # each fit of the grid gets max_iter / PATH_SHARE iterations


@dataclass
class LinearModel:
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)

    def predict(self, rows: FeatureRows) -> torch.Tensor:
        """Class indices ``(N,)`` of the (standardised) ``rows``."""
        return torch.cat([torch.addmm(self.bias, x, self.weight).argmax(1) for x, _ in rows.chunks()])


def standardised(train: FeatureRows, *others: FeatureRows) -> list[FeatureRows]:
    """``train`` and ``others`` centred and scaled by ``train``'s per-column mean and std (constant columns kept
    at 0), as scikit-learn's ``StandardScaler``, chunk by chunk in place."""
    transform = standardiser(*train.column_statistics())
    return [rows.transformed(transform) for rows in (train, *others)]


def softmax_sums(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum_i CE(x_i W + b, y_i), its d/dW (D, K), its d/db (K,))`` over the rows of ``x (n, D)``. Gradients by
    hand and logits laid out ``(K, n)``: on CPUs 4x faster than autograd through ``x @ W``, whose backward and
    row-wise softmax over a few classes are slow kernels there."""
    log_p = torch.addmm(bias[:, None], weight.T, x.T).log_softmax(0)  # (K, n)
    rows = y[None]
    loss = -log_p.gather(0, rows).sum()
    residual = log_p.exp_().scatter_add_(0, rows, torch.full_like(log_p[:1], -1))  # p - onehot
    return loss, residual.matmul(x).T, residual.sum(1)


def softmax_objective(
    rows: FeatureRows, weight: torch.Tensor, bias: torch.Tensor, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(objective, d/dW (D, K), d/db (K,))`` of ``mean_i CE(x_i W + b, y_i) + wd / 2 * |W|^2`` over ``rows``,
    summed chunk by chunk."""
    loss, grad_weight, grad_bias = weight.new_zeros(()), torch.zeros_like(weight), torch.zeros_like(bias)
    for x, y in rows.chunks():
        chunk_loss, chunk_weight, chunk_bias = softmax_sums(x, y, weight, bias)
        loss += chunk_loss
        grad_weight += chunk_weight
        grad_bias += chunk_bias
    n = max(1, len(rows))
    loss = loss / n + weight_decay / 2 * weight.pow(2).sum()
    return loss, grad_weight.div_(n).add_(weight, alpha=weight_decay), grad_bias.div_(n)


def fit_softmax(
    rows: FeatureRows,
    num_classes: int,
    weight_decay: float,
    max_iter: int,
    start: LinearModel | None = None,
) -> LinearModel:
    """Multinomial logistic regression on (standardised) ``rows`` by full-batch L-BFGS (strong-Wolfe line search;
    each evaluation one pass over the rows) for at most ``max_iter`` iterations, from ``start`` (a warm start) or
    zeros."""
    weight = start.weight.clone() if start else torch.zeros(rows.dim, num_classes, device=rows.device)
    bias = start.bias.clone() if start else torch.zeros(num_classes, device=rows.device)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=TOLERANCE,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        loss, weight.grad, bias.grad = softmax_objective(rows, weight, bias, weight_decay)
        return loss

    optimizer.step(objective)
    return LinearModel(weight, bias)


def accuracy(model: LinearModel, rows: FeatureRows) -> float:
    return (model.predict(rows) == rows.labels).float().mean().item()


def choose_weight_decay(
    rows: FeatureRows,
    num_classes: int,
    grid: tuple[float, ...] = WEIGHT_DECAYS,
    max_iter: int = 500,
    seed: int = 0,
) -> tuple[float, dict[float, float], LinearModel]:
    """``(chosen decay, held-out accuracy of each decay, the chosen fit)``: each decay of ``grid`` fitted on a
    seeded random 90% of ``rows`` and scored on the other 10%, from the largest decay down, each fit starting
    where the previous one ended. Ties go to the larger decay."""
    order = np.random.default_rng(seed).permutation(len(rows))
    held = max(1, int(len(rows) * HELD_OUT_FRACTION))
    fit_rows, held_rows = rows.subset(order[held:]), rows.subset(order[:held])
    scores: dict[float, float] = {}
    fits: dict[float, LinearModel] = {}
    model = None
    for decay in sorted(grid, reverse=True):
        model = fit_softmax(fit_rows, num_classes, decay, max(1, max_iter // PATH_SHARE), start=model)
        scores[decay], fits[decay] = accuracy(model, held_rows), model
    best = max(scores.values())
    chosen = max(decay for decay, score in scores.items() if score == best)
    return chosen, scores, fits[chosen]


@dataclass
class TorchProbe:
    accuracy: float
    predicted: np.ndarray  # (M,) test predictions
    weight_decay: float
    held_out: dict[float, float]  # held-out accuracy of each decay of the grid


def torch_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    max_iter: int = 500,
    device: torch.device | str | None = None,
    grid: tuple[float, ...] = WEIGHT_DECAYS,
    seed: int = 0,
) -> TorchProbe:
    """The probe above on ``train_x (N, D)`` -> ``test_x (M, D)`` (any float dtype, memory-mapped or not: read a
    chunk at a time, :class:`~pipeline.evaluate.rows.FeatureRows`), on ``device`` (default: CUDA when present)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train, test = standardised(FeatureRows.of(train_x, train_y, device), FeatureRows.of(test_x, test_y, device))
    decay, scores, start = choose_weight_decay(train, num_classes, grid, max_iter, seed)
    model = fit_softmax(train, num_classes, decay, max_iter, start=start)
    predicted = model.predict(test).cpu().numpy()
    return TorchProbe(float((predicted == test_y).mean()), predicted, decay, scores)
