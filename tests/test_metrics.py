"""engine.metrics against hand-counted cases and against scikit-learn."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from engine import metrics


def test_hand_counted_case():
    # true 0 0 1 2 / predicted 0 1 1 1: class 2 is never predicted
    y_true, y_pred = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    assert metrics.accuracy(y_true, y_pred) == 2 / 4
    assert metrics.precision(y_true, y_pred) == pytest.approx((1 / 1 + 1 / 3 + 0) / 3)
    assert metrics.recall(y_true, y_pred) == pytest.approx((1 / 2 + 1 / 1 + 0 / 1) / 3)
    assert metrics.f1_score(y_true, y_pred) == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    support = metrics.per_class(cm)["support"]
    np.testing.assert_array_equal(support, [2, 1, 1])


def test_scores_are_reduced_by_argmax():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]], dtype=np.float32)
    assert metrics.accuracy(np.array([1, 0, 0]), logits) == 2 / 3
    np.testing.assert_array_equal(metrics.confusion_matrix([1, 0, 0], logits, 2), [[1, 1], [0, 1]])


def test_absent_classes_give_zero_without_warnings():
    y_true, y_pred = np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])  # class 1 never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 RuntimeWarning would fail the test
        p = metrics.per_class(metrics.confusion_matrix(y_true, y_pred, 4))  # classes 2, 3 absent
        assert metrics.precision(y_true, y_pred, 4) == pytest.approx((3 / 4 + 0) / 2)
        assert metrics.recall(y_true, y_pred, 4) == pytest.approx((1 + 0) / 2)
        assert metrics.f1_score(y_true, y_pred, 4) == pytest.approx((6 / 7 + 0) / 2)
        # class 1 lies inside the label range but occurs nowhere: it is not averaged in
        assert metrics.precision([0, 2, 2], [0, 2, 2], 3) == 1.0
        assert metrics.f1_score([0, 2, 2], [0, 2, 0], 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    for key in ("precision", "recall", "f1"):
        assert np.all(np.isfinite(p[key])) and p[key][2] == 0 and p[key][3] == 0


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    n = int(rng.integers(1, 200))
    y_true = rng.integers(0, k, n)
    # mostly right, some noise, and (for some seeds) a class that is never predicted
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    if seed % 2:
        y_pred[y_pred == 0] = 1 % k
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred, k),
                                  skm.confusion_matrix(y_true, y_pred, labels=np.arange(k)))
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for ours, theirs in ((metrics.precision, skm.precision_score), (metrics.recall, skm.recall_score),
                         (metrics.f1_score, skm.f1_score)):
        expected = theirs(y_true, y_pred, average="macro", zero_division=0)
        assert ours(y_true, y_pred, k) == pytest.approx(expected, abs=1e-12), ours.__name__
    summary = metrics.classification_metrics(y_true, y_pred, k)
    assert summary["f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    per = metrics.per_class(summary["confusion_matrix"])
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=np.arange(k), zero_division=0)
    np.testing.assert_allclose(per["precision"], p)
    np.testing.assert_allclose(per["recall"], r)
    np.testing.assert_allclose(per["f1"], f)
    np.testing.assert_array_equal(per["support"], s)


def test_bad_input():
    with pytest.raises(ValueError, match="accuracy: y_true has 3 labels but y_pred has 2"):
        metrics.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="confusion_matrix: labels must be < num_classes=2, got 2"):
        metrics.confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="precision: labels must be >= 0, got -1"):
        metrics.precision([0, -1], [0, 1])
    with pytest.raises(TypeError, match="recall: y_true must hold integer labels, got float64"):
        metrics.recall([0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="f1_score: no labels given"):
        metrics.f1_score(np.array([], np.int64), np.array([], np.int64))
    with pytest.raises(ValueError, match=r"y_true must be labels \(N,\)"):
        metrics.accuracy(np.zeros((2, 2), np.int64), [0, 1])
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        metrics.confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match="per_class: cm must be an integer"):
        metrics.per_class(np.ones((2, 3), np.int64))
