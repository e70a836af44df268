"""Label suspects from out-of-fold probabilities: confident learning (Northcutt, Jiang and
Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021), its
prune-by-noise-rate rule.

1. Per-class thresholds: t_j = the mean probability of j over the images labelled j (how
   sure the model usually is of that class).
2. The confident joint C[y, k]: images labelled y whose most probable class among those at
   their own threshold (p_k >= t_k) is k; each row scaled to the images labelled y. Its
   off-diagonal C[y, k] estimates how many images labelled y are really k.
3. For each (y, k), the C[y, k] images labelled y with the largest margin p_k - p_y are
   the *confident* suspects, provided k beats the given label (p_k > p_y).
Every image whose given label another class beats out of fold is listed (a suspect), ranked
by the margin p(suggested) - p(given), best first; `confident` marks the ones step 3 picks.
The count of confident ones comes from the thresholds, so a clean set yields few of them
and the headline says so; the ranking reaches the rest, because confident learning alone
undercounts when the heads themselves learned from the wrong labels (hymenoptera with 5%
of labels flipped, seed 0: thresholded images alone held 55% of the flips, prune by noise
rate 70%, every disagreement ranked by margin 90% within the top 2 x flipped).

Pure numpy: the probabilities come from training/heads.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# How sure a suspect is, by margin p(suggested) - p(given): the page's headline counts these.
STRONG, LIKELY = 0.8, 0.5
SUSPECTS_HEADER = ["rank", "path", "given", "suggested", "p_given", "p_suggested", "margin",
                   "confident"]


@dataclass(frozen=True)
class Suspect:
    """One image whose given label the out-of-fold model doubts."""

    rank: int  # 1 = most confident
    index: int  # into the audited images
    path: str
    given: str
    suggested: str
    p_given: float
    p_suggested: float
    confident: bool = False  # selected by confident learning's prune-by-noise-rate rule

    @property
    def margin(self) -> float:
        return self.p_suggested - self.p_given

    @property
    def strength(self) -> str:
        """strong (margin >= 0.8), likely (>= 0.5) or weak."""
        return "strong" if self.margin >= STRONG else "likely" if self.margin >= LIKELY \
            else "weak"

    def row(self) -> list:
        return [self.rank, self.path, self.given, self.suggested, f"{self.p_given:.4f}",
                f"{self.p_suggested:.4f}", f"{self.margin:.4f}", "yes" if self.confident else "no"]


def class_thresholds(probs: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """t_j = mean p_j over the images labelled j; 1.0 for a class no image is labelled
    (nothing can reach it, so nothing is suggested there without evidence)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    c = probs.shape[1]
    t = np.ones(c)
    for j in range(c):
        mine = labels == j
        if mine.any():
            t[j] = probs[mine, j].mean()
    return t


def confident_joint(probs: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """C [C, C]: row y counts the images labelled y by their confident class (the most
    probable among the classes at their threshold), scaled so the row sums to the images
    labelled y (images no class is confident about are spread like the confident ones)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    c = probs.shape[1]
    t = class_thresholds(probs, labels)
    above = np.where(probs >= t[None, :], probs, -1.0)
    confident = above.max(1) >= 0
    joint = np.zeros((c, c))
    np.add.at(joint, (labels[confident], above[confident].argmax(1)), 1)
    given = np.bincount(labels, minlength=c).astype(np.float64)
    rows = joint.sum(1)
    scale = np.divide(given, rows, out=np.zeros(c), where=rows > 0)
    return joint * scale[:, None]


def find_suspects(probs: np.ndarray, labels: Sequence[int], paths: Sequence[str],
                  class_names: Sequence[str]) -> list[Suspect]:
    """The images whose given label is likely wrong, best first (see the module
    docstring). `probs` [N, C] must be out-of-fold: each row from a model that never saw
    that image, or every training image would agree with its own label."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) != len(paths):
        raise ValueError(f"probs {probs.shape}, {len(labels)} labels and {len(paths)} paths "
                         "do not match")
    joint = np.rint(confident_joint(probs, labels)).astype(np.int64)
    n = np.arange(len(labels))
    p_given = probs[n, labels]
    confident: set[int] = set()
    for y, k in zip(*np.nonzero(joint)):
        if y == k:
            continue
        mine = np.nonzero(labels == y)[0]
        margin = probs[mine, k] - p_given[mine]
        confident |= {int(i) for i in mine[np.argsort(-margin, kind="stable")[:joint[y, k]]]}
    rival = probs.copy()
    rival[n, labels] = -1.0
    k = rival.argmax(1)  # the most probable other class
    p_k = rival[n, k]
    hit = np.nonzero(p_k > p_given)[0]
    order = sorted(hit.tolist(), key=lambda i: (-(p_k[i] - p_given[i]), paths[i]))
    return [Suspect(r, i, str(paths[i]), class_names[labels[i]], class_names[k[i]],
                    float(p_given[i]), float(p_k[i]), i in confident)
            for r, i in enumerate(order, 1)]


def headline(suspects: Sequence[Suspect], n_images: int) -> str:
    """One sentence on how many suspects there are and how sure they are, so that a clean
    set (disagreements on hard images, few confident ones) does not read as dirty."""
    if not suspects:
        return f"No label suspects among {n_images} images: every label agrees with the model."
    c = counts(suspects)
    share = c["total"] / max(n_images, 1)
    text = (f"{c['total']} of {n_images} labels ({share:.1%}) are beaten by another class out "
            f"of fold; confident learning expects {c['confident']} label error"
            f"{'s' if c['confident'] != 1 else ''}. By margin: {c['strong']} strong "
            f"(>= {STRONG}), {c['likely']} likely (>= {LIKELY}), {c['weak']} weak.")
    if c["confident"] <= max(1, 0.005 * n_images):
        worth = (f" apart from {c['strong']} strong suspect{'s' if c['strong'] != 1 else ''} "
                 "worth a look") if c["strong"] else ""
        text += (f" The labels look clean{worth}: the rest are hard or ambiguous images as "
                 "much as possible mistakes.")
    else:
        text += " Start with the strong ones."
    return text


def counts(suspects: Sequence[Suspect]) -> dict[str, int]:
    """{strong, likely, weak, confident, total}."""
    out = {"strong": 0, "likely": 0, "weak": 0}
    for s in suspects:
        out[s.strength] += 1
    return {**out, "confident": sum(s.confident for s in suspects), "total": len(suspects)}
