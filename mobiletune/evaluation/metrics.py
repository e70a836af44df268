"""Classification metrics from predicted probabilities, in plain numpy.

Everything derives from two inputs: `probs` [N, C] (rows sum to 1) and `y_true` [N] class
indices. The confusion matrix has true classes as rows and predicted classes as columns,
so `metrics.json` and `confusion_matrix.csv` can be checked against each other.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has {p.shape}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds a class index outside 0..{num_classes - 1}")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0/0 is reported as 0 (a class never predicted has precision 0), like scikit-learn's default
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(axis=1)}


def averages(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Macro (plain mean over classes) and weighted (by support) precision, recall and F1."""
    support = scores["support"].astype(np.float64)
    total = support.sum()
    out: dict[str, float] = {}
    for key in ("f1", "precision", "recall"):
        values = scores[key]
        out[f"macro_{key}"] = float(values.mean()) if values.size else 0.0
        out[f"weighted_{key}"] = float((values * support).sum() / total) if total else 0.0
    return out


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion: unlike p +- z*se it stays inside [0, 1]
    and is honest at p = 1 on a small set (65/65 correct is [0.944, 1], not [1, 1])."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = mid - half, mid + half
    return (0.0 if correct == 0 else float(lo), 1.0 if correct == n else float(hi))


def top_k_accuracy(probs: np.ndarray, y_true: Sequence[int], k: int) -> float:
    """Fraction of samples whose true class is among the k highest probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    if len(t) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    # rank of the true class = how many classes score strictly higher; ties count in its favour
    true_score = probs[np.arange(len(t)), t]
    rank = (probs > true_score[:, None]).sum(axis=1)
    return float((rank < k).mean())


def calibration_bins(probs: np.ndarray, y_true: Sequence[int], n_bins: int = 15) -> list[dict]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each non-empty bin."""
    probs = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    conf = probs.max(axis=1) if len(t) else np.zeros(0)
    correct = probs.argmax(axis=1) == t if len(t) else np.zeros(0, dtype=bool)
    # bin i holds (i/n, (i+1)/n]; a confidence of exactly 0 falls in the first bin
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        mask = idx == i
        if mask.any():
            bins.append({"lower": i / n_bins, "upper": (i + 1) / n_bins, "count": int(mask.sum()),
                         "confidence": float(conf[mask].mean()),
                         "accuracy": float(correct[mask].mean())})
    return bins


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], n_bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    bins = calibration_bins(probs, y_true, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / n)


def most_confused(cm: np.ndarray, class_names: Sequence[str], n: int = 10) -> list[dict]:
    """The largest off-diagonal cells: (true, predicted, count), most frequent first."""
    cm = np.asarray(cm)
    pairs = [(int(cm[i, j]), i, j) for i in range(cm.shape[0]) for j in range(cm.shape[1])
             if i != j and cm[i, j] > 0]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))  # stable order for ties: by class index
    return [{"true": class_names[i], "predicted": class_names[j], "count": c}
            for c, i, j in pairs[:n]]


def classification_metrics(probs: np.ndarray, y_true: Sequence[int], class_names: Sequence[str],
                           top_k: Sequence[int] = (1, 3, 5), n_bins: int = 15) -> dict[str, Any]:
    """Everything `metrics.json` holds, as JSON-ready Python values.

    Keys: accuracy, macro_f1, weighted_f1 (and precision / recall variants), top_k
    ({"top_1": ..}, only k < number of classes beyond top_1), ece, per_class
    ({label: {precision, recall, f1, support}}), most_confused, confusion_matrix, num_samples.
    """
    probs = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    c = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(t), c):
        raise ValueError(f"probs must have shape ({len(t)}, {c}), got {probs.shape}")
    pred = probs.argmax(axis=1) if len(t) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(t, pred, c)
    scores = per_class_scores(cm)
    ks = sorted({k for k in top_k if k == 1 or k < c})
    out: dict[str, Any] = {
        "accuracy": float(np.trace(cm) / len(t)) if len(t) else 0.0,
        "accuracy_ci95": list(wilson_interval(int(np.trace(cm)), len(t))),
        **averages(scores),
        "per_class": {name: {"precision": float(scores["precision"][i]),
                             "recall": float(scores["recall"][i]),
                             "f1": float(scores["f1"][i]),
                             "support": int(scores["support"][i])}
                      for i, name in enumerate(class_names)},
        "top_k": {f"top_{k}": top_k_accuracy(probs, t, k) for k in ks},
        "ece": expected_calibration_error(probs, t, n_bins),
        "most_confused": most_confused(cm, class_names),
        "num_samples": int(len(t)),
        "class_names": list(class_names),
        "confusion_matrix": cm.tolist(),
        "calibration_bins": calibration_bins(probs, t, n_bins),
    }
    return out
