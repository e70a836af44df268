"""Options shared by `train` and `finetune`, and their mapping onto config keys."""

from __future__ import annotations

from typing import Any, Optional

import typer

from mobiletune.config import parse_override

FROM_CONFIG = "default: from the config"
Arch = typer.Option(None, "--arch", help=f"mobilenet_v2 | mobilenet_v3_small | mobilenet_v3_large ({FROM_CONFIG})")
Weights = typer.Option(None, "--weights", help=f"imagenet | none | path/to/state_dict.pth ({FROM_CONFIG})")
Data = typer.Option(None, "--data", help=f"data folder ({FROM_CONFIG})")
BatchSize = typer.Option(None, "--batch-size", help=f"images per step ({FROM_CONFIG})")
ImageSize = typer.Option(None, "--image-size", help=f"crop size in pixels ({FROM_CONFIG})")
Device = typer.Option(None, "--device", help=f"auto | cpu | cuda | mps ({FROM_CONFIG})")
Seed = typer.Option(None, "--seed", help=f"random seed ({FROM_CONFIG})")
Out = typer.Option(None, "--out", help=f"folder for run directories ({FROM_CONFIG})")
Workers = typer.Option(None, "--workers", help=f"decode processes, auto or a number ({FROM_CONFIG})")
Name = typer.Option(None, "--name", help=f"run name ({FROM_CONFIG})")
Set = typer.Option(None, "--set", help="section.key=value for any config key; repeatable")


def overrides(pairs: dict[str, Any], sets: Optional[list[str]]) -> list[tuple[str, Any]]:
    """Dotted (key, value) overrides from named options (None = not given) and `--set`s."""
    out = [(k, v) for k, v in pairs.items() if v is not None]
    return out + [parse_override(s) for s in sets or []]


def common_pairs(arch, weights, data, batch_size, image_size, device, seed, out_dir, workers,
                 name) -> dict[str, Any]:
    """The common overrides of `train` and `finetune`, keyed by config key."""
    return {"model.arch": arch, "model.weights": weights, "data.root": data,
            "data.batch_size": batch_size, "data.image_size": image_size, "device": device,
            "seed": seed, "output": out_dir, "data.workers": workers, "name": name}
