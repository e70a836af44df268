"""The learning curve of `mobiletune audit`: out-of-fold accuracy when the heads see 10, 20,
40, 70 and 100% of each class's training images, a power-law fit, and what twice and four
times the photos would likely give.

Subsets are nested (each class shuffled once per seed and fold, then cut at each fraction)
and class-stratified; every subset trains a head with training/audit.py's `fit_head` on the
cached features and is scored on the fold it never saw, so each point is an accuracy over
every image. Several seeds give the scatter; the interval resamples (seed, fold) units.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobiletune.evaluation.powerlaw import Forecast, bootstrap_forecast, plot_curve
from mobiletune.fileio import write_csv
from mobiletune.training.heads import Features, Heads, fit_head
from mobiletune.training.stage import Callbacks

FRACTIONS = (0.1, 0.2, 0.4, 0.7, 1.0)
CURVE_HEADER = ["fraction", "seed", "n_train", "correct", "n_scored", "accuracy"]


@dataclass
class Curve:
    """Measured points and the forecast. `correct`/`total` are [seeds * folds, fractions]."""

    fractions: list[float]
    n_train: list[float]  # mean training images per fold at each fraction
    seeds: int
    k: int
    correct: np.ndarray
    total: np.ndarray
    forecast: Forecast

    def accuracy_per_seed(self) -> np.ndarray:
        """[seeds, fractions]: pooled over the folds."""
        c = self.correct.reshape(self.seeds, self.k, -1).sum(1)
        t = self.total.reshape(self.seeds, self.k, -1).sum(1)
        return c / np.maximum(t, 1)

    def summary(self) -> dict[str, Any]:
        f = self.forecast
        return {"fractions": self.fractions, "n_train": self.n_train, "seeds": self.seeds,
                "accuracy": self.accuracy_per_seed().mean(0).tolist(),
                "fit": {"a": f.law.a, "b": f.law.b, "c": f.law.c},
                "forecast": [{"photos": m, "n_train": m * f.n_full, "accuracy": p, "low": lo,
                              "high": hi} for m, p, lo, hi in
                             zip(f.sizes, f.predicted, f.low, f.high)],
                "interval": f.level, "flat": f.flat, "sentence": f.sentence()}


def nested_subsets(labels: np.ndarray, train_idx: np.ndarray, fractions, seed: int
                   ) -> list[np.ndarray]:
    """For each fraction, that share of each class's training images (at least one per
    class), every smaller subset inside every larger one."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i in sorted(train_idx.tolist()):
        by_class.setdefault(int(labels[i]), []).append(i)
    for members in by_class.values():
        rng.shuffle(members)
    return [np.array(sorted(i for m in by_class.values()
                            for i in m[:max(1, round(f * len(m)))]), np.int64)
            for f in fractions]


def learning_curve(heads: Heads, feats: Features, folds: np.ndarray, k: int, seed: int, *,
                   seeds: int = 3, fractions=FRACTIONS, callbacks: Callbacks | None = None,
                   full: tuple[int, np.ndarray] | None = None, fit_upto: float | None = None,
                   sizes: tuple[float, ...] = (2.0, 4.0)) -> Curve:
    """Measure and fit the curve. `full` = (seed offset, out-of-fold probabilities) already
    computed on all training images (the audit's), reused as that seed's 100% point.
    `fit_upto`: fit only fractions up to this, and `sizes` (multiples of the 100% size) to
    forecast at: (1.0,) with fit_upto=0.5 checks a 2x forecast against the measured 100%."""
    fractions = sorted(float(f) for f in fractions)
    y = feats.labels
    units = seeds * k
    correct = np.zeros((units, len(fractions)))
    total = np.zeros((units, len(fractions)))
    n_train = np.zeros(len(fractions))
    todo = sum(1 for s in range(seeds) for f in fractions
               if not (full and s == full[0] and f == 1.0)) * k
    done = 0
    for s in range(seeds):
        run_seed = seed + s
        for i in range(k):
            held = np.nonzero(folds == i)[0]
            subsets = nested_subsets(y, np.nonzero(folds != i)[0], fractions, run_seed * 7919 + i)
            for j, (f, idx) in enumerate(zip(fractions, subsets)):
                if full and s == full[0] and f == 1.0:
                    probs = full[1][held]
                else:
                    probs, _ = fit_head(heads, feats, idx, held, run_seed)
                    done += 1
                    if callbacks:
                        callbacks.on_progress("learning curve", done, todo)
                correct[s * k + i, j] = (probs.argmax(1) == y[held]).sum()
                total[s * k + i, j] = len(held)
                n_train[j] += len(idx) / (seeds * k)
    upto = None if fit_upto is None else float(np.interp(fit_upto, fractions, n_train))
    forecast = bootstrap_forecast(n_train, correct, total, sizes, seed=seed, fit_upto=upto)
    return Curve(fractions, n_train.tolist(), seeds, k, correct, total, forecast)


def write_curve(curve: Curve, out: Path) -> None:
    """learning_curve.csv (one row per fraction and seed) and learning_curve.png."""
    acc = curve.accuracy_per_seed()
    c = curve.correct.reshape(curve.seeds, curve.k, -1).sum(1)
    t = curve.total.reshape(curve.seeds, curve.k, -1).sum(1)
    rows = [[f"{f:g}", s, f"{n:.1f}", int(c[s, j]), int(t[s, j]), f"{acc[s, j]:.6f}"]
            for j, (f, n) in enumerate(zip(curve.fractions, curve.n_train))
            for s in range(curve.seeds)]
    write_csv(out / "learning_curve.csv", CURVE_HEADER, rows)
    plot_curve(curve.n_train, acc, curve.forecast, out / "learning_curve.png")
