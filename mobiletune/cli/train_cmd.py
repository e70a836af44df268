"""`mobiletune train` and `mobiletune finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mobiletune.cli import common as c
from mobiletune.cli.app import app, err, guarded


def summary(best: dict) -> str:
    """The run's one number (scored live, as `evaluate` scores it), its interval, and for a
    finetune stage whether fine-tuning beat what it started from."""
    m = best["metrics"]
    nan = float("nan")
    text = (f"best: {best['stage']} epoch {best['epoch']}, val acc {m.get('val_acc', nan):.4f}")
    if "accuracy_ci95" in m:
        lo, hi = m["accuracy_ci95"]
        text += f" (95% CI {lo:.3f}-{hi:.3f}, {m.get('n_val', '?')} images)"
    text += f", val loss {m.get('val_loss', nan):.4f}"
    lr = best.get("config", {}).get("train" if best["stage"] == "head" else "finetune", {})
    if isinstance(lr.get("lr"), float):
        text += f", learning rate {lr['lr']:g}"
    if "ece" in m:
        text += f", ECE {m['ece']:.3f} (uncalibrated {m['ece_uncalibrated']:.3f})"
    t = best.get("temperature")
    if t == 1.0:
        text += ("\ncalibration: kept T = 1 (a fitted temperature did not lower the NLL of "
                 "held-out val images)")
    elif t is not None:
        text += f"\ncalibration: temperature {t:.3g} (lowers the NLL of held-out val images)"
    parent = m.get("parent_val_acc")
    if best["stage"] == "finetune" and best["epoch"] == 0:
        text += "\nfine-tuning did not beat its starting model (val loss); best.pt keeps it"
    elif best["stage"] == "finetune" and parent is not None:
        delta = (m["val_acc"] - parent) * 100
        text += (f"\nfine-tuning {'helped' if delta > 0 else 'lowered val loss'}: val acc "
                 f"{parent:.4f} -> {m['val_acc']:.4f} ({delta:+.1f} points)")
    return text


def _finish(run_dir: Path) -> None:
    from mobiletune.model.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir)
    err.print(f"[bold green]done.[/] {summary(best)}\nrun directory: {run_dir}",
              highlight=False)


def _finish_folds(root: Path) -> None:
    import json

    s = json.loads((root / "folds.json").read_text())
    lo, hi = s["accuracy_ci95"]
    err.print(f"[bold green]done.[/] {s['k']}-fold accuracy {s['accuracy_mean']:.4f} (95% CI "
              f"{lo:.3f}-{hi:.3f}, {s['n_images']} images, each scored once)\n"
              f"per fold: {root / 'folds.csv'}\nrun directory: {root}", highlight=False)


TRAIN_EXAMPLES = """Examples:

  mobiletune train --config configs/cats.yaml

  mobiletune train -c configs/cats.yaml --epochs 3 --set data.augment=light

  mobiletune train --resume runs/cats --device cpu"""

FINETUNE_EXAMPLES = """Examples:

  mobiletune finetune --unfreeze 3 --lr 1e-5              (continues runs/latest)

  mobiletune finetune --from runs/cats --unfreeze 5 --epochs 3 --image-size 256"""


@app.command(short_help="Train the head (backbone frozen), then the finetune stage if the config has one.",
             epilog=TRAIN_EXAMPLES)
@guarded
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", rich_help_panel=c.RUN, help="YAML config file (every key: configs/cats.yaml); without it, the defaults", show_default=False),
    resume: Optional[Path] = typer.Option(None, "--resume", rich_help_panel=c.RUN, help="continue an interrupted run directory from its last.pt (only --device, --workers and -q may change)", show_default=False),
    arch: Optional[c.ArchName] = c.Arch, weights: Optional[str] = c.Weights,
    data: Optional[str] = c.Data,
    epochs: Optional[int] = c.from_config("train.epochs", "head-stage epochs", "--epochs", panel=c.TRAINING),
    lr: Optional[float] = c.from_config("train.lr", "head-stage learning rate", "--lr", panel=c.TRAINING),
    batch_size: Optional[int] = c.BatchSize, image_size: Optional[int] = c.ImageSize,
    device: Optional[c.DeviceName] = c.Device, seed: Optional[int] = c.Seed,
    out: Optional[str] = c.Out, workers: Optional[str] = c.Workers,
    name: Optional[str] = c.Name, set_: Optional[list[str]] = c.Set,
    folds: Optional[int] = typer.Option(None, "--folds", rich_help_panel=c.TRAINING, show_default=False, help="k-fold estimate: K runs on K stratified folds of all images; writes folds.csv and folds.json"),
    quiet: bool = c.Quiet,
) -> None:
    """Train the head (backbone frozen), then the finetune stage if the config has one."""
    from mobiletune.cli.render import RichCallbacks
    from mobiletune.config.load import load_config
    from mobiletune.errors import ConfigError
    from mobiletune.training import run as pipeline
    from mobiletune.training.folds import train_folds
    from mobiletune.training.resume import resume as resume_run

    pairs = c.common_pairs(arch, weights, data, batch_size, image_size, device, seed, out,
                           workers, name)
    pairs.update({"train.epochs": epochs, "train.lr": lr})
    changes = c.overrides(pairs, set_)
    if resume is not None:
        if config is not None:
            raise ConfigError("--resume continues a run with its stored config; drop --config.")
        if folds is not None:
            raise ConfigError("--resume continues one run; drop --folds.", key="folds",
                              value=folds)
        _finish(resume_run(resume, RichCallbacks(quiet), dict(changes)))
        return
    cfg = load_config(config, changes)
    if folds is not None:
        _finish_folds(train_folds(cfg, folds, RichCallbacks(quiet)))
        return
    _finish(pipeline.train(cfg, RichCallbacks(quiet)))


@app.command(short_help="Continue a trained run with its last N blocks unfrozen, into a new run.",
             epilog=FINETUNE_EXAMPLES)
@guarded
def finetune(
    unfreeze: Optional[int] = typer.Option(None, "--unfreeze", rich_help_panel=c.TRAINING, show_default="from the parent's config, else 3", help="train the last N blocks of model.features (1 to the arch's block count)"),
    lr: Optional[float] = c.from_config("finetune.lr", "finetune learning rate", "--lr", panel=c.TRAINING),
    from_: Optional[str] = typer.Option(None, "--from", "--checkpoint", rich_help_panel=c.RUN, show_default="runs/latest", help="run directory or checkpoint to start from"),
    epochs: Optional[int] = c.from_config("finetune.epochs", "finetune epochs", "--epochs", panel=c.TRAINING),
    train_bn: Optional[bool] = typer.Option(None, "--train-bn/--no-train-bn", rich_help_panel=c.TRAINING, show_default="from config: finetune.train_bn", help="let BatchNorm statistics move in unfrozen blocks"),
    arch: Optional[c.ArchName] = c.Arch, weights: Optional[str] = c.Weights,
    data: Optional[str] = c.Data,
    batch_size: Optional[int] = c.BatchSize, image_size: Optional[int] = c.ImageSize,
    device: Optional[c.DeviceName] = c.Device, seed: Optional[int] = c.Seed,
    out: Optional[str] = c.Out, workers: Optional[str] = c.Workers,
    name: Optional[str] = c.Name, set_: Optional[list[str]] = c.Set, quiet: bool = c.Quiet,
) -> None:
    """Continue a trained run with its last N blocks unfrozen, into a new run directory
    (`<name>-ft`). The config is the parent's; overrides it cannot act on are refused."""
    from mobiletune.cli.render import RichCallbacks
    from mobiletune.training import run as pipeline

    pairs = c.common_pairs(arch, weights, data, batch_size, image_size, device, seed, out,
                           workers, name)
    pairs.update({"finetune.unfreeze": unfreeze, "finetune.lr": lr, "finetune.epochs": epochs,
                  "finetune.train_bn": train_bn})
    changes = dict(c.overrides(pairs, set_))
    _finish(pipeline.finetune(from_, changes, RichCallbacks(quiet)))
