"""Metrics against a confusion matrix and scores worked out by hand; the Wilson interval
on accuracy against known values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobiletune.evaluation import metrics

NAMES = ["ant", "bee", "wasp"]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 1, 0, 2, 2, 1]
# Worked out on paper: rows true, columns predicted.
HAND_CM = [[2, 2, 0],
           [1, 2, 0],
           [0, 1, 2]]


def one_hot_probs(pred: list[int], c: int, conf: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is `pred`, the rest spread evenly."""
    p = np.full((len(pred), c), (1 - conf) / (c - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_confusion_matrix_matches_hand_count():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == HAND_CM


def test_scores_match_hand_computation():
    out = metrics.classification_metrics(one_hot_probs(Y_PRED, 3), Y_TRUE, NAMES)
    # precision = diagonal / column sum, recall = diagonal / row sum
    expect = {"ant": (2 / 3, 2 / 4, 4 / 7, 4), "bee": (2 / 5, 2 / 3, 1 / 2, 3),
              "wasp": (2 / 2, 2 / 3, 4 / 5, 3)}
    for name, (p, r, f1, support) in expect.items():
        got = out["per_class"][name]
        assert got["precision"] == pytest.approx(p)
        assert got["recall"] == pytest.approx(r)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == support
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["macro_f1"] == pytest.approx((4 / 7 + 1 / 2 + 4 / 5) / 3)
    assert out["weighted_f1"] == pytest.approx((4 * 4 / 7 + 3 * 1 / 2 + 3 * 4 / 5) / 10)
    assert out["macro_precision"] == pytest.approx((2 / 3 + 2 / 5 + 1) / 3)
    assert out["confusion_matrix"] == HAND_CM
    assert out["most_confused"][0] == {"true": "ant", "predicted": "bee", "count": 2}
    assert len(out["most_confused"]) == 3  # ant->bee, bee->ant, wasp->bee


def test_never_predicted_class_has_zero_precision_not_nan():
    out = metrics.classification_metrics(one_hot_probs([0, 0, 0], 3), [0, 1, 2], NAMES)
    assert out["per_class"]["bee"]["precision"] == 0.0
    assert out["per_class"]["bee"]["f1"] == 0.0
    assert out["per_class"]["ant"]["precision"] == pytest.approx(1 / 3)


def test_top_k_by_hand():
    probs = np.array([[0.5, 0.3, 0.2],   # true 1: second -> in top-2, not top-1
                      [0.1, 0.2, 0.7],   # true 0: last -> not in top-2
                      [0.2, 0.6, 0.2]])  # true 1: first
    y = [1, 0, 1]
    assert metrics.top_k_accuracy(probs, y, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(probs, y, 2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(probs, y, 3) == pytest.approx(1.0)


def test_ece_by_hand():
    # two samples at 0.9 confidence (one right), two at 0.7 (both right):
    # gaps |0.5 - 0.9| and |1.0 - 0.7|, each bin holding half the samples
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.7, 0.3]])
    y = [0, 1, 1, 0]
    assert metrics.expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.35)
    perfect = np.eye(2)[[0, 1, 1]]
    assert metrics.expected_calibration_error(perfect, [0, 1, 1]) == pytest.approx(0.0)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        metrics.classification_metrics(np.ones((3, 2)) / 2, [0, 1], ["a", "b"])
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 5], [0, 1], 2)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)),
                         min_size=1, max_size=40))))
def test_metrics_agree_with_brute_force(case):
    c, pairs = case
    y = [t for t, _ in pairs]
    pred = [p for _, p in pairs]
    out = metrics.classification_metrics(one_hot_probs(pred, c, 0.9), y, [str(i) for i in range(c)])
    for i in range(c):
        tp = sum(1 for t, p in pairs if t == i and p == i)
        n_pred = sum(1 for _, p in pairs if p == i)
        n_true = sum(1 for t, _ in pairs if t == i)
        row = out["per_class"][str(i)]
        assert row["support"] == n_true
        assert row["precision"] == pytest.approx(tp / n_pred if n_pred else 0.0)
        assert row["recall"] == pytest.approx(tp / n_true if n_true else 0.0)
    assert sum(r["support"] for r in out["per_class"].values()) == len(pairs)
    assert out["accuracy"] == pytest.approx(sum(t == p for t, p in pairs) / len(pairs))
    assert out["top_k"]["top_1"] == pytest.approx(out["accuracy"])
    # every sample sits at confidence 0.9, so ECE is |accuracy - 0.9|
    assert out["ece"] == pytest.approx(abs(out["accuracy"] - 0.9))


def test_wilson_interval_known_values():
    lo, hi = metrics.wilson_interval(65, 65)
    assert hi == 1.0 and lo == pytest.approx(65 / (65 + 1.959964 ** 2), abs=1e-6)
    assert metrics.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    lo, hi = metrics.wilson_interval(62, 65)  # asymmetric, and inside [0, 1]
    assert 0.87 < lo < 62 / 65 < hi < 0.99 and (62 / 65 - lo) > (hi - 62 / 65)
