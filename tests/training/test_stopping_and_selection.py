"""How a run ends (issue 10): epochs until val loss stalls by default, best.pt is the
epoch of lowest val loss, one number in the log, best.pt and evaluate, temperature scaling
folded in exactly once (and unfolded for a finetune), a finetune that keeps its parent when
it cannot beat it. The temperature fit and the accuracy interval themselves:
tests/evaluation/test_calibration.py and test_metrics.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchvision import models

from mobiletune.config.load import load_config
from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint
from mobiletune.predict.predictor import load
from mobiletune.training import finish, stage
from mobiletune.training import run as pipeline
from tests.conftest import make_folder, tiny_config
from tests.helpers_robust import invoke


def _live_weights(path: Path) -> Path:
    """A random mobilenet_v3_small state_dict whose activations do not vanish (random init
    gives features ~1e-9, so every logit would equal the head bias)."""
    torch.manual_seed(0)
    model = models.mobilenet_v3_small(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.1)  # O(1) features; 0.05 overflows float16
    torch.save(model.state_dict(), path)
    return path


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


@pytest.fixture
def live(tmp_path):
    """(config overrides, data root) for runs whose predictions vary across images."""
    data = make_folder(tmp_path / "data", per_class=10)
    weights = _live_weights(tmp_path / "w.pth")
    return {"model": {"arch": "mobilenet_v3_small", "weights": str(weights)},
            "data": {"val_split": 0.4, "augment": "none"}}, data


def test_default_epochs_are_auto():
    cfg = load_config(None)
    assert cfg.train.epochs is None and cfg.finetune.epochs is None
    spec = pipeline.plan(cfg)[0]
    assert spec.auto and spec.epochs == stage.AUTO_HEAD["cap"]
    assert spec.patience == stage.AUTO_HEAD["patience"]
    fixed = pipeline.plan(load_config(None, [("train.epochs", 7)]))[0]
    assert not fixed.auto and fixed.epochs == 7 and fixed.patience == 0
    assert load_config(None, [("train.epochs", "auto")]).train.epochs is None


def test_auto_epochs_stop_when_val_loss_stalls(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=4)
    monkeypatch.setitem(stage.AUTO_HEAD, "patience", 2)
    # a learning rate so small that val loss cannot move by MIN_GAIN: epoch 1 is the best
    cfg = load_config(tiny_config(tmp_path, data, train={"epochs": None, "lr": 1e-9}))
    assert len(_rows(pipeline.train(cfg))) == 3
    monkeypatch.setitem(stage.AUTO_HEAD, "cap", 2)  # the cap holds even while improving
    cfg = load_config(tiny_config(tmp_path, data, train={"epochs": None, "lr": 0.05}))
    assert len(_rows(pipeline.train(cfg))) == 2


def test_best_epoch_is_the_lowest_val_loss(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=4)
    # scripted val scores per epoch: accuracy peaks at epoch 3, val loss bottoms at epoch 2
    scores = iter([(0.50, 0.75), (0.30, 0.50), (0.40, 1.00), (0.3999, 1.00)])
    monkeypatch.setattr(stage, "evaluate", lambda *a: next(scores))
    run = pipeline.train(load_config(tiny_config(tmp_path, data, train={"epochs": 4})))
    assert load_checkpoint(run)["epoch"] == 2
    assert [r["val_loss"] for r in _rows(run)] == ["0.500000", "0.300000", "0.400000",
                                                    "0.399900"]


def _trained(tmp_path, live, epochs: int = 3) -> tuple[Path, dict]:
    extra, data = live
    cfg = load_config(tiny_config(tmp_path, data, train={"epochs": epochs, "lr": 0.05}, **extra))
    run = pipeline.train(cfg)
    return run, load_checkpoint(run)


def test_train_log_best_pt_and_evaluate_agree(tmp_path, live):
    run, best = _trained(tmp_path, live)
    m = best["metrics"]
    assert m["scored"] == "live" and m["n_val"] == 8
    predictor = load(run)
    val = [r["path"] for r in csv.DictReader(open(run / "splits.csv")) if r["split"] == "val"]
    probs, _ = predictor.predict_probs(val)
    assert probs[:, 0].std() > 1e-3  # predictions vary: the comparison below means something
    invoke(["evaluate", "--checkpoint", run, "--out", tmp_path / "ev"], 0)
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["accuracy"] == m["val_acc"] and ev["accuracy_ci95"] == m["accuracy_ci95"]
    assert ev["ece"] == m["ece"] and ev["ece_uncalibrated"] == m["ece_uncalibrated"]
    log = (run / "train.log").read_text()
    assert f"val_acc {m['val_acc']:.4f}" in log.splitlines()[-2]  # the final line, before done


def test_temperature_is_folded_once_and_unfolded_for_finetune(tmp_path, live, monkeypatch):
    # a fixed T (its fit: tests/evaluation/test_calibration.py): a tiny run with no val errors would fit T = 1
    monkeypatch.setattr(finish, "choose_temperature", lambda logits, labels: 2.5)
    run, best = _trained(tmp_path, live)
    t = best["temperature"]
    assert t == 2.5
    model = model_from_checkpoint(best)
    raw = model_from_checkpoint(best)
    raw.classifier[-1].weight.data *= t
    raw.classifier[-1].bias.data *= t
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), raw(x) / t, atol=1e-5)
    # the cached val loss of the selected epoch is the raw model's: the child's epoch 0
    # must score the raw (unfolded) parent, not the calibrated one
    parent_loss = float(_rows(run)[best["epoch"] - 1]["val_loss"])
    child = pipeline.finetune(str(run), {"finetune.unfreeze": 1, "finetune.epochs": 1,
                                         "finetune.lr": 1e-9})
    start = _rows(child)[0]
    assert start["epoch"] == "0" and start["stage"] == "finetune"
    assert float(start["val_loss"]) == pytest.approx(parent_loss, rel=2e-3)


def _never_beaten(parent: Path) -> Path:
    return pipeline.finetune(str(parent), {"finetune.unfreeze": 1, "finetune.epochs": 2,
                                           "finetune.lr": 1e-9})


def test_finetune_keeps_its_parent_when_it_cannot_beat_it(tmp_path, live, monkeypatch):
    """best.pt is then the parent as its run scored it: the same weights, temperature and
    live scores, taken over rather than computed again (the val images are the same bytes:
    their fingerprint matches), and evaluate still agrees with it."""
    parent, _ = _trained(tmp_path, live, epochs=2)
    rescored = []
    real = finish.score_live
    monkeypatch.setattr(finish, "score_live", lambda *a, **k: rescored.append(1) or real(*a, **k))
    child = _never_beaten(parent)
    rows = _rows(child)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[0]["train_loss"] == "nan"
    best, p = load_checkpoint(child), load_checkpoint(parent)
    assert best["epoch"] == 0 and best["metrics"]["parent_val_acc"] == p["metrics"]["val_acc"]
    assert rescored == [] and best["temperature"] == p["temperature"]
    for k in finish.LIVE_KEYS + ("val_fingerprint",):
        assert best["metrics"][k] == p["metrics"][k], k
    for k, v in p["model"].items():  # best.pt is the parent's model, exactly
        assert torch.equal(best["model"][k], v), k
    invoke(["evaluate", "--checkpoint", child, "--out", tmp_path / "ev"], 0)
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["accuracy"] == best["metrics"]["val_acc"] and ev["ece"] == best["metrics"]["ece"]
    from mobiletune.cli.train_cmd import summary

    assert "did not beat" in summary(best)


def test_a_kept_parent_is_scored_again_when_a_val_image_changed(tmp_path, live, monkeypatch):
    parent, _ = _trained(tmp_path, live, epochs=2)
    val = [r["path"] for r in csv.DictReader(open(parent / "splits.csv")) if r["split"] == "val"]
    from PIL import Image

    with Image.open(val[0]) as img:  # the same image, saved again: other bytes
        img.convert("RGB").save(val[0], quality=60)
    rescored = []
    real = finish.score_live
    monkeypatch.setattr(finish, "score_live", lambda *a, **k: rescored.append(1) or real(*a, **k))
    best = load_checkpoint(_never_beaten(parent))
    assert rescored == [1] and best["epoch"] == 0
    before = load_checkpoint(parent)["metrics"]["val_fingerprint"]
    assert best["metrics"]["val_fingerprint"] != before


def test_live_keys_are_what_live_scores_gives():
    import numpy as np

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert set(finish.live_scores(probs, [0, 1, 1], 1.0, True)) == set(finish.LIVE_KEYS)


def test_only_the_parents_own_weights_count_as_the_parent():
    """finish._is_parent: the epoch-0 weights are the parent's with its temperature taken
    out of the head; any other weights (a parent whose best.pt changed since) are not."""
    torch.manual_seed(0)
    state = models.mobilenet_v3_small(weights=None, num_classes=3).state_dict()
    parent = {"model": state, "temperature": 2.0}
    head = [k for k in state if k.startswith("classifier.3.")]
    epoch0 = {k: v * 2.0 if k in head else v.clone() for k, v in state.items()}
    assert finish._is_parent(epoch0, parent)
    assert not finish._is_parent(state, parent)  # the temperature still folded in
    other = dict(epoch0)
    key = next(k for k in state if k.endswith("weight") and k not in head)
    other[key] = epoch0[key] + 1e-3
    assert not finish._is_parent(other, parent)
