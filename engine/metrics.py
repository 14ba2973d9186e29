"""Classification metrics from integer labels: accuracy, confusion matrix, macro P/R/F1.

Conventions (the same as scikit-learn's with ``zero_division=0``):

* ``y_pred`` may be labels (N,) or scores/logits (N, K); scores are reduced by argmax.
* The confusion matrix is int64 (K, K) with rows = true class, columns = predicted class.
* A ratio whose denominator is zero is defined as 0, silently: precision of a class that is
  never predicted, recall of a class that never occurs, F1 when precision + recall = 0.
* Macro averages are unweighted means over the classes that occur in ``y_true`` or in
  ``y_pred`` (sklearn's default label set), so a class absent from both does not pull the
  average down. Pass ``num_classes`` to check the label range.

Everything runs on the host: CuPy inputs are copied to NumPy first.
"""
from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "confusion_matrix", "per_class", "precision", "recall", "f1_score",
           "classification_metrics"]


def _host(a):
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def _labels(fn: str, y_true, y_pred, num_classes: int | None):
    """Validated int64 label vectors (N,), (N,); y_pred scores (N, K) become argmax labels."""
    y_true, y_pred = _host(y_true), _host(y_pred)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=1)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.ndim != 1:
            raise ValueError(f"{fn}: {name} must be labels (N,) (y_pred may also be scores (N, K)), "
                             f"got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{fn}: {name} must hold integer labels, got {y.dtype}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{fn}: y_true has {y_true.shape[0]} labels but y_pred has {y_pred.shape[0]}")
    if y_true.size == 0:
        raise ValueError(f"{fn}: no labels given")
    y_true, y_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
    low = min(y_true.min(), y_pred.min())
    if low < 0:
        raise ValueError(f"{fn}: labels must be >= 0, got {low}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"{fn}: num_classes must be a positive int, got {num_classes!r}")
        high = max(y_true.max(), y_pred.max())
        if high >= num_classes:
            raise ValueError(f"{fn}: labels must be < num_classes={num_classes}, got {high}")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose predicted label equals the true one."""
    y_true, y_pred = _labels("accuracy", y_true, y_pred, None)
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 (K, K): entry [t, p] counts samples of true class t predicted as p."""
    if num_classes is None:
        raise ValueError("confusion_matrix: num_classes is required, got None")
    y_true, y_pred = _labels("confusion_matrix", y_true, y_pred, num_classes)
    k = int(num_classes)
    # each (t, p) pair is one cell of the flattened (K, K) matrix
    return np.bincount(y_true * k + y_pred, minlength=k * k).astype(np.int64).reshape(k, k)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with 0 where den == 0, and no division warnings."""
    num, den = num.astype(np.float64), den.astype(np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class(cm) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (float64 / int64 (K,)) of a confusion matrix."""
    cm = _host(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(f"per_class: cm must be an integer (K, K) matrix, got {cm.dtype} {cm.shape}")
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)  # column sums: how often each class was predicted
    support = cm.sum(axis=1)    # row sums: how often each class truly occurs
    return {"precision": _safe_ratio(tp, predicted),
            "recall": _safe_ratio(tp, support),
            # 2PR / (P + R) written with counts, so it is 0 (not NaN) whenever tp = 0
            "f1": _safe_ratio(2 * tp, predicted + support),
            "support": support.astype(np.int64)}


def _macro(fn: str, key: str, y_true, y_pred, num_classes) -> float:
    y_true, y_pred = _labels(fn, y_true, y_pred, num_classes)
    k = int(max(y_true.max(), y_pred.max())) + 1
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0  # classes in y_true or y_pred
    return float(per_class(cm)[key][present].mean())


def precision(y_true, y_pred, num_classes: int | None = None) -> float:
    """Macro precision: mean over present classes of TP / (TP + FP), 0 for a class never predicted."""
    return _macro("precision", "precision", y_true, y_pred, num_classes)


def recall(y_true, y_pred, num_classes: int | None = None) -> float:
    """Macro recall: mean over present classes of TP / (TP + FN), 0 for a class that never occurs."""
    return _macro("recall", "recall", y_true, y_pred, num_classes)


def f1_score(y_true, y_pred, num_classes: int | None = None) -> float:
    """Macro F1: mean over present classes of 2 TP / (2 TP + FP + FN) (= 2PR / (P + R))."""
    return _macro("f1_score", "f1", y_true, y_pred, num_classes)


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    """accuracy, macro precision/recall/F1 (floats) and the confusion matrix together."""
    y_true, y_pred = _labels("classification_metrics", y_true, y_pred, num_classes)
    return {"accuracy": accuracy(y_true, y_pred),
            "precision": precision(y_true, y_pred, num_classes),
            "recall": recall(y_true, y_pred, num_classes),
            "f1": f1_score(y_true, y_pred, num_classes),
            "confusion_matrix": confusion_matrix(y_true, y_pred, num_classes)}
