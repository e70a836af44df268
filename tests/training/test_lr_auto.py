"""`lr: auto` (issue 19): the head's rate comes from short trials, the lowest val loss wins;
a finetune stage's is the measured recipe (3e-4 annealed over 3 epochs when epochs are
unset); either choice is written where the run's settings live, so a rerun from config.yaml
trains the same stage, and frozen BatchNorm never moves during the recipe's steps."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from mobiletune.config.load import load_config
from mobiletune.model.checkpoint import load_checkpoint
from mobiletune.training import lr_find
from mobiletune.training import run as pipeline
from mobiletune.training.stage import StageSpec
from tests.conftest import make_folder, tiny_config
from tests.helpers_runs import live_weights


@pytest.fixture
def live(tmp_path):
    """(data root, weights) whose activations vary across images."""
    return make_folder(tmp_path / "data", per_class=10), \
        live_weights(tmp_path / "w.pth", "mobilenet_v3_small")


def _run(tmp_path: Path, live, name: str, train: dict, finetune: dict) -> Path:
    data, weights = live
    cfg = tiny_config(tmp_path, data, name=name,
                      model={"arch": "mobilenet_v3_small", "weights": str(weights)},
                      data={"val_split": 0.4, "augment": "none"}, train=train,
                      finetune=finetune)
    return pipeline.train(load_config(cfg))


def _auto_line(run: Path, stage: str) -> str:
    """train.log's `lr: auto` line for `stage`."""
    return next(text for text in (run / "train.log").read_text().splitlines()
                if "learning rate (auto)" in text and f"the {stage} stage" in text)


def _tried(line: str) -> tuple[float, dict[float, float]]:
    """(chosen rate, {rate: val loss}) from a head stage's auto line."""
    chosen = float(re.search(r"\(auto\): (\S+) for", line).group(1))
    tried = re.search(r": ([^:]+)\)$", line).group(1)
    return chosen, {float(a): float(b) for a, b in (p.split() for p in tried.split(", "))}


def _rows(run: Path, stage: str) -> list[dict]:
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r["stage"] == stage]


def test_head_auto_picks_the_lowest_trial_loss_and_records_it(tmp_path, live):
    run = _run(tmp_path, live, "h", {"epochs": 2, "lr": None}, {"unfreeze": 0})
    chosen, losses = _tried(_auto_line(run, "head"))
    assert set(losses) == set(lr_find.HEAD_RATES)
    assert len(set(losses.values())) > 1  # the trials differ: the choice means something
    assert chosen == min(losses, key=losses.get)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == chosen
    assert load_checkpoint(run)["config"]["train"]["lr"] == chosen


def test_head_trials_are_never_longer_than_the_stage():
    """Auto epochs: five-epoch trials (two favoured a rate too high for a full stage);
    `epochs: 2` set by hand: two, the horizon the user asked the rate to be best at."""
    spec = StageSpec("head", 0, 100, None, 1e-4, 0.0, 10, auto=True)
    assert lr_find.trial_epochs(spec) == lr_find.TRIAL_EPOCHS == 5
    assert lr_find.trial_epochs(dataclasses.replace(spec, epochs=2, auto=False)) == 2
    assert lr_find.trial_epochs(dataclasses.replace(spec, epochs=30, auto=False)) == 5


def _same_epochs(got: list[dict], want: list[dict]) -> None:
    assert len({r["val_loss"] for r in want}) > 2  # the epochs move: equality is a test
    for a, b in zip(got, want, strict=True):
        for k in ("epoch", "lr", "train_loss", "val_loss", "val_acc"):
            x, y = float(a[k]), float(b[k])
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-4), (a, b)


def test_finetune_auto_is_the_annealed_recipe_and_its_config_reruns_it(tmp_path, live):
    """Epochs and lr unset: FINETUNE's 3 epochs from its rate, cosine-annealed, recorded in
    config.yaml as numbers; a run from that config.yaml trains the same epochs."""
    head = {"epochs": 1, "lr": 1e-3}  # far from separating the classes: val loss moves
    auto = _run(tmp_path, live, "auto", head, {"unfreeze": 2, "lr": None})
    lr, epochs = lr_find.FINETUNE["lr"], lr_find.FINETUNE["epochs"]
    rows = _rows(auto, "finetune")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs + 1))
    want = [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert [float(r["lr"]) for r in rows[1:]] == pytest.approx(want)
    assert f"{lr:g} for the finetune stage (cosine-annealed" in _auto_line(auto, "finetune")
    saved = yaml.safe_load((auto / "config.yaml").read_text())["finetune"]
    assert (saved["lr"], saved["epochs"]) == (lr, epochs)
    assert load_checkpoint(auto)["config"]["finetune"]["lr"] == lr
    rerun = _run(tmp_path, live, "rerun", head, {"unfreeze": 2, "lr": saved["lr"],
                                                  "epochs": saved["epochs"]})
    _same_epochs(rows, _rows(rerun, "finetune"))


def test_finetune_auto_keeps_the_epochs_a_user_set():
    """`epochs` set: the recipe's rate over those epochs; unset: its own length, no patience.
    A number for lr never reaches the recipe (plan keeps the patience rule for it)."""
    spec = StageSpec("finetune", 3, 20, None, 1e-4, 0.0, 3, schedule="constant", auto=True)
    auto = lr_find.finetune_recipe(spec)
    assert (auto.lr, auto.epochs, auto.schedule, auto.patience, auto.auto) == (
        lr_find.FINETUNE["lr"], lr_find.FINETUNE["epochs"], "cosine", 0, False)
    mine = lr_find.finetune_recipe(dataclasses.replace(spec, epochs=7, schedule="cosine",
                                                       patience=0, auto=False))
    assert (mine.lr, mine.epochs, mine.schedule) == (lr_find.FINETUNE["lr"], 7, "cosine")
    cfg = load_config(None, [("finetune.unfreeze", 3), ("finetune.lr", 1e-5)])
    fixed = pipeline.plan(cfg)[1]
    assert (fixed.lr, fixed.auto, fixed.patience) == (1e-5, True, 3)


def test_auto_finetune_steps_never_move_frozen_batchnorm(tmp_path, live):
    """Real optimizer steps at the recipe's rate; every BatchNorm's statistics in best.pt
    (unfrozen blocks included: finetune.train_bn is off) equal the weights file's."""
    _, weights = live
    before = torch.load(weights, weights_only=True)
    run = _run(tmp_path, live, "bn", {"epochs": 1, "lr": 1e-3},
               {"unfreeze": 2, "lr": None})
    best = load_checkpoint(run)
    assert best["stage"] == "finetune" and best["epoch"] > 0  # weights the recipe trained
    after = best["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and any(k.startswith("features.1") for k in stats)
    tail = ("features.11.", "features.12.")  # the unfrozen blocks of mobilenet_v3_small
    assert any(k.startswith(tail) for k in stats)
    for k in stats:
        assert torch.equal(after[k], before[k]), k
    moved = [k for k in after if k.startswith(tail) and k.endswith("weight")
             and not torch.equal(after[k], before[k])]
    assert moved  # the recipe did train the unfrozen blocks
