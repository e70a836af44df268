"""`finetune.lr: auto` against the fixed rates a user would try, on the same parent runs.

    .venv/bin/python benchmarks/bench_lr.py [--sets produce hymenoptera] [--seeds 0 1 2]

Per data set and seed: one head-only `train` (defaults), then `finetune --unfreeze 3` from it
with `--lr` 1e-5, 3e-5, 1e-4, 3e-4 and with the default (`auto`), each a fresh process on the
parent's warm cache. The table gives each rate's val accuracy (live-scored best.pt) averaged
over the seeds, its seconds, and for auto the rates it chose. Data: ../shared's
grocery_produce (8 classes, flat) and hymenoptera; offline MobileNetV2 weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flow import ROOT, SETS, WEIGHTS, _run  # noqa: E402  (benchmarks/ is sys.path[0])

RATES = ("1e-5", "3e-5", "1e-4", "3e-4", "auto")


def _best(run: Path) -> tuple[float, float]:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    return float(ckpt["metrics"]["val_acc"]), float(ckpt["config"]["finetune"]["lr"])


def one_seed(data: Path, seed: int) -> dict[str, tuple[float, float, float]]:
    """rate -> (val acc, seconds, the rate used) for one parent run."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _run(ROOT, work, ["train", "--data", str(data), "--arch", "mobilenet_v2", "--weights",
                          str(WEIGHTS), "--name", "p", "-q", "--set", f"seed={seed}"])
        for rate in RATES:
            args = ["finetune", "--from", str(work / "runs" / "p"), "--unfreeze", "3", "-q",
                    "--name", f"ft-{rate}"] + ([] if rate == "auto" else ["--lr", rate])
            seconds, _ = _run(ROOT, work, args)
            acc, used = _best(work / "runs" / f"ft-{rate}")
            out[rate] = (acc, seconds, used)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    for name in args.sets:
        per_seed = [one_seed(SETS[name], s) for s in args.seeds]
        con.print(name, per_seed)
        t = Table(title=f"{name}: finetune --unfreeze 3 from the same head-only parents, seeds "
                        f"{args.seeds}, {os.cpu_count()} cores")
        for col in ("lr", "val acc (mean)", "per seed", "seconds (mean)", "vs 1e-5 time",
                    "rates used"):
            t.add_column(col, justify="right")
        base_s = statistics.mean(r["1e-5"][1] for r in per_seed)
        fixed = {rate: statistics.mean(r[rate][0] for r in per_seed) for rate in RATES[:-1]}
        for rate in RATES:
            accs = [r[rate][0] for r in per_seed]
            secs = statistics.mean(r[rate][1] for r in per_seed)
            used = sorted({f"{r[rate][2]:g}" for r in per_seed})
            t.add_row(rate, f"{statistics.mean(accs):.4f}", " ".join(f"{a:.3f}" for a in accs),
                      f"{secs:.1f}", f"{secs / base_s:.2f}x", ", ".join(used))
        con.print(t)
        auto = statistics.mean(r["auto"][0] for r in per_seed)
        best = max(fixed, key=fixed.get)
        con.print(f"{name}: auto {auto:.4f} vs the best fixed rate {best} {fixed[best]:.4f}: "
                  f"{(auto - fixed[best]) * 100:+.1f} points (target: >= -0.5)")


if __name__ == "__main__":
    main()
