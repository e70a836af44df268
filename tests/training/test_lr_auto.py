"""`lr: auto` (issue 19): the head's rate comes from short trials, the lowest val loss wins;
a finetune stage's from a race whose winner's epochs are kept, so the run goes on exactly
as a run at the winning fixed rate would have; the choice is written where the run's
settings live, and frozen BatchNorm never moves during the race's optimizer steps."""

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


def _auto_line(run: Path, stage: str) -> tuple[float, dict[float, float]]:
    """(chosen rate, {rate: val loss}) from train.log's auto line for `stage`."""
    line = next(text for text in (run / "train.log").read_text().splitlines()
                if "learning rate (auto)" in text and f"the {stage} stage" in text)
    chosen = float(re.search(r"\(auto\): (\S+) for", line).group(1))
    tried = re.search(r": ([^:]+)\)$", line).group(1)
    losses = {float(a): float(b) for a, b in (p.split() for p in tried.split(", "))}
    return chosen, losses


def _rows(run: Path, stage: str) -> list[dict]:
    return [r for r in csv.DictReader(open(run / "metrics.csv")) if r["stage"] == stage]


def test_head_auto_picks_the_lowest_trial_loss_and_records_it(tmp_path, live):
    run = _run(tmp_path, live, "h", {"epochs": 2, "lr": None}, {"unfreeze": 0})
    chosen, losses = _auto_line(run, "head")
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


def test_finetune_race_keeps_the_winners_epochs(tmp_path, live):
    """The auto run's finetune epochs equal, one by one, those of a run at the winning
    fixed rate: the race's epochs are the stage's own, and it goes on from them."""
    head = {"epochs": 1, "lr": 1e-3}  # far from separating the classes: val loss moves
    auto = _run(tmp_path, live, "auto", head, {"unfreeze": 2, "epochs": 4, "lr": None})
    chosen, losses = _auto_line(auto, "finetune")
    assert set(losses) == set(lr_find.RACE["rates"]) and chosen in losses
    assert yaml.safe_load((auto / "config.yaml").read_text())["finetune"]["lr"] == chosen
    fixed = _run(tmp_path, live, "fixed", head, {"unfreeze": 2, "epochs": 4, "lr": chosen})
    got, want = _rows(auto, "finetune"), _rows(fixed, "finetune")
    assert [r["epoch"] for r in got] == [str(e) for e in range(5)]
    assert len({r["val_loss"] for r in want}) > 2  # the epochs move: equality is a test
    for a, b in zip(got, want, strict=True):
        for k in ("train_loss", "val_loss", "val_acc"):
            x, y = float(a[k]), float(b[k])
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-4), (a, b)
    assert load_checkpoint(auto)["epoch"] == load_checkpoint(fixed)["epoch"]


def test_the_challenger_wins_only_by_a_clear_margin():
    """3e-4 replaces the default 1e-4 only when its per-image val losses are lower by two
    standard errors of the paired difference: a lower mean inside the noise is not enough."""
    default, challenger = lr_find.RACE["rates"]
    g = torch.Generator().manual_seed(0)
    base = torch.rand(150, generator=g)
    noise = 0.2 * torch.randn(150, generator=g)
    assert lr_find.winner(base, base - 0.1 + 0.01 * noise)[0] == challenger  # clearly lower
    lr, (mean, se) = lr_find.winner(base, base - 0.01 + noise)  # lower mean, within noise
    assert mean > 0 and lr == default
    assert lr_find.winner(base, base + 0.1)[0] == default  # worse
    nan = base.clone()
    nan[3] = float("nan")
    assert lr_find.winner(base, nan)[0] == default  # a NaN loss is never a gain


def test_race_steps_never_move_frozen_batchnorm(tmp_path, live):
    """Real optimizer steps at both racing rates; every BatchNorm's statistics in best.pt
    (unfrozen blocks included: finetune.train_bn is off) equal the weights file's."""
    _, weights = live
    before = torch.load(weights, weights_only=True)
    run = _run(tmp_path, live, "bn", {"epochs": 1, "lr": 1e-3},
               {"unfreeze": 2, "epochs": 3, "lr": None})
    best = load_checkpoint(run)
    assert best["stage"] == "finetune" and best["epoch"] > 0  # weights the race trained
    after = best["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and any(k.startswith("features.1") for k in stats)
    tail = ("features.11.", "features.12.")  # the unfrozen blocks of mobilenet_v3_small
    assert any(k.startswith(tail) for k in stats)
    for k in stats:
        assert torch.equal(after[k], before[k]), k
    moved = [k for k in after if k.startswith(tail) and k.endswith("weight")
             and not torch.equal(after[k], before[k])]
    assert moved  # the race did train the unfrozen blocks
