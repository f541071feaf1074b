import numpy as np
import pytest

from pipeline.evaluate.anomaly_scores import anomalous_labels, auroc, knn_cosine_scores, mahalanobis_scores


def test_auroc_by_hand():
    # anomalies score 0.9 and 0.3, normals 0.5 and 0.1: of the 4 (anomaly, normal) pairs 3 are ordered right
    labels = np.array([7, 0, 7, 2])
    assert auroc(np.array([0.9, 0.5, 0.3, 0.1]), anomalous_labels(labels, (7,))) == pytest.approx(0.75)


def test_one_class_marks_every_other_label_anomalous():
    labels = np.array([0, 3, 1, 3, 2])
    assert anomalous_labels(labels, (0, 1, 2)).tolist() == [True, False, True, False, True]


def test_knn_cosine_scores_by_hand():
    train = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    test = np.array([[3.0, 0.0], [-1.0, 0.0]])
    # cosines of (1, 0) to the bank: 1, 0, 1/sqrt(2); of (-1, 0): -1, 0, -1/sqrt(2)
    top2 = [(1 + 2**-0.5) / 2, (0 - 2**-0.5) / 2]
    assert knn_cosine_scores(train, test, 2) == pytest.approx([1 - top2[0], 1 - top2[1]], abs=1e-6)
    # the same in query chunks of one, and k above the bank's size clipped to it
    assert knn_cosine_scores(train, test, 2, chunk=1) == pytest.approx(knn_cosine_scores(train, test, 2), abs=1e-7)
    assert knn_cosine_scores(train, test, 9) == pytest.approx(1 - np.array([1 + 2**-0.5, -1 - 2**-0.5]) / 3, abs=1e-6)


def test_mahalanobis_scores_follow_the_fitted_covariance():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20000, 2)) * np.array([3.0, 1.0])
    test = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 2.5]])
    scores = mahalanobis_scores(train, test)
    # one standard deviation along either axis scores ~1; 2.5 along the narrow axis ~6.25, though nearer in pixels
    assert scores[:2] == pytest.approx([1.0, 1.0], rel=0.05)
    assert scores[2] == pytest.approx(6.25, rel=0.05)
    assert auroc(scores, np.array([False, False, True])) == 1.0


def test_embedding_scores_separate_an_off_manifold_cluster():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(4, 32))
    normal = rng.normal(size=(600, 4)) @ basis + 5 * basis[0]
    odd = rng.normal(size=(100, 32)) * 2
    test = np.concatenate([normal[500:], odd])
    anomalous = np.arange(len(test)) >= 100
    assert auroc(knn_cosine_scores(normal[:500], test, 5), anomalous) > 0.99
    assert auroc(mahalanobis_scores(normal[:500], test), anomalous) > 0.99


def test_anomaly_plots_draw_every_score_and_a_failed_class(tmp_path):
    from PIL import Image

    from pipeline.evaluate.plots import anomaly_png, roc_png

    anomalous = np.arange(100) >= 80
    scores = {"knn": (np.arange(100.0), anomalous), "pca": (np.random.default_rng(0).random(100), anomalous)}
    assert Image.open(roc_png(scores, tmp_path / "roc.png", "t")).size[0] > 400
    rows = [{"name": "tee", "knn": 0.9, "pca": 0.8}, {"name": "bag", "knn": float("nan"), "pca": 0.7}]
    assert Image.open(anomaly_png(rows, {"knn": "kNN", "pca": "PCA"}, tmp_path / "bars.png", "t")).size[0] > 200
