"""The torch linear probe against scikit-learn's, its weight-decay grid, and the probe's choice between them."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.evaluate.linear import choose_weight_decay, fit_softmax, softmax_objective, standardised, torch_probe
from pipeline.evaluate.probe import SKLEARN_MAX_VALUES, linear_probe, probe_solver
from pipeline.evaluate.rows import FeatureRows


def blobs(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dim))
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.normal(0, spread, (n, dim))).astype(np.float32), labels


def test_the_hand_written_gradient_is_autograds_summed_over_chunks():
    rng = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 7, generator=rng), torch.randint(0, 4, (50,), generator=rng)
    weight = torch.randn(7, 4, generator=rng, requires_grad=True)
    bias = torch.randn(4, generator=rng, requires_grad=True)
    rows = FeatureRows.of(x.numpy(), y.numpy(), chunk=13)  # chunks of 13, 13, 13 and 11 rows
    loss, grad_w, grad_b = softmax_objective(rows, weight.detach(), bias.detach(), 0.03)
    expected = torch.nn.functional.cross_entropy(x @ weight + bias, y) + 0.03 / 2 * weight.pow(2).sum()
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad_w, weight.grad)
    torch.testing.assert_close(grad_b, bias.grad)


def test_with_sklearns_decay_the_torch_fit_is_sklearns_solution():
    """The same objective (wd = 1 / (C N)) solved to convergence: the same predictions, on a set where they are
    not all right."""
    x, y = blobs(600, 10, 3, 1.2, seed=1)
    sklearn_fit = LogisticRegression(max_iter=2000, tol=1e-8).fit(StandardScaler().fit_transform(x), y)
    [train] = standardised(FeatureRows.of(x, y))
    model = fit_softmax(train, 3, 1 / len(x), max_iter=2000)
    ours = model.predict(train).numpy()
    assert 0.7 < (ours == y).mean() < 1.0
    assert (ours == sklearn_fit.predict(StandardScaler().fit_transform(x))).mean() >= 0.995
    np.testing.assert_allclose(model.weight.numpy(), sklearn_fit.coef_.T, atol=2e-3)


def test_torch_probe_matches_sklearn_within_a_point_on_a_nearly_separable_set():
    x, y = blobs(3000, 16, 5, 0.8, seed=2)
    train, test = slice(0, 2400), slice(2400, None)
    ours = linear_probe(x[train], y[train], x[test], y[test], 500, solver="torch")
    theirs = linear_probe(x[train], y[train], x[test], y[test], 500, solver="sklearn")
    assert theirs.accuracy > 0.95 and ours.solver == "torch" and theirs.solver == "sklearn"
    assert abs(ours.accuracy - theirs.accuracy) <= 0.01  # the stated tolerance: one point
    assert ours.weight_decay is not None and ours.confusion.trace() == round(ours.accuracy * 600)


def test_the_grid_picks_a_larger_decay_when_small_ones_overfit():
    """600 samples of a logistic model over 250 weakly informative dimensions: with little decay the probe fits
    the training rows' noise (they are nearly separable), the largest decay of the grid generalises best."""
    rng = np.random.default_rng(3)
    n, dim = 600, 250
    truth = rng.normal(0, 1, dim) / np.sqrt(dim) * 2
    x = rng.normal(0, 1, (n, dim))
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ truth)))).astype(np.int64)
    [train] = standardised(FeatureRows.of(x.astype(np.float32), y))
    chosen, scores, _ = choose_weight_decay(train, 2, max_iter=500)
    assert chosen == max(scores) == 1e-2
    assert scores[chosen] >= scores[1e-6] + 0.04 and scores[chosen] == max(scores.values())


def test_ties_go_to_the_larger_decay():
    x, y = blobs(400, 4, 2, 0.05, seed=4)  # any decay separates these perfectly
    [train] = standardised(FeatureRows.of(x, y))
    chosen, scores, _ = choose_weight_decay(train, 2, grid=(1e-5, 1e-3), max_iter=100)
    assert scores == {1e-3: 1.0, 1e-5: 1.0} and chosen == 1e-3


def test_the_probe_reads_half_precision_features_a_chunk_at_a_time_as_it_reads_them_whole(tmp_path, monkeypatch):
    """The probe of a memory-mapped float16 matrix read 97 rows at a time (its objective, gradient and statistics
    summed over 25 chunks, nothing kept) ends where the probe of the same values held in one float32 chunk does."""
    from pipeline.evaluate import rows

    x, y = blobs(2400, 24, 4, 2.5, seed=6)
    half = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.float16, shape=x.shape)
    half[:] = x
    half.flush()
    mapped = np.load(tmp_path / "train.npy", mmap_mode="c")
    whole = torch_probe(mapped[:2000].astype(np.float32), y[:2000], mapped[2000:].astype(np.float32), y[2000:])
    monkeypatch.setattr(rows, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(rows, "CHUNK_VALUES", {"cpu": 97 * 24})
    streamed = torch_probe(mapped[:2000], y[:2000], mapped[2000:], y[2000:])
    assert streamed.weight_decay == whole.weight_decay and streamed.held_out == whole.held_out
    assert (streamed.predicted == whole.predicted).mean() >= 0.999 and 0.7 < whole.accuracy < 1.0
    assert abs(streamed.accuracy - whole.accuracy) <= 1 / 400


def test_column_statistics_and_subsets_read_in_chunks_are_numpys():
    rng = np.random.default_rng(7)
    x = (rng.normal(3, 2, (1000, 5)) * [1, 10, 100, 0, 1]).astype(np.float16)  # a constant column, large values
    rows = FeatureRows.of(x, np.arange(1000) % 3, chunk=64)
    mean, std = rows.column_statistics()
    exact = x.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), exact.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), np.where(exact.std(0) > 0, exact.std(0), 1), rtol=1e-5)
    picked = rows.subset(np.array([999, 5, 64, 63]))
    values = torch.cat([chunk for chunk, _ in picked.chunks()]).numpy()
    np.testing.assert_array_equal(values, x[[5, 63, 64, 999]].astype(np.float32))
    assert picked.labels.tolist() == [2, 0, 1, 0] and len(picked.subset(np.array([1, 3]))) == 2


def test_the_probe_is_sklearn_up_to_the_threshold_and_torch_above():
    assert probe_solver(np.zeros((60000, 784), np.float32)) == "sklearn"  # Fashion-MNIST's pixels
    assert probe_solver(np.zeros((SKLEARN_MAX_VALUES // 256 + 1, 256), np.float32)) == "torch"
    assert probe_solver(np.zeros((10, 2)), "torch") == "torch"


@pytest.mark.gpu
def test_torch_probe_on_the_gpu_agrees_with_the_cpu():
    x, y = blobs(2000, 32, 4, 1.0, seed=5)
    on_cpu = torch_probe(x[:1600], y[:1600], x[1600:], y[1600:], device="cpu")
    on_gpu = torch_probe(x[:1600], y[:1600], x[1600:], y[1600:], device="cuda")
    assert abs(on_cpu.accuracy - on_gpu.accuracy) <= 0.005 and on_cpu.weight_decay == on_gpu.weight_decay
