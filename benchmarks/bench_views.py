"""Choose K, the cached augmented views per training image, by measurement.

    .venv/bin/python benchmarks/bench_views.py [--epochs 5] [--seeds 0 1] [--views 1 2 4 8]

Trains the head stage on ../shared hymenoptera (offline MobileNetV2 weights) once with the
uncached augmented loop (`data.cache: false`, a fresh view every epoch) and once per K with
the cache, each from an empty cache, and prints val accuracy and seconds side by side.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
DATA = SHARED / "datasets" / "hymenoptera"


def run(epochs: int, seed: int, cache: bool, views: int) -> tuple[float, float]:
    """(seconds, best val accuracy) of one head-stage run from an empty cache."""
    from mobiletune.config.load import load_config
    from mobiletune.training import run as pipeline

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MOBILETUNE_CACHE"] = str(Path(tmp) / "cache")
        cfg = load_config(None, [("name", "v"), ("output", str(Path(tmp) / "runs")),
                                 ("model.arch", "mobilenet_v2"), ("model.weights", str(WEIGHTS)),
                                 ("data.root", str(DATA)), ("data.cache", cache),
                                 ("data.views", views), ("train.epochs", epochs),
                                 ("seed", seed), ("device", "cpu")])
        start = time.perf_counter()
        out = pipeline.train(cfg)
        seconds = time.perf_counter() - start
        rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
        return seconds, max(float(r.split(",")[5]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    table = Table(title=f"head stage, {args.epochs} epochs, hymenoptera, mobilenet_v2 "
                        f"(best val acc, mean over seeds {args.seeds})")
    for col in ("setting", "val acc", "seconds", "vs uncached"):
        table.add_column(col, justify="right")
    settings = [("uncached (fresh view per epoch)", False, 1)] + \
        [(f"cached, K={k}", True, k) for k in args.views]
    base = None
    for label, cache, k in settings:
        res = [run(args.epochs, s, cache, k) for s in args.seeds]
        acc = sum(a for _, a in res) / len(res)
        sec = sum(t for t, _ in res) / len(res)
        base = base if base is not None else (acc, sec)
        table.add_row(label, f"{acc:.4f}", f"{sec:.1f}",
                      f"{(acc - base[0]) * 100:+.1f} pt, {base[1] / sec:.1f}x")
        Console().print(f"{label}: acc {acc:.4f}, {sec:.1f}s")
    Console().print(table)


if __name__ == "__main__":
    main()
