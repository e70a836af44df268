"""Options shared by `train` and `finetune`, and their mapping onto config keys.

Choices come from the schema (one declaration), as `Literal` types so `--help` lists them
and a wrong value names them; an option whose default comes from the config says which key.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import typer

from mobiletune.config.load import parse_override
from mobiletune.config.schema import ARCHS, DEVICES

ArchName = Literal[ARCHS]  # type: ignore[valid-type]  # the schema's tuple, spelled once
DeviceName = Literal[DEVICES]  # type: ignore[valid-type]

DATA, MODEL, TRAINING, OUTPUT, RUN = "Data", "Model", "Training", "Output", "Config and run"


def from_config(key: str, help: str, *decls: str, panel: str) -> Any:
    """An option that overrides config key `key` (default: the config's value)."""
    return typer.Option(None, *decls, help=help, show_default=f"from config: {key}",
                        rich_help_panel=panel)


Arch = from_config("model.arch", "backbone architecture", "--arch", panel=MODEL)
Weights = from_config("model.weights", "imagenet | none | path/to/state_dict.pth (offline: a "
                      "local file)", "--weights", panel=MODEL)
Data = from_config("data.root", "data folder: DIR/<class>/* or DIR/train/<class>/* + "
                   "DIR/val/<class>/*", "--data", panel=DATA)
BatchSize = from_config("data.batch_size", "images per step", "--batch-size", panel=DATA)
ImageSize = from_config("data.image_size", "crop size in pixels", "--image-size", panel=DATA)
Workers = from_config("data.workers", "decode processes: auto or a number", "--workers",
                      panel=DATA)
Device = from_config("device", "where to train (auto: cuda, then mps, then cpu)", "--device",
                     panel=TRAINING)
Seed = from_config("seed", "random seed (split, init, augmentation, order)", "--seed",
                   panel=TRAINING)
Out = from_config("output", "folder for run directories", "--out", panel=OUTPUT)
Name = from_config("name", "run name: <out>/<name>, then <name>-2, ...", "--name", panel=OUTPUT)
Set = typer.Option(None, "--set", metavar="SECTION.KEY=VALUE", show_default=False,
                   rich_help_panel=RUN, help="any config key (see configs/cats.yaml); repeatable")
Quiet = typer.Option(False, "--quiet", "-q", rich_help_panel=OUTPUT,
                     help="no progress bars, stage tables or epoch lines (train.log and metrics.csv keep them)")


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
