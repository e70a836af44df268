"""Real photos, real weights: two head epochs on hymenoptera reach >= 0.90 val accuracy."""

from __future__ import annotations

import csv

import pytest

from mobiletune.config.load import load_config
from mobiletune.predict.predictor import load
from mobiletune.training import run as pipeline
from tests.conftest import HYMENOPTERA, WEIGHTS, needs_shared


@pytest.mark.integration
@needs_shared()
def test_hymenoptera_two_head_epochs(tmp_path):
    cfg_file = tmp_path / "h.yaml"
    cfg_file.write_text(
        f"name: h\noutput: {tmp_path / 'runs'}\nmodel:\n  arch: mobilenet_v2\n"
        f"  weights: {WEIGHTS}\ndata:\n  root: {HYMENOPTERA}\ntrain:\n  epochs: 2\n")
    run = pipeline.train(load_config(cfg_file))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    best = max(float(r["val_acc"]) for r in rows)
    assert best >= 0.90, rows
    val = [r for r in csv.DictReader(open(run / "splits.csv")) if r["split"] == "val"]
    assert len(val) == 153
    preds = load(run).predict([r["path"] for r in val], top_k=1)
    correct = sum(p.top_k[0][0] == r["label"] for p, r in zip(preds, val))
    assert correct / len(val) >= 0.90
