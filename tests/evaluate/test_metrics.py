import numpy as np
import pytest
import torch

from pipeline.evaluate.knn import knn_accuracy
from pipeline.evaluate.probe import linear_probe


def test_knn_hand_computed():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    test = np.array([[1.0, 0.05], [0.05, 1.0]])
    assert knn_accuracy(train, labels, test, np.array([0, 1]), k=1) == 1.0
    # k=3, t=0.1: for the second query class 1 gets exp(~1/0.1), class 0 gets two small weights -> still class 1
    assert knn_accuracy(train, labels, test, np.array([0, 1]), k=3) == 1.0
    # flip the test labels: both wrong
    assert knn_accuracy(train, labels, test, np.array([1, 0]), k=3) == 0.0


def test_knn_weighting_prefers_close_neighbours():
    train = np.array([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1]])
    labels = np.array([0, 1, 1])
    # the query is near class 0's single point; two far points of class 1 lose under temperature weighting
    assert knn_accuracy(train, labels, np.array([[1.0, 0.0]]), np.array([0]), k=3, temperature=0.1) == 1.0


def test_probe_separable_and_confusion():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [5, 5], [0, 5]])
    train_y, test_y = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    train_x = centers[train_y] + rng.normal(0, 0.5, (300, 2))
    test_x = centers[test_y] + rng.normal(0, 0.5, (100, 2))
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result.accuracy == pytest.approx(1.0)
    assert result.confusion.shape == (3, 3) and result.confusion.trace() == 100


def _knn_before_batching(train_x, train_y, test_x, test_y, k=200, temperature=0.1, chunk=1024):
    """The kNN as it was before it ran in device batches (numpy in, 1,024 queries at a time on the CPU)."""
    import torch.nn.functional as F

    train = F.normalize(torch.from_numpy(train_x).float(), dim=1)
    labels = torch.from_numpy(train_y).long()
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test_x), chunk):
        query = F.normalize(torch.from_numpy(test_x[start : start + chunk]).float(), dim=1)
        similarity, index = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes).scatter_add_(1, labels[index], (similarity / temperature).exp())
        correct += (votes.argmax(1).numpy() == test_y[start : start + chunk]).sum()
    return float(correct / len(test_x))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_knn_in_device_batches_equals_the_result_before(device):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (5, 16))
    train_y, test_y = rng.integers(0, 5, 3000), rng.integers(0, 5, 700)
    train_x = (centers[train_y] + rng.normal(0, 1.5, (3000, 16))).astype(np.float32)
    test_x = (centers[test_y] + rng.normal(0, 1.5, (700, 16))).astype(np.float32)
    before = _knn_before_batching(train_x, train_y, test_x, test_y, k=50)
    assert 0.4 < before < 0.95  # neither trivial nor hopeless
    for chunk in (None, 64, 333):
        assert knn_accuracy(train_x, train_y, test_x, test_y, k=50, chunk=chunk, device=device) == before
