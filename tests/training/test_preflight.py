"""Checks that can fail run before a run directory exists; `latest` moves only to a run that
trained; an override a command cannot act on is refused by name (exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from mobiletune.config.load import load_config
from mobiletune.errors import DataError, TrainingInterrupted
from mobiletune.training import run as pipeline
from tests.conftest import make_folder
from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
    write_config,
)
from tests.training.test_resume import StopAt


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    """(config file, runs folder) after one finished run `t`, which `latest` points at."""
    cfg = write_config(tmp_path, make_folder(tmp_path / "data"))
    invoke(["train", "--config", cfg, "-q"], 0)
    return cfg, tmp_path / "runs"


def _runs(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def _latest(out: Path) -> str:
    return os.readlink(out / "latest")


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_missing_device_fails_before_a_run_directory_exists(trained, monkeypatch, device):
    cfg, out = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    before = _runs(out)
    res = invoke(["train", "--config", cfg, "--device", device, "-q"], 2)
    assert f"device is {device}" in res.stderr and "--device cpu" in res.stderr
    assert _runs(out) == before and _latest(out) == "t"
    res = invoke(["finetune", "--from", out / "t", "--device", device, "-q"], 2)
    assert _runs(out) == before and _latest(out) == "t"


def test_a_run_that_fails_before_its_first_epoch_is_removed(trained, monkeypatch):
    cfg, out = trained

    def broken(*args, **kwargs):
        raise DataError("an image vanished")

    monkeypatch.setattr(pipeline, "make_feed", broken)
    before = _runs(out)
    res = invoke(["train", "--config", cfg, "-q"], 2)
    assert "an image vanished" in res.stderr
    assert _runs(out) == before and _latest(out) == "t"


def test_latest_moves_only_once_an_epoch_is_saved(trained, monkeypatch):
    cfg, out = trained
    seen = []

    def spy(*args, **kwargs):  # when the feed is built, no epoch has run yet
        seen.append(_latest(out))
        return feed(*args, **kwargs)

    feed = pipeline.make_feed
    monkeypatch.setattr(pipeline, "make_feed", spy)
    invoke(["train", "--config", cfg, "-q"], 0)
    assert seen == ["t"] and _latest(out) == "t-2"


@pytest.mark.parametrize("value,needle", [("0", "use --unfreeze 1-13"), ("-1", "use 1-13"),
                                          ("14", "use 1-13")])
def test_unfreeze_out_of_range_is_refused_with_the_valid_range(trained, value, needle):
    cfg, out = trained
    before = _runs(out)
    res = invoke(["finetune", "--from", out / "t", "--unfreeze", value, "-q"], 2)
    assert needle in res.stderr and "None" not in res.stderr
    assert _runs(out) == before


def test_resume_refuses_overrides_it_cannot_honour(trained):
    cfg, out = trained
    res = invoke(["train", "--resume", out / "t", "--epochs", "2", "--lr", "0.5",
                  "--set", "finetune.unfreeze=0"], 2)
    for key in ("train.epochs", "train.lr", "finetune.unfreeze"):
        assert key in res.stderr


def test_resume_applies_device_and_workers_and_records_them(tmp_path):
    cfg = write_config(tmp_path, make_folder(tmp_path / "data"), train={"epochs": 2})
    with pytest.raises(TrainingInterrupted):
        pipeline.train(load_config(cfg), StopAt("head", 2, step=1))
    run = tmp_path / "runs" / "t"
    assert _latest(tmp_path / "runs") == "t"  # interrupted, resumable: kept, and latest
    invoke(["train", "--resume", run, "--workers", "1", "--device", "cpu", "-q"], 0)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["workers"] == "1"
    assert (run / "metrics.csv").read_text().count("\nhead,") == 2


def test_finetune_refuses_what_it_would_only_record(trained):
    cfg, out = trained
    before = _runs(out)
    res = invoke(["finetune", "--from", out / "t", "--weights", "imagenet", "--set",
                  "train.epochs=3", "--set", "data.val_split=0.5", "-q"], 2)
    for key in ("model.weights", "train.epochs", "data.val_split"):
        assert key in res.stderr
    assert _runs(out) == before


def test_finetune_honours_image_size_and_dropout(trained, monkeypatch):
    cfg, out = trained
    seen = []

    def spy(cfg, data, pre, model, *args, **kwargs):
        seen.append((pre["crop"], model.classifier[-2].p))
        return feed(cfg, data, pre, model, *args, **kwargs)

    feed = pipeline.make_feed
    monkeypatch.setattr(pipeline, "make_feed", spy)
    invoke(["finetune", "--from", out / "t", "--unfreeze", "2", "--image-size", "64",
            "--set", "model.dropout=0.5", "-q"], 0)
    child = out / "t-ft"
    stored = yaml.safe_load((child / "config.yaml").read_text())
    assert stored["data"]["image_size"] == 64 and stored["model"]["dropout"] == 0.5
    assert seen == [(64, 0.5)]  # trained at what config.yaml says
    assert torch.load(child / "best.pt", weights_only=True)["preprocess"]["crop"] == 64
