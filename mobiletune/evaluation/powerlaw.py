"""Learning-curve statistics: fit accuracy(n) = a - b * n^(-c), extrapolate with a
bootstrap interval, say it in one line, and draw it.

The fit is on the error rate e(n) = 1 - acc(n) = e_inf + b * n^(-c) with e_inf in [0, 1],
b >= 0 and c on a grid in [0.05, 2]: for each c the problem is linear in (e_inf, b), so the
fit is a grid of weighted least squares, exact and free of starting points (no scipy).
Pure numpy; the measured points come from training/curve.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

C_GRID = np.concatenate([np.linspace(0.05, 0.5, 46), np.linspace(0.52, 2.0, 75)])
# A 2x gain under this many accuracy points is "flat": more of the same photos barely help.
FLAT_POINTS = 0.5


@dataclass(frozen=True)
class PowerLaw:
    """acc(n) = a - b * n^(-c); `a` is the accuracy it levels off at."""

    a: float
    b: float
    c: float

    def __call__(self, n) -> np.ndarray:
        return self.a - self.b * np.power(np.asarray(n, np.float64), -self.c)


def fit_power_law(n: Sequence[float], acc: Sequence[float],
                  weights: Sequence[float] | None = None) -> PowerLaw:
    """The weighted least-squares acc(n) = a - b * n^(-c) through the points: for every c
    on the grid at once, the best (e_inf, b) within 0 <= e_inf <= 1 and b >= 0."""
    n, acc = np.asarray(n, np.float64), np.asarray(acc, np.float64)
    w = np.ones_like(n) if weights is None else np.asarray(weights, np.float64)
    if len(n) < 2 or len(np.unique(n)) < 2:
        raise ValueError("a learning curve needs points at two or more sizes")
    e = 1.0 - acc
    x = np.power(n[None, :], -C_GRID[:, None])  # [grid, points]
    sw = w.sum()
    xm, em = (w * x).sum(1) / sw, (w * e).sum() / sw
    vx = (w * (x - xm[:, None]) ** 2).sum(1)
    b = np.where(vx > 0, (w * (x - xm[:, None]) * (e - em)).sum(1) / np.maximum(vx, 1e-300), 0)
    e_inf = em - b * xm
    rising = b < 0  # error rising with more data: no power law, a flat line fits best
    b, e_inf = np.where(rising, 0.0, b), np.where(rising, em, e_inf)
    out = (e_inf < 0) | (e_inf > 1)  # a bound binds: refit b with e_inf fixed there
    clamped = np.clip(e_inf, 0.0, 1.0)
    b_fixed = np.maximum(0.0, (w * x * (e - clamped[:, None])).sum(1)
                         / np.maximum((w * x * x).sum(1), 1e-300))
    b, e_inf = np.where(out, b_fixed, b), clamped
    sse = (w * (e - e_inf[:, None] - b[:, None] * x) ** 2).sum(1)
    i = int(np.argmin(sse))
    return PowerLaw(float(1.0 - e_inf[i]), float(b[i]), float(C_GRID[i]))


@dataclass
class Forecast:
    """The fitted curve, what it predicts at `sizes`, and bootstrap intervals."""

    law: PowerLaw
    n_full: float  # training images behind the measured accuracy at 100%
    measured: float  # accuracy at n_full
    sizes: list[float]  # multiples of n_full predicted at, e.g. [2, 4]
    predicted: list[float]
    low: list[float]
    high: list[float]
    level: float  # of the intervals, e.g. 0.9
    band: tuple | None = None  # (sizes, low, high) of the fitted curve, for the plot

    @property
    def flat(self) -> bool:
        """Twice the photos are forecast to gain under FLAT_POINTS accuracy points."""
        i = self.sizes.index(2.0) if 2.0 in self.sizes else 0
        return (self.predicted[i] - self.measured) * 100 < FLAT_POINTS

    def sentence(self) -> str:
        """The one line the audit prints."""
        parts = []
        for m, p, lo, hi in zip(self.sizes, self.predicted, self.low, self.high):
            what = "twice" if m == 2 else f"{m:g}x"
            parts.append(f"with {what} the photos, expected val accuracy ~{p:.1%} "
                         f"(range {lo:.1%}-{hi:.1%})")
        text = f"now {self.measured:.1%} at {self.n_full:.0f} training images; " \
            + "; ".join(parts)
        if self.flat:
            text += (". The curve is flat: more photos like these will barely help; look at "
                     "the suspects and the most confused classes instead")
        return text + "."


def bootstrap_forecast(n: Sequence[float], correct: np.ndarray, total: np.ndarray,
                       sizes: Sequence[float] = (2.0, 4.0), n_boot: int = 400,
                       level: float = 0.9, seed: int = 0, fit_upto: float | None = None
                       ) -> Forecast:
    """Fit the pooled accuracy per size and forecast at `sizes` x the largest measured
    size, with an interval from resampling units (rows: a seed's fold, say).

    `correct` and `total` are [units, len(n)]: images right and scored per unit and size.
    `fit_upto`: fit only sizes up to this (the honesty check fits <= 50% and compares with
    the measured 100%); the forecast is still relative to the largest size."""
    n = np.asarray(n, np.float64)
    correct, total = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    use = n <= (fit_upto if fit_upto is not None else n.max())
    n_full = float(n.max())
    targets = np.asarray(sizes, np.float64) * n_full
    grid = np.geomspace(n.min(), targets.max(), 60)

    def law(rows: np.ndarray) -> PowerLaw:
        acc = correct[rows].sum(0) / np.maximum(total[rows].sum(0), 1)
        return fit_power_law(n[use], acc[use])

    fitted = law(np.arange(len(correct)))
    rng = np.random.default_rng(seed)
    laws = [law(rng.integers(0, len(correct), len(correct))) for _ in range(n_boot)]
    at = np.array([f(targets) for f in laws])
    along = np.array([f(grid) for f in laws])
    q = (1 - level) / 2
    full = n == n_full
    acc_full = correct[:, full].sum() / max(total[:, full].sum(), 1)
    return Forecast(fitted, n_full, float(acc_full), [float(s) for s in sizes],
                    fitted(targets).tolist(), np.quantile(at, q, axis=0).tolist(),
                    np.quantile(at, 1 - q, axis=0).tolist(), level,
                    (grid, np.quantile(along, q, axis=0), np.quantile(along, 1 - q, axis=0)))


def plot_curve(n: Sequence[float], acc_per_unit: np.ndarray, forecast: Forecast,
               out_png: str | os.PathLike):
    """Measured accuracy per size (each seed faint, their mean bold), the fitted power law
    out to the largest forecast size, its bootstrap band, and the forecasts with intervals."""
    from mobiletune.evaluation.report import _new_figure, _save_png

    n = np.asarray(n, np.float64)
    fig = _new_figure(7, 4.2)
    ax = fig.subplots()
    for row in np.atleast_2d(acc_per_unit):
        ax.plot(n, row * 100, "o", color="#9bb4d6", ms=4, alpha=0.7)
    ax.plot(n, np.mean(np.atleast_2d(acc_per_unit), 0) * 100, "o", color="#1f4e99", ms=7,
            label="measured (out-of-fold; faint: each seed)")
    grid = np.geomspace(n.min(), max(forecast.sizes) * forecast.n_full, 200)
    if forecast.band is not None:
        bx, lo, hi = forecast.band
        ax.fill_between(bx, lo * 100, hi * 100, color="#f2a65a", alpha=0.25,
                        label=f"{forecast.level:.0%} bootstrap band")
    ax.plot(grid, forecast.law(grid) * 100, "-", color="#d2691e", label="power-law fit")
    x = np.asarray(forecast.sizes) * forecast.n_full
    p = np.asarray(forecast.predicted) * 100
    ax.errorbar(x, p, yerr=[p - np.asarray(forecast.low) * 100,
                            np.asarray(forecast.high) * 100 - p],
                fmt="s", color="#b03a00", capsize=4, label="forecast (2x, 4x)")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("val accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("learning curve" + (" (flat)" if forecast.flat else ""))
    return _save_png(fig, out_png)
