"""The head stage's `lr: auto`: how long a trial must be to pick the rate that ends best.

    .venv/bin/python benchmarks/bench_head_lr.py [--sets produce hymenoptera] [--seeds 0 1 2]
        [--horizons 2 5 10]

Per data set and seed, in one process on a warm feature cache (offline MobileNetV2 weights,
head only, defaults otherwise): a full head stage at each candidate rate (lr_find.HEAD_RATES;
auto epochs, so each runs until its val loss stops improving), giving its best raw val loss
and its live-scored val accuracy; then `lr: auto` with trials of each --horizons epochs, giving
the rate it chose. The table: per horizon, how often it chose the rate whose full stage ended
at the lowest val loss, and the mean val loss and accuracy of the runs at the rates it chose;
the first row is that oracle.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flow import SETS, WEIGHTS  # noqa: E402  (benchmarks/ is sys.path[0])


def _train(data: Path, seed: int, lr: float | None) -> tuple[float, float, float]:
    """(the rate used, best raw val loss over its epochs, live val acc) of one head run."""
    from mobiletune.config.load import load_config
    from mobiletune.training import run as pipeline

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [("name", "h"), ("output", tmp), ("model.arch", "mobilenet_v2"),
                                 ("model.weights", str(WEIGHTS)), ("data.root", str(data)),
                                 ("seed", seed), ("device", "cpu"), ("train.lr", lr)])
        run = pipeline.train(cfg)
        with open(run / "metrics.csv", newline="") as f:
            raw = min(float(r["val_loss"]) for r in csv.DictReader(f))
        used = yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"]
        acc = torch.load(run / "best.pt", weights_only=True)["metrics"]["val_acc"]
    return float(used), raw, float(acc)


def main() -> None:
    from mobiletune.training import lr_find

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--horizons", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    args = ap.parse_args()
    t = Table(title="head stage lr: auto, trial length against the rate that ends best "
                    f"(seeds {' '.join(map(str, args.seeds))})")
    for col in ("data", "chooser", "chose (per seed)", "picked the best", "val loss", "val acc"):
        t.add_column(col, justify="right")
    for name in args.sets:
        os.environ["MOBILETUNE_CACHE"] = tempfile.mkdtemp(prefix="bench-head-lr-")
        fixed = {s: {lr: _train(SETS[name], s, lr)[1:] for lr in lr_find.HEAD_RATES}
                 for s in args.seeds}
        oracle = {s: min(fixed[s], key=lambda lr: fixed[s][lr][0]) for s in args.seeds}
        choices = {"best fixed rate": oracle}
        for h in args.horizons:
            lr_find.TRIAL_EPOCHS = h
            choices[f"trials of {h:g} epochs"] = {s: _train(SETS[name], s, None)[0]
                                                  for s in args.seeds}
        for label, chose in choices.items():
            hits = sum(chose[s] == oracle[s] for s in args.seeds)
            loss = statistics.mean(fixed[s][chose[s]][0] for s in args.seeds)
            acc = statistics.mean(fixed[s][chose[s]][1] for s in args.seeds)
            t.add_row(name, label, " ".join(f"{chose[s]:g}" for s in args.seeds),
                      f"{hits}/{len(args.seeds)}", f"{loss:.4f}", f"{acc:.4f}")
    Console().print(t)


if __name__ == "__main__":
    main()
