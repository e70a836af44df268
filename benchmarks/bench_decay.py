"""Does sparing biases and norm parameters from weight decay change accuracy? Measured.

    .venv/bin/python benchmarks/bench_decay.py [--seeds 0 1 2] [--decays 1e-4 0.05]

Trains head 5 epochs + finetune 3 epochs (last 3 blocks) on ../shared hymenoptera with the
offline MobileNetV2 weights, once with one AdamW group (weight decay on every trainable
parameter, the old behaviour) and once with `model.param_groups` (decay only on weights of
2-D and up), same seeds, one shared feature cache, and prints val accuracy side by side.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
DATA = SHARED / "datasets" / "hymenoptera"


def one_group(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The old optimizer: every trainable parameter decays."""
    return [{"params": [p for p in model.parameters() if p.requires_grad],
             "weight_decay": weight_decay}]


def run(tmp: Path, seed: int, decay: float, split: bool) -> tuple[float, float]:
    """(head-stage best val acc, finetune-stage best val acc) of one run."""
    from mobiletune.config.load import load_config
    from mobiletune.model.backbone import param_groups
    from mobiletune.training import run as pipeline
    from mobiletune.training import stage

    stage.param_groups = param_groups if split else one_group
    cfg = load_config(None, [("name", "d"), ("output", str(tmp / "runs")),
                             ("model.arch", "mobilenet_v2"), ("model.weights", str(WEIGHTS)),
                             ("data.root", str(DATA)), ("train.epochs", 5),
                             ("train.weight_decay", decay), ("finetune.unfreeze", 3),
                             ("finetune.epochs", 3), ("seed", seed), ("device", "cpu"),
                             ("data.workers", "0")])
    out = pipeline.train(cfg)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = {s: max(float(r["val_acc"]) for r in rows if r["stage"] == s)
            for s in ("head", "finetune")}
    return best["head"], best["finetune"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--decays", type=float, nargs="+", default=[1e-4, 0.05])
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    console = Console()
    table = Table(title=f"AdamW groups, hymenoptera, mobilenet_v2, head 5 + ft 3 (3 blocks), "
                        f"best val acc, mean (min-max) over seeds {args.seeds}")
    for col in ("weight decay", "groups", "head", "finetune", "finetune vs one group"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MOBILETUNE_CACHE"] = str(Path(tmp) / "cache")  # shared by every run
        for decay in args.decays:
            base = None
            for label, split in (("one (all decay)", False), ("split (no decay: 1-D)", True)):
                res = [run(Path(tmp), s, decay, split) for s in args.seeds]
                console.print(f"wd {decay} {label}: {res}")
                cells = []
                for k in (0, 1):
                    vals = [r[k] for r in res]
                    cells.append(f"{statistics.mean(vals):.4f} ({min(vals):.3f}-{max(vals):.3f})")
                ft = statistics.mean(r[1] for r in res)
                base = ft if base is None else base
                table.add_row(f"{decay:g}", label, *cells, f"{(ft - base) * 100:+.2f} pt")
    console.print(table)


if __name__ == "__main__":
    main()
