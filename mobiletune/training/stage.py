"""One training stage: epochs of the trainable tail over batches of frozen-prefix outputs.

The loop is the same whether the frozen prefix runs live on images (`StageData.live`) or
its outputs come from the cache: a batch is `(z, y)` and the prefix is applied only when
the source says the batch holds raw images. Each epoch reseeds from (seed, stage, epoch),
which is what makes an interrupted run resume onto exactly the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mobiletune import dist
from mobiletune.errors import INTERRUPT
from mobiletune.model.backbone import (
    configure_stage,
    has_depthwise,
    param_groups,
    split,
    stage_rows,
)
from mobiletune.training.optim import AdamW, EpochSchedule

# The auto rule (epochs unset): constant lr, stop after `patience` epochs without a val-loss
# gain, at most `cap` epochs. Measured by benchmarks/sweep_epochs.py (seeds 0-4, hymenoptera
# and a small flat subset; the epoch is selected on one half of val and scored on the other):
# val loss with patience 10 matches the held-out accuracy of a 150-epoch run (0.954 / 0.972)
# after 45-57 epochs, while val accuracy with patience 10 stops after 13-19 epochs, 0.5-1.1
# points lower. A cosine schedule over the cap measured the same; constant keeps the
# trajectory independent of the cap. Finetune epochs cost more: a shorter rule, checked by
# benchmarks/bench_accuracy.py (default finetune never loses its parent: epoch 0).
AUTO_HEAD = {"cap": 100, "patience": 10}
AUTO_FINETUNE = {"cap": 20, "patience": 3}
AUTO_SCHEDULE = "constant"
# A val loss counts as a gain only when it is this much (relative) below the best: an epoch
# that shaves 1e-9 off the loss neither resets patience nor replaces best.pt.
MIN_GAIN = 1e-3


@dataclass(frozen=True)
class StageSpec:
    """What one stage trains: `unfreeze` = 0 is the head stage. `auto`: `epochs` is a cap
    and the stage stops on `patience`."""

    name: str
    unfreeze: int
    epochs: int
    lr: float | None  # None: `lr: auto`, chosen before the stage starts (lr_find.py)
    weight_decay: float
    label_smoothing: float
    patience: int
    train_bn: bool = False
    schedule: str = "cosine"  # cosine decay over `epochs`, or constant
    auto: bool = False


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

    def val_batches(self, shard: bool = True) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


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
    best: tuple[float, float] = (-1.0, math.inf)  # (val_acc, val_loss) of the selected epoch
    stale: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    history: list[EpochResult] = field(default_factory=list)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Every epoch's randomness derives from this alone (resume-exact by construction)."""
    return (seed * 1_000_003 + (0 if stage == "head" else 500_009) + epoch) % (2**63)


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether a CPU's training steps through convolution blocks run under bfloat16
    autocast: on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), unless
    MOBILETUNE_CPU_BF16=0. There a step of MobileNetV2's last 3 blocks takes 0.6x the time
    of float32 (benchmarks/bench_tail.py); finetune from the same parent selected the same
    epoch at the same val accuracy on grocery_produce and one val image more on hymenoptera
    (docs/training.md, "Precision"). Without native bf16 autocast emulates it, slower: off.
    """
    if os.environ.get("MOBILETUNE_CPU_BF16", "").strip() in ("0", "false", "off", "no"):
        return False
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(p is not None and p() for p in probes)


def step_batch(tail, prefix, data, x, y, device, loss_fn):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    cuda = device.type == "cuda"
    if cuda and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    # CUDA: float16 autocast (its loss scaling is in _train_epoch). CPU: bfloat16 for the
    # training steps of a convolution tail where the CPU has it (cpu_bf16); float32 for the
    # frozen prefix, the head alone (a 1280-wide matmul: nothing to gain) and every val pass
    # (selection compares val losses to 1e-3: they stay exact).
    with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        if data.live:
            with torch.no_grad():
                x = prefix(x)
        if not cuda and x.dim() == 4 and has_depthwise(tail):
            x = x.to(torch.float32, memory_format=torch.channels_last)
        bf16 = not cuda and x.dim() == 4 and torch.is_grad_enabled() and cpu_bf16()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = tail(x if cuda else x.float()).float()
    return logits, loss_fn(logits, y), y


def val_logits(tail: nn.Module, prefix: nn.Module, data: StageData,
               device, shard: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] and labels [N] of the val batches, the model in eval mode: this rank's
    share under torchrun, or every val image with shard=False (rank 0 alone)."""
    tail.eval()
    logits, labels = [], []
    with torch.no_grad():
        for x, y in data.val_batches(shard):
            z, _, y = step_batch(tail, prefix, data, x, y, device, lambda a, b: None)
            logits.append(z.float().cpu())
            labels.append(y.cpu())
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate(tail: nn.Module, prefix: nn.Module, data: StageData, device) -> tuple[float, float]:
    """Mean loss and accuracy on the val batches, the model in eval mode."""
    logits, y = val_logits(tail, prefix, data, device)
    loss_sum = F.cross_entropy(logits, y, reduction="sum").item() if len(y) else 0.0
    correct = (logits.argmax(1) == y).sum().item() if len(y) else 0
    loss_sum, correct, total = dist.all_sum([loss_sum, correct, len(y)])  # every rank's share
    return loss_sum / max(total, 1), correct / max(total, 1)


def is_gain(val_loss: float, best_loss: float) -> bool:
    """Selection and patience both follow val loss: far less noisy than val accuracy on a
    small val set (one image moves accuracy by 1/N; the loss moves smoothly)."""
    if not math.isfinite(best_loss):  # nothing usable selected yet (a first or NaN epoch)
        return True
    return val_loss < best_loss * (1 - MIN_GAIN)  # False for a NaN loss


def _score_start(spec, tail, prefix, data, device, state, save, callbacks) -> None:
    """Epoch 0 of a finetune stage: the model it starts from is scored first and stays the
    best until an epoch beats it, so fine-tuning can never lose its parent."""
    start = time.perf_counter()
    val_loss, val_acc = evaluate(tail, prefix, data, device)
    row = EpochResult(spec.name, 0, math.nan, math.nan, val_loss, val_acc, 0.0,
                      time.perf_counter() - start)
    state.best, state.stale = (val_acc, val_loss), 0
    state.history.append(row)
    save(state, True)
    callbacks.on_epoch_end(row, True)


def make_optimizer(model: nn.Module, spec: StageSpec, saved: dict | None = None) -> AdamW:
    """AdamW (training/optim.py: torch.optim's update without its 1 s import of dynamo) over
    the stage's trainable parameters in two groups (`model.param_groups`: no weight decay on
    biases and norms); `saved` is a resumed stage's optimizer state."""
    opt = AdamW(param_groups(model, spec.weight_decay), lr=spec.lr)
    if saved is not None:
        if len(saved["param_groups"]) != len(opt.param_groups):
            from mobiletune.errors import CheckpointError

            raise CheckpointError("This last.pt was written by an older mobiletune (one "
                                  "optimizer group, now two); finish it with that version, or "
                                  "start from its best.pt with `mobiletune finetune --from`.")
        opt.load_state_dict(saved)
    return opt


def fit_stage(model: nn.Module, spec: StageSpec, data: StageData, *, seed: int, device,
              state: StageState, save: Callable[[StageState, bool], None],
              callbacks: Callbacks, class_weights: torch.Tensor | None = None) -> StageState:
    """Train one stage from `state` to its last epoch (or early stop); `save(state, is_best)`
    runs after every epoch. Returns the final state."""
    configure_stage(model, spec.unfreeze, spec.train_bn)
    prefix, tail = split(model, spec.unfreeze)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    trainer = dist.wrap(tail, device)  # DDP when distributed: gradients averaged over ranks
    callbacks.on_stage_start(spec, stage_rows(model, spec.lr))
    opt = make_optimizer(model, spec, state.optimizer)
    # Cosine decay stepped once per epoch: epoch e trains at lr * (1 + cos(pi e / E)) / 2.
    # Stepped per batch, a short run (2 epochs of a few hundred images) spends half its
    # steps at a tiny rate and its head underfits; measured on hymenoptera, per-epoch
    # stepping lowers 2-epoch val loss from ~0.40 to ~0.30 across seeds.
    sched = EpochSchedule(opt, spec.schedule, spec.epochs)
    if state.optimizer is not None:
        sched.load_state_dict(state.scheduler)
    weight = class_weights.to(device) if class_weights is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=spec.label_smoothing)
    if spec.unfreeze and not state.history:
        _score_start(spec, tail, prefix, data, device, state, save, callbacks)
    for epoch in range(state.epochs_done + 1, spec.epochs + 1):
        if spec.patience and state.stale >= spec.patience:
            break
        result = _train_epoch(model, trainer, prefix, opt, loss_fn, spec, data, device,
                              epoch_seed(seed, spec.name, epoch), epoch, callbacks)
        sched.step()
        result.val_loss, result.val_acc = evaluate(tail, prefix, data, device)
        improved = is_gain(result.val_loss, state.best[1])
        state.stale = 0 if improved else state.stale + 1
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
        logits, loss, y = step_batch(tail, prefix, data, x, y, device, loss_fn)
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
    slower than one thread (benchmarks/bench_scale.py). A cached finetune step runs the
    last blocks on 7 x 7 maps: real work. On the quiet 2-core machine, 8 steps of 3
    MobileNetV2 blocks took 1.0-1.3 s with two threads and 1.7-1.9 s with one (2026-11-27);
    only on a machine already running 20 other threads did one thread win (31-44 s vs
    100-118 s), and a user's first run is not that machine.
    """
    before = torch.get_num_threads()
    if device.type == "cpu" and not data.live and spec.unfreeze == 0:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
