"""Interrupts never lose work: Ctrl-C / SIGTERM exit 130 with a whole last.pt, and
`train --resume` ends on exactly the metrics of a run that was never interrupted."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mobiletune.config.load import load_config
from mobiletune.errors import INTERRUPT, TrainingInterrupted
from mobiletune.training import run as pipeline
from mobiletune.training import runstate
from mobiletune.training.stage import Callbacks
from tests.conftest import REPO, make_folder, make_image
from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
    read_csv,
    write_config,
)
from tests.helpers_runs import live_weights

SECTIONS = {"train": {"epochs": 2, "lr": 0.1}, "finetune": {"unfreeze": 2, "epochs": 2, "lr": 0.01}}


class StopAt(Callbacks):
    """Raise KeyboardInterrupt (what Ctrl-C does) at the end of an epoch, or at a step."""

    def __init__(self, stage: str, epoch: int, step: int | None = None) -> None:
        self.at, self.step, self.now = (stage, epoch), step, None

    def on_epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        self.now = (stage, epoch)

    def on_step(self, step: int, loss: float, acc: float, images: int) -> None:
        if self.now == self.at and step == self.step:
            raise KeyboardInterrupt

    def on_epoch_end(self, result, improved: bool) -> None:
        if self.step is None and (result.stage, result.epoch) == self.at:
            raise KeyboardInterrupt


def history(run: Path) -> list[tuple]:
    """(stage, epoch, train_loss, val_loss, val_acc) per epoch, full precision, from last.pt."""
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    return [(h["stage"], h["epoch"], h["train_loss"], h["val_loss"], h["val_acc"])
            for h in ckpt["resume"]["history"]]


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert [r[:2] for r in a] == [r[:2] for r in b]
    for x, y in zip(a, b):
        # nan: an epoch 0 row (a finetune stage scoring its start) has no training loss
        assert all(abs(x[i] - y[i]) <= 1e-4 or (math.isnan(x[i]) and math.isnan(y[i]))
                   for i in (2, 3, 4)), (x, y)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A data folder, a config per cache setting, and one uninterrupted reference run each.
    The backbone's features vary across images and views (random init would give ~1e-9
    everywhere, so a resume that drew other views or another order would go unnoticed)."""
    tmp = tmp_path_factory.mktemp("resume")
    data = make_folder(tmp / "data", classes=("a", "b"), per_class=8, size=40)
    weights = str(live_weights(tmp / "live.pth"))
    refs = {}

    def reference(cache: bool):
        if cache not in refs:
            cfg = write_config(tmp, data, name=f"c{int(cache)}", file=f"c{int(cache)}.yaml",
                               data={"cache": cache, "augment": "standard"},
                               model={"weights": weights}, **SECTIONS)
            refs[cache] = (cfg, pipeline.train(load_config(cfg)))
            losses = [h[2] for h in history(refs[cache][1])]
            assert max(losses) - min(losses) > 1e-3  # training on real signal
        return refs[cache]

    return tmp, data, reference


@pytest.mark.parametrize("cache, stop", [
    (False, StopAt("head", 1)),  # between epochs: resume runs head 2 and the finetune stage
    (False, StopAt("finetune", 1, step=2)),  # mid-epoch, inside the second stage
    (True, StopAt("head", 1, step=1)),  # the default feature cache on
    # mid-epoch after a finished epoch whose checkpoint was still in memory: what is written
    # is that epoch, not the weights the interrupted epoch had already moved
    (True, StopAt("head", 2, step=2)),
], ids=["head-end", "finetune-mid", "cache-head-mid", "cache-head-mid-pending"])
def test_resume_reproduces_the_uninterrupted_run(setup, monkeypatch, cache, stop):
    tmp, _, reference = setup
    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp / "cache"))
    cfg, ref = reference(cache)
    with pytest.raises(TrainingInterrupted) as e:
        pipeline.train(load_config(cfg), stop)
    run = Path(e.value.run_dir)
    assert run != ref  # a new directory beside the reference
    done = history(run)  # last.pt is whole and loadable after the interrupt
    assert len(done) < len(history(ref))
    invoke(["train", "--resume", run, "-q"], 0)
    assert_same(history(ref), history(run))
    rows = read_csv(run / "metrics.csv")
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [h[:2] for h in history(ref)]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_of_a_finetune_run(setup):
    tmp, _, reference = setup
    _, parent = reference(False)
    changes = {"finetune.unfreeze": 3, "finetune.epochs": 2, "finetune.lr": 0.01}
    ref = pipeline.finetune(str(parent), changes)
    with pytest.raises(TrainingInterrupted) as e:
        pipeline.finetune(str(parent), changes, StopAt("finetune", 1))
    run = Path(e.value.run_dir)
    assert run.name.startswith(parent.name + "-ft") and run != ref
    invoke(["train", "--resume", run, "-q"], 0)
    assert_same(history(ref), history(run))
    assert len(history(run)) == 3  # epoch 0 (the parent) and two epochs


def test_resume_keeps_its_own_classes_and_split(setup, tmp_path):
    """A class folder added after the interrupt is not part of this run: resume trains on
    the split in splits.csv (a rescan would overrun the head's two logits)."""
    _, _, _ = setup
    data = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    cfg = write_config(tmp_path, data, train={"epochs": 2})
    with pytest.raises(TrainingInterrupted) as e:
        pipeline.train(load_config(cfg), StopAt("head", 1))
    before = (Path(e.value.run_dir) / "splits.csv").read_text()
    for i in range(4):
        make_image(data / "c" / f"c{i}.jpg", 40, seed=i, color=2)
    invoke(["train", "--resume", e.value.run_dir, "-q"], 0)
    ckpt = torch.load(Path(e.value.run_dir) / "last.pt", weights_only=True)
    assert ckpt["class_names"] == ["a", "b"] and ckpt["epoch"] == 2
    assert (Path(e.value.run_dir) / "splits.csv").read_text() == before


class SwallowedAt(Callbacks):
    """What the signal handler leaves behind when Python swallows its KeyboardInterrupt
    (raised inside a fork hook as a DataLoader starts workers): only the flag."""

    def on_epoch_end(self, result, improved: bool) -> None:
        if result.epoch == 1:
            INTERRUPT.set()


def test_an_interrupt_python_swallowed_still_stops_the_run(tmp_path):
    data = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    cfg = write_config(tmp_path, data, train={"epochs": 5})
    try:
        with pytest.raises(TrainingInterrupted) as e:
            pipeline.train(load_config(cfg), SwallowedAt())
    finally:
        INTERRUPT.clear()
    assert [h[:2] for h in history(Path(e.value.run_dir))] == [("head", 1)]


def _foreground() -> None:
    """The child as a terminal's foreground job: Ctrl-C delivered. A test runner started as
    a background job (`cmd &` in a script) ignores SIGINT, its children inherit that, and
    mobiletune rightly keeps ignoring it (cli/app._install_handlers)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cfg: Path, tmp: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOBILETUNE_CACHE": str(tmp / "cache"),
           "OMP_NUM_THREADS": "1"}  # as one_thread does in-process
    return subprocess.Popen([sys.executable, "-m", "mobiletune", "train", "--config", str(cfg),
                             "--epochs", "10000"], stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp, preexec_fn=_foreground, **kw)


@pytest.mark.parametrize("how", ["SIGINT-group", "SIGTERM"])
def test_signal_exits_130_with_a_loadable_last_pt(tmp_path, how):
    data = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    workers = 1 if how == "SIGINT-group" else 0  # Ctrl-C also reaches decode workers
    cfg = write_config(tmp_path, data, data={"workers": workers})
    proc = _start(cfg, tmp_path, start_new_session=True)
    lines, deadline = [], time.monotonic() + 120
    try:
        for line in proc.stderr:  # wait until the first epoch is done and saved
            lines.append(line)
            if line.startswith("head 1:") or time.monotonic() > deadline:
                break
        assert any(x.startswith("head 1:") for x in lines), "".join(lines)
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        err = "".join(lines) + proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    run = tmp_path / "runs" / "t"
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] >= 1 and ckpt["resume"]["history"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_checkpoints_are_written_when_due_not_after_every_epoch(tmp_path, monkeypatch):
    """A head epoch on cached features takes milliseconds: its checkpoints stay in memory
    until the stage ends (or CHECKPOINT_EVERY_S passes, or an interrupt); then every file
    on disk describes the same, final epoch."""
    data = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    cfg = write_config(tmp_path, data, train={"epochs": 4})
    writes, real = [], runstate.save_checkpoint

    def counting(path, ckpt):
        writes.append((Path(path).name, ckpt["epoch"]))
        return real(path, ckpt)

    monkeypatch.setattr(runstate, "save_checkpoint", counting)
    run = pipeline.train(load_config(cfg))
    # the run's start, the stage's end, then the same epoch marked as the stage done
    assert [e for n, e in writes if n == "last.pt"] == [0, 4, 4]
    assert len([n for n, _ in writes if n == "best.pt"]) == 1
    rows = read_csv(run / "metrics.csv")
    best = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"])))
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == int(best["epoch"])
    assert [h[1] for h in history(run)] == [1, 2, 3, 4]

    writes.clear()  # due at every epoch: each epoch reaches the disk as it ends
    monkeypatch.setattr(runstate, "CHECKPOINT_EVERY_S", 0.0)
    pipeline.train(load_config(cfg))
    assert [e for n, e in writes if n == "last.pt"] == [0, 1, 2, 3, 4, 4]
