"""A run in progress: where it writes, what it trains, its history, and its checkpoints.

`last.pt` is written before the first epoch, at the end of each stage, on Ctrl-C / SIGTERM /
an error, and otherwise at most every CHECKPOINT_EVERY_S seconds: each epoch keeps an
in-memory copy of what changed (the trainable part and the optimizer), so an interrupt at any
moment still leaves a resumable run, while a head epoch of a few milliseconds does not pay
for two full checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiletune import dist
from mobiletune.config.schema import Config
from mobiletune.data.samples import ScanResult
from mobiletune.fileio import update_latest, write_csv
from mobiletune.model.checkpoint import FORMAT_VERSION, save_checkpoint
from mobiletune.training.stage import (
    METRICS_HEADER,
    StageSpec,
    StageState,
    state_to_dict,
)

# Longest stretch of epochs whose checkpoints exist only in memory (lost only to SIGKILL or
# a power cut; Ctrl-C, SIGTERM and errors write them). Measured on hymenoptera: the two
# checkpoints cost 0.1-0.2 s per epoch against ~0.02 s of head-stage compute.
CHECKPOINT_EVERY_S = 30.0


@dataclasses.dataclass
class Run:
    """A run in progress: where it writes, what it trains, and its history so far."""

    dir: Path
    cfg: Config
    data: ScanResult
    model: nn.Module
    pre: dict
    stages: list[StageSpec]
    history: list = dataclasses.field(default_factory=list)
    stage_index: int = 0
    state: StageState = dataclasses.field(default_factory=StageState)
    device: torch.device = torch.device("cpu")
    started: bool = False  # an epoch finished here: the run is kept and `latest` points at it
    # checkpoints of the latest epochs, not yet on disk: {"best.pt": ckpt, "last.pt": ckpt}
    pending: dict = dataclasses.field(default_factory=dict)
    # the run's best checkpoint so far (rank 0), what best.pt holds or is about to hold
    best: dict | None = None
    flushed_at: float = dataclasses.field(default_factory=time.monotonic)

    def log(self, text: str) -> None:
        if not dist.is_main():  # one writer: rank 0
            return
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        with open(self.dir / "train.log", "a", encoding="utf-8") as f:
            f.write(f"{stamp} {text}\n")

    def checkpoint(self, *, resume: bool) -> dict[str, Any]:
        spec = self.stages[min(self.stage_index, len(self.stages) - 1)]
        last = (self.history or [None])[-1]
        ckpt = {"format_version": FORMAT_VERSION, "arch": self.cfg.model.arch,
                "class_names": list(self.data.classes), "stage": spec.name,
                "unfrozen_blocks": spec.unfreeze, "epoch": last.epoch if last else 0,
                "metrics": {k: getattr(last, k) for k in ("train_loss", "train_acc", "val_loss",
                                                          "val_acc")} if last else {},
                "preprocess": self.pre, "config": self.cfg.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}
        if resume:
            ckpt["resume"] = {"stages": [dataclasses.asdict(s) for s in self.stages],
                              "stage_index": self.stage_index, "state": state_to_dict(self.state),
                              "history": [r.__dict__.copy() for r in self.history]}
        return ckpt

    def save(self, state: StageState, is_best: bool) -> None:
        """After every epoch: keep its checkpoints in memory, write them when due."""
        self.state = state
        self.history = self._done_history() + list(state.history)
        if not dist.is_main():
            return
        moving = _moving_keys(self.model)
        if is_best:
            self.best = self.pending["best.pt"] = _snapshot(self.checkpoint(resume=False), moving)
        self.pending["last.pt"] = _snapshot(self.checkpoint(resume=True), moving)
        r = state.history[-1]
        self.log(f"{r.stage} epoch {r.epoch}: train_loss {r.train_loss:.4f} train_acc "
                 f"{r.train_acc:.4f} val_loss {r.val_loss:.4f} val_acc {r.val_acc:.4f}"
                 + (" (best)" if is_best else ""))
        # Under torchrun a SIGTERM can leave rank 0 waiting in a collective for a rank that
        # already stopped, until the launcher kills it: there every epoch is written as it ends.
        if dist.world_size() > 1 or time.monotonic() - self.flushed_at >= CHECKPOINT_EVERY_S:
            self.flush()

    def write_last(self) -> None:
        """last.pt on disk now (a run's start, a stage's end): one writer, rank 0."""
        if dist.is_main():
            save_checkpoint(self.dir / "last.pt", self.checkpoint(resume=True))

    def best_checkpoint(self) -> dict | None:
        """The best checkpoint so far, from memory; from best.pt only for a resumed run whose
        best epoch came before the resume."""
        if self.best is None and (self.dir / "best.pt").is_file():
            self.best = torch.load(self.dir / "best.pt", map_location="cpu", weights_only=True)
        return self.best

    def keep_best(self) -> dict | None:
        """The best checkpoint, copied whole: the next stage trains tensors that a snapshot
        shares with the model because they were frozen when it was taken."""
        best = self.best_checkpoint()
        if best is not None:
            self.best = {**best, "model": {k: v.clone() for k, v in best["model"].items()}}
            if "best.pt" in self.pending:
                self.pending["best.pt"] = self.best
        return self.best

    def set_best(self, ckpt: dict) -> None:
        """Replace the best checkpoint (the finished, calibrated one); written by `flush`."""
        self.best = self.pending["best.pt"] = ckpt

    def flush(self, hold_best: bool = False) -> None:
        """Write the pending checkpoints and metrics.csv (all of the same epoch); with
        `hold_best`, best.pt waits (the run's end finishes it first, then writes it once)."""
        if not dist.is_main() or (not self.pending and not self.history):
            return  # one writer: rank 0
        write_csv(self.dir / "metrics.csv", METRICS_HEADER, [r.row() for r in self.history])
        # best.pt first: an interrupt between the two leaves last.pt one epoch behind, and
        # resuming redoes that epoch (and rewrites best.pt); the other order loses best.pt
        for name in ("last.pt",) if hold_best else ("best.pt", "last.pt"):
            if name in self.pending:
                save_checkpoint(self.dir / name, self.pending[name])
                del self.pending[name]  # only once written: an interrupt retries it
        if not self.started and self.history and (self.dir / "best.pt").is_file():
            self.started = True  # a model is on disk: the run is kept, `latest` names it
            update_latest(self.dir)
        self.flushed_at = time.monotonic()

    def _done_history(self) -> list:
        names = {s.name for s in self.stages[self.stage_index:]}
        return [r for r in self.history if r.stage not in names]


def _moving_keys(model: nn.Module) -> set[str]:
    """State-dict keys a training step can change: every parameter and buffer (BatchNorm
    statistics) of a module that holds a trainable parameter."""
    keys: set[str] = set()
    for name, m in model.named_modules():
        own = list(m.named_parameters(recurse=False))
        if any(p.requires_grad for _, p in own):
            pre = f"{name}." if name else ""
            keys.update(pre + k for k, _ in [*own, *m.named_buffers(recurse=False)])
    return keys


def _snapshot(ckpt: dict[str, Any], moving: set[str]) -> dict[str, Any]:
    """`ckpt` frozen in time at the cost of the trainable part: the tensors that training
    can change are copied (the frozen ones cannot change before the copy is written), and
    so is the resume state (optimizer moments)."""
    ckpt["model"] = {k: v.clone() if k in moving else v for k, v in ckpt["model"].items()}
    if "resume" in ckpt:
        ckpt["resume"] = copy.deepcopy(ckpt["resume"])
    return ckpt
