"""Head features and out-of-fold heads: the cheap core of `mobiletune audit` and its
learning curve.

Every image passes through the frozen backbone once, through the feature cache (augmented
training views and the eval view, as a run caches them); a head is then trained in-process
on those arrays with the head stage's own loop (`stage.fit_stage`: same optimizer, loss,
weight decay, dropout, view sampling and auto epochs; the held-out images play val, as in
`train --folds`). No run directory, no checkpoint: a head costs about a second where a
fold of `train --folds` costs a whole run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mobiletune.config.schema import Config
from mobiletune.data.samples import Sample, ScanResult
from mobiletune.training.lr_find import FALLBACK
from mobiletune.training.stage import Callbacks, StageSpec, StageState


@dataclass
class Features:
    """Every audited image's cached head features: `train_views` [N, V, d] (augmented, one
    drawn per epoch when training) and `eval_view` [N, 1, d] (what scoring sees)."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # [N] class indices
    train_views: np.ndarray
    eval_view: np.ndarray


@dataclass
class Heads:
    """What fitting needs besides the features: the model whose head is trained (its
    frozen part is never run here), the head stage's spec, seed, device, batch policy."""

    model: torch.nn.Module
    spec: StageSpec
    cfg: Config
    device: torch.device


def _as_array(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.block(0, len(x))


def load_features(cfg: Config, data: ScanResult, callbacks: Callbacks
                  ) -> tuple[Features, Heads]:
    """Every image's head features through the feature cache (filled where missing), and
    the model and head spec to train heads with. `data.cache: false` is not honoured here:
    an audit is many heads on one set of features."""
    from mobiletune.frozen.feeds import FeedSpec, make_feed
    from mobiletune.model.backbone import build_model, preprocess_spec
    from mobiletune.training.run import pick_device, plan

    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.arch, cfg.model.weights, len(data.classes), cfg.model.dropout)
    pre = preprocess_spec(cfg.model.arch, cfg.model.weights, cfg.data.image_size)
    every = sorted(data.samples, key=lambda s: s.path)
    # each image twice: as a training image (its augmented views) and as a val image (its
    # eval view); one feed, one pass over what the cache lacks
    both = ScanResult(list(data.classes), [Sample(s.path, s.label, "train") for s in every]
                      + [Sample(s.path, s.label, "val") for s in every])
    spec = dataclasses.replace(FeedSpec.of(cfg), cache=True)
    torch.set_flush_denormal(True)
    feed = make_feed(spec, both, pre, model, 0, device, callbacks)
    feats = Features(list(data.classes), [s.path for s in every],
                     np.array([s.label for s in every], np.int64),
                     _as_array(feed.train), _as_array(feed.val))
    spec = plan(cfg)[0]
    if spec.lr is None:  # lr: auto: the head stage's rate by hand; K folds need one rate
        spec = dataclasses.replace(spec, lr=FALLBACK["head"])
    return feats, Heads(model, spec, cfg, device)


class _Quiet(Callbacks):
    """fit_stage's hooks, silenced: an audit reports heads, not epochs."""


def fit_head(heads: Heads, feats: Features, train_idx: np.ndarray, val_idx: np.ndarray,
             seed: int) -> tuple[np.ndarray, int]:
    """Train a fresh head on `train_idx` with the head stage's loop (the held-out images
    select the epoch, as val does in a run); return the selected head's probabilities on
    the eval view of `val_idx` [len(val_idx), C] and the epoch it came from."""
    from mobiletune.frozen.feeds import CachedData, class_weights
    from mobiletune.model.backbone import split
    from mobiletune.training.stage import fit_stage, stage_threads, val_logits

    cfg, model, device = heads.cfg, heads.model, heads.device
    y = feats.labels
    data = CachedData(feats.train_views[train_idx], y[train_idx].tolist(),
                      feats.eval_view[val_idx], y[val_idx].tolist(),
                      batch_size=cfg.data.batch_size, balance=cfg.data.balance)
    head = model.classifier[-1]
    torch.manual_seed(seed)
    head.reset_parameters()  # a new head, initialized as build_model's is
    best: dict[str, Any] = {}

    def keep(state: StageState, improved: bool) -> None:
        if improved:
            best["head"] = {k: v.detach().clone() for k, v in head.state_dict().items()}
            best["epoch"] = state.epochs_done

    weights = class_weights(y[train_idx].tolist(), len(feats.classes)) \
        if cfg.data.balance == "weights" else None
    with stage_threads(heads.spec, data, device):
        fit_stage(model, heads.spec, data, seed=seed, device=device, state=StageState(),
                  save=keep, callbacks=_Quiet(), class_weights=weights)
        if "head" in best:
            head.load_state_dict(best["head"])
        prefix, tail = split(model, 0)
        logits, _ = val_logits(tail, prefix, data, device, shard=False)
    return torch.softmax(logits.double(), 1).numpy(), int(best.get("epoch", 0))


def out_of_fold(heads: Heads, feats: Features, folds: np.ndarray, k: int, seed: int,
                callbacks: Callbacks | None = None, label: str = "fold heads"
                ) -> np.ndarray:
    """[N, C] probabilities, row i from the head of the fold that held image i out."""
    probs = np.zeros((len(feats.labels), len(feats.classes)))
    for i in range(k):
        held = np.nonzero(folds == i)[0]
        probs[held], _ = fit_head(heads, feats, np.nonzero(folds != i)[0], held, seed)
        if callbacks:
            callbacks.on_progress(label, i + 1, k)
    return probs
