"""data.balance and train.patience change training as documented."""

from __future__ import annotations

import csv
from collections import Counter

import torch

from mobiletune.config.load import load_config
from mobiletune.frozen.feeds import CachedData, balanced_sampler, class_weights
from mobiletune.training import run as pipeline
from tests.conftest import make_folder, tiny_config


def test_class_weights_are_inverse_frequency():
    w = class_weights([0] * 30 + [1] * 10, 3)
    assert torch.allclose(w, torch.tensor([40 / (3 * 30), 40 / (3 * 10), 0.0]))


def test_sampler_draws_classes_equally():
    labels = [0] * 90 + [1] * 10
    drawn = Counter(labels[i] for i in balanced_sampler(labels, seed=0))
    assert abs(drawn[0] - drawn[1]) < 25  # unbalanced order would give 90 / 10


def test_cached_feed_uses_the_sampler():
    labels = [0] * 45 + [1] * 5
    feats = torch.arange(50, dtype=torch.float16).reshape(50, 1, 1).numpy()
    seen = Counter()
    for balance in ("none", "sampler"):
        data = CachedData(feats, labels, feats[:2], [0, 1], batch_size=10, balance=balance)
        seen[balance] = sum(int((y == 1).sum()) for _, y in data.train_batches(3))
    assert seen["none"] == 5 and seen["sampler"] > 15


def test_weighted_loss_changes_training(tmp_path):
    data = make_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    for i in range(8):  # make class a the majority
        (data / "a" / f"x{i}.jpg").write_bytes((data / "a" / "a_0.jpg").read_bytes())
    losses = {}
    for balance in ("none", "weights", "none"):  # same data, same seed: only balance differs
        cfg = load_config(tiny_config(tmp_path, data, data={"balance": balance}))
        run = pipeline.train(cfg)
        losses.setdefault(balance, set()).add(
            next(csv.DictReader(open(run / "metrics.csv")))["train_loss"])
    assert len(losses["none"]) == 1  # reproducible, so the difference below is the weights
    assert losses["none"] != losses["weights"]


def test_patience_stops_early(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4)
    # a learning rate so small that val accuracy cannot move: no gain after epoch 1
    cfg = load_config(tiny_config(tmp_path, data, train={"epochs": 6, "lr": 1e-9,
                                                          "patience": 2}))
    run = pipeline.train(cfg)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 3  # epoch 1 sets the best, epochs 2 and 3 bring no gain: stop
    cfg = load_config(tiny_config(tmp_path, data, train={"epochs": 4, "lr": 1e-9}))
    assert len(list(csv.DictReader(open(pipeline.train(cfg) / "metrics.csv")))) == 4
