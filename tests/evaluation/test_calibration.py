"""Temperature scaling: the fit finds the logits' scale, held-out (cross-fit) calibration
helps overconfident logits, and a fit never sharpens on a val set without errors."""

from __future__ import annotations

import numpy as np
import pytest

from mobiletune.evaluation.calibration import (
    calibration_errors,
    choose_temperature,
    cross_fit_probs,
    fit_temperature,
    halves,
    softmax,
)
from mobiletune.evaluation.metrics import expected_calibration_error


def test_temperature_fit_and_cross_fit():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    z = rng.normal(size=(3000, 3))
    z[np.arange(3000), y] += 1.5
    t1 = fit_temperature(z, y)
    assert fit_temperature(z * 4, y) == pytest.approx(4 * t1, rel=1e-3)  # finds the scale
    over = z * 4  # overconfident logits: held-out calibration must help
    assert expected_calibration_error(cross_fit_probs(over, y), y) < \
        0.5 * expected_calibration_error(softmax(over), y)
    a, b = halves([0, 0, 1, 1, 1, 1])  # alternating within each class
    assert a.tolist() == [0, 2, 4] and b.tolist() == [1, 3, 5]
    e = calibration_errors(softmax(over), y, None, True)  # uncalibrated checkpoint
    assert e["ece"] == e["ece_uncalibrated"]
    right = np.eye(3)[y] * 5  # no val errors: the NLL falls forever as T -> 0; do not sharpen
    assert fit_temperature(right, y) == 1.0
    right[0] = np.roll(right[0], 1)  # one error among 3000: sharpen at most 2x
    assert fit_temperature(right, y) >= 0.5


def test_temperature_is_kept_only_when_it_helps_held_out_images():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    z = rng.normal(size=(400, 3))
    z[np.arange(400), y] += 1.5
    assert choose_temperature(z * 4, y) == pytest.approx(fit_temperature(z * 4, y))  # helps
    # Half the images confidently right, the other half confidently wrong on some: the
    # fit on all softens, which costs the confident half more than the fit saves on the
    # other, as each half's T shows on the other half. Declined: T = 1.
    y = np.array([0, 1] * 8)
    z = np.eye(2)[y] * 8.0
    _, b = halves(y)
    z[b[:3]] = z[b[:3]][:, ::-1]  # three confident mistakes, all in half b
    assert fit_temperature(z, y) > 1.5
    assert choose_temperature(z, y) == 1.0
    e = calibration_errors(softmax(z), y, 1.0, True)  # nothing fitted: no cross-fit either
    assert e["ece"] == e["ece_uncalibrated"]
