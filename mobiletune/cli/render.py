"""Rich rendering of training progress: a stage table, a live bar per epoch, a line per epoch."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mobiletune.cli.app import err
from mobiletune.training.stage import Callbacks, EpochResult, StageSpec


def stage_table(spec: StageSpec, rows: list) -> Table:
    """Block, trainable or frozen, parameters, learning rate, BatchNorm mode."""
    length = (f"auto: until val loss stops improving for {spec.patience} epochs, at most "
              f"{spec.epochs}") if spec.auto else f"{spec.epochs} epochs"
    title = f"stage: {spec.name} ({length}" + (
        f", last {spec.unfreeze} blocks unfrozen)" if spec.unfreeze else ", head only)")
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in ("block", "status", "params", "lr", "BatchNorm"):
        t.add_column(col, justify="right" if col in ("params", "lr") else "left")
    for r in rows:
        t.add_row(r.block, "[green]trainable[/]" if r.trainable else "[dim]frozen[/]",
                  f"{r.params:,}", f"{r.lr:.1e}" if r.lr is not None else "-", r.bn)
    total = sum(r.params for r in rows if r.trainable)
    decayed = sum(r.decayed for r in rows)
    t.caption = (f"{total:,} trainable parameters; AdamW weight decay on the {decayed:,} in "
                 f"weights, none on the {total - decayed:,} in biases and norms")
    return t


class RichCallbacks(Callbacks):
    """Draws progress on stderr so that stdout stays clean for results."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None
        self.images = 0
        self.t0 = 0.0
        self._label: str | None = None

    def on_message(self, text: str) -> None:
        err.print(text, highlight=False, markup=False)

    def on_progress(self, label: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.progress is None or self.task is None or done <= 0 or self._label != label:
            self._start_bar(label, total)
        self.progress.update(self.task, completed=done, stats="")
        if done >= total:
            self.progress.stop()
            self.progress, self._label = None, None

    def _start_bar(self, label: str, total: int) -> None:
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                                 console=err, transient=True, disable=not err.is_terminal)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, stats="")
        self._label = label

    def on_stage_start(self, spec: StageSpec, rows: list) -> None:
        if not self.quiet:
            err.print(stage_table(spec, rows))

    def on_epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        self.progress = Progress(TextColumn(f"{stage} {epoch}/{epochs}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                 TimeRemainingColumn(), console=err, transient=True,
                                 disable=self.quiet or not err.is_terminal)
        self.progress.start()
        self.task = self.progress.add_task("epoch", total=steps, stats="")
        self.images, self.t0 = 0, time.perf_counter()

    def on_step(self, step: int, loss: float, acc: float, images: int) -> None:
        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, completed=step,
                             stats=f"loss {loss:.3f} acc {acc:.3f} {rate:.0f} img/s")

    def on_epoch_end(self, r: EpochResult, improved: bool) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None
        if self.quiet:  # auto epochs run 40-60 of them: the record is train.log + metrics.csv
            return
        star = " [green]*best[/]" if improved else ""
        if r.epoch == 0:  # a finetune stage scores the model it starts from first
            err.print(f"{r.stage} 0 (start): val loss {r.val_loss:.4f} acc {r.val_acc:.3f}{star}",
                      highlight=False)
            return
        err.print(f"{r.stage} {r.epoch}: train loss {r.train_loss:.4f} acc {r.train_acc:.3f} | "
                  f"val loss {r.val_loss:.4f} acc {r.val_acc:.3f} | {r.seconds:.1f}s{star}",
                  highlight=False)
