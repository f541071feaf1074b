import numpy as np
import pytest

from pipeline.evaluate import knn_accuracy, linear_probe


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
