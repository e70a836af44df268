"""One training stage: epochs of the trainable tail over batches of frozen-prefix outputs.

The loop is the same whether the frozen prefix runs live on images (`StageData.live`) or
its outputs come from the cache: a batch is `(z, y)` and the prefix is applied only when
the source says the batch holds raw images. Each epoch reseeds from (seed, stage, epoch),
which is what makes an interrupted run resume onto exactly the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mobiletune import dist
from mobiletune.interrupts import INTERRUPT
from mobiletune.model import configure_stage, split, stage_rows


@dataclass(frozen=True)
class StageSpec:
    """What one stage trains: `unfreeze` = 0 is the head stage."""

    name: str
    unfreeze: int
    epochs: int
    lr: float
    weight_decay: float
    label_smoothing: float
    patience: int
    train_bn: bool = False


@dataclass
class EpochResult:
    """One row of metrics.csv."""

    stage: str
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float

    def row(self) -> list:
        return [self.stage, self.epoch, f"{self.train_loss:.6f}", f"{self.train_acc:.6f}",
                f"{self.val_loss:.6f}", f"{self.val_acc:.6f}", f"{self.lr:.3e}", f"{self.seconds:.2f}"]


METRICS_HEADER = ["stage", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


class StageData(Protocol):
    """Batches for one stage. `live` batches hold images (the prefix still has to run)."""

    live: bool
    n_train: int
    steps_per_epoch: int

    def train_batches(self, epoch_seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def val_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


class Callbacks:
    """Progress hooks; the CLI overrides them to draw bars and tables."""

    def on_message(self, text: str) -> None: ...

    def on_progress(self, label: str, done: int, total: int) -> None: ...

    def on_stage_start(self, spec: "StageSpec", rows: list) -> None: ...

    def on_epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None: ...

    def on_step(self, step: int, loss: float, acc: float, images: int) -> None: ...

    def on_epoch_end(self, result: EpochResult, improved: bool) -> None: ...


@dataclass
class StageState:
    """Resumable progress of a stage: epochs done, best score, optimizer and scheduler."""

    epochs_done: int = 0
    best: tuple[float, float] = (-1.0, math.inf)  # (val_acc, val_loss)
    stale: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    history: list[EpochResult] = field(default_factory=list)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Every epoch's randomness derives from this alone (resume-exact by construction)."""
    return (seed * 1_000_003 + (0 if stage == "head" else 500_009) + epoch) % (2**63)


def _step_batch(tail, prefix, data, x, y, device, loss_fn):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    cuda = device.type == "cuda"
    if cuda and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    # CUDA: float16 autocast (its loss scaling is in _train_epoch); CPU: float32 as always
    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        if data.live:
            with torch.no_grad():
                x = prefix(x)
        logits = tail(x if cuda else x.float()).float()
    return logits, loss_fn(logits, y), y


def evaluate(tail: nn.Module, prefix: nn.Module, data: StageData, device) -> tuple[float, float]:
    """Mean loss and accuracy on the val batches, the model in eval mode."""
    tail.eval()
    total = correct = 0
    loss_sum = 0.0
    with torch.no_grad():
        for x, y in data.val_batches():
            logits, loss, y = _step_batch(tail, prefix, data, x, y, device,
                                          lambda a, b: F.cross_entropy(a, b, reduction="sum"))
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    loss_sum, correct, total = dist.all_sum([loss_sum, correct, total])  # every rank's share
    return loss_sum / max(total, 1), correct / max(total, 1)


def fit_stage(model: nn.Module, spec: StageSpec, data: StageData, *, seed: int, device,
              state: StageState, save: Callable[[StageState, bool], None],
              callbacks: Callbacks, class_weights: torch.Tensor | None = None) -> StageState:
    """Train one stage from `state` to its last epoch (or early stop); `save(state, is_best)`
    runs after every epoch. Returns the final state."""
    params = configure_stage(model, spec.unfreeze, spec.train_bn)
    prefix, tail = split(model, spec.unfreeze)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    trainer = dist.wrap(tail, device)  # DDP when distributed: gradients averaged over ranks
    callbacks.on_stage_start(spec, stage_rows(model, spec.lr))
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    # Cosine decay stepped once per epoch: epoch e trains at lr * (1 + cos(pi e / E)) / 2.
    # Stepped per batch, a short run (2 epochs of a few hundred images) spends half its
    # steps at a tiny rate and its head underfits; measured on hymenoptera, per-epoch
    # stepping lowers 2-epoch val loss from ~0.40 to ~0.30 across seeds.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
    weight = class_weights.to(device) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=spec.label_smoothing)
    for epoch in range(state.epochs_done + 1, spec.epochs + 1):
        if spec.patience and state.stale >= spec.patience:
            break
        result = _train_epoch(model, trainer, prefix, opt, loss_fn, spec, data, device,
                              epoch_seed(seed, spec.name, epoch), epoch, callbacks)
        sched.step()
        result.val_loss, result.val_acc = evaluate(tail, prefix, data, device)
        # best.pt: higher val accuracy, ties broken by lower val loss; patience counts
        # epochs without a gain in accuracy alone
        improved = (result.val_acc, -result.val_loss) > (state.best[0], -state.best[1])
        state.stale = 0 if result.val_acc > state.best[0] else state.stale + 1
        if improved:
            state.best = (result.val_acc, result.val_loss)
        state.epochs_done, state.optimizer, state.scheduler = epoch, opt.state_dict(), sched.state_dict()
        state.history.append(result)
        save(state, improved)
        callbacks.on_epoch_end(result, improved)
    return state


def _train_epoch(model, tail, prefix, opt, loss_fn, spec, data, device, eseed, epoch,
                 callbacks) -> EpochResult:
    # dropout and any on-the-fly augmentation: per epoch, and per rank (other data, other masks)
    torch.manual_seed(eseed + 7919 * dist.rank())
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    start, lr = time.perf_counter(), opt.param_groups[0]["lr"]
    callbacks.on_epoch_start(spec.name, epoch, spec.epochs, data.steps_per_epoch)
    model.train()  # frozen BatchNorm overrules this (model.EvalOnlyBatchNorm2d)
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(data.train_batches(eseed), 1):
        if INTERRUPT.is_set():  # a Ctrl-C whose KeyboardInterrupt Python swallowed
            raise KeyboardInterrupt
        logits, loss, y = _step_batch(tail, prefix, data, x, y, device, loss_fn)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        n = len(y)
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        callbacks.on_step(step, loss.item(), correct / seen, n)
    loss_sum, correct, seen = dist.all_sum([loss_sum, correct, seen])
    return EpochResult(spec.name, epoch, loss_sum / max(seen, 1), correct / max(seen, 1),
                       math.nan, math.nan, lr, time.perf_counter() - start)


def state_to_dict(state: StageState) -> dict[str, Any]:
    """Plain-dict form for a checkpoint (loadable with weights_only=True)."""
    return {"epochs_done": state.epochs_done, "best": list(state.best), "stale": state.stale,
            "optimizer": state.optimizer, "scheduler": state.scheduler,
            "history": [r.__dict__.copy() for r in state.history]}


def state_from_dict(d: dict[str, Any]) -> StageState:
    return StageState(d["epochs_done"], tuple(d["best"]), d["stale"], d["optimizer"],
                      d["scheduler"], [EpochResult(**r) for r in d["history"]])


@contextlib.contextmanager
def stage_threads(spec: StageSpec, data: StageData, device):
    """One intra-op thread for a cached head stage on CPU, the usual count otherwise.

    A cached head step is a few tiny ops (32 x 1280): splitting them over threads costs
    more than it saves, and on a busy machine a waiting OpenMP team made head epochs 25x
    slower than one thread (benchmarks/bench_scale.py).
    """
    before = torch.get_num_threads()
    if device.type == "cpu" and not data.live and spec.unfreeze == 0:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
