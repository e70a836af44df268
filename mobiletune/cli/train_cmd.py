"""`mobiletune train` and `mobiletune finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mobiletune.cli import common as c
from mobiletune.cli.app import app, err, guarded


def _finish(run_dir: Path) -> None:
    from mobiletune.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir)
    m = best["metrics"]
    err.print(f"[bold green]done.[/] best: {best['stage']} epoch {best['epoch']}, val acc "
              f"{m.get('val_acc', float('nan')):.4f}, val loss {m.get('val_loss', float('nan')):.4f}"
              f"\nrun directory: {run_dir}", highlight=False)


@app.command()
@guarded
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (see configs/cats.yaml)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue an interrupted run directory from its last.pt"),
    arch: Optional[str] = c.Arch, weights: Optional[str] = c.Weights, data: Optional[str] = c.Data,
    epochs: Optional[int] = typer.Option(None, "--epochs", help=f"head-stage epochs ({c.FROM_CONFIG})"),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"head-stage learning rate ({c.FROM_CONFIG})"),
    batch_size: Optional[int] = c.BatchSize, image_size: Optional[int] = c.ImageSize,
    device: Optional[str] = c.Device, seed: Optional[int] = c.Seed, out: Optional[str] = c.Out,
    workers: Optional[str] = c.Workers, name: Optional[str] = c.Name,
    set_: Optional[list[str]] = c.Set,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or stage tables"),
) -> None:
    """Train the head (backbone frozen), then the finetune stage if the config has one."""
    from mobiletune.cli.render import RichCallbacks
    from mobiletune.config import load_config
    from mobiletune.errors import ConfigError
    from mobiletune import train as pipeline

    if resume is not None:
        if config is not None:
            raise ConfigError("--resume continues a run with its stored config; drop --config.")
        _finish(pipeline.resume(resume, RichCallbacks(quiet)))
        return
    pairs = c.common_pairs(arch, weights, data, batch_size, image_size, device, seed, out,
                           workers, name)
    pairs.update({"train.epochs": epochs, "train.lr": lr})
    cfg = load_config(config, c.overrides(pairs, set_))
    _finish(pipeline.train(cfg, RichCallbacks(quiet)))


@app.command()
@guarded
def finetune(
    unfreeze: Optional[int] = typer.Option(None, "--unfreeze", help="last N blocks of model.features to train (default: the stored config's, else 3)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="finetune learning rate (default: the stored config's, e.g. 1e-5)"),
    from_: Optional[str] = typer.Option(None, "--from", help="run directory or checkpoint to start from (default: runs/latest)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="finetune epochs (default: the stored config's)"),
    train_bn: Optional[bool] = typer.Option(None, "--train-bn/--no-train-bn", help="let BatchNorm statistics move in unfrozen blocks (default: no)"),
    arch: Optional[str] = c.Arch, weights: Optional[str] = c.Weights, data: Optional[str] = c.Data,
    batch_size: Optional[int] = c.BatchSize, image_size: Optional[int] = c.ImageSize,
    device: Optional[str] = c.Device, seed: Optional[int] = c.Seed, out: Optional[str] = c.Out,
    workers: Optional[str] = c.Workers, name: Optional[str] = c.Name,
    set_: Optional[list[str]] = c.Set,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or stage tables"),
) -> None:
    """Continue a trained run with its last N blocks unfrozen, into a new run directory."""
    from mobiletune.cli.render import RichCallbacks
    from mobiletune import train as pipeline

    pairs = c.common_pairs(arch, weights, data, batch_size, image_size, device, seed, out,
                           workers, name)
    pairs.update({"finetune.unfreeze": unfreeze, "finetune.lr": lr, "finetune.epochs": epochs,
                  "finetune.train_bn": train_bn})
    changes = dict(c.overrides(pairs, set_))
    _finish(pipeline.finetune(from_, changes, RichCallbacks(quiet)))
