"""The design card's flow, side by side with another checkout: `train` (head only, defaults)
then `finetune --unfreeze 3 --lr 1e-5`, each a fresh process from a cold cache.

    .venv/bin/python benchmarks/bench_flow.py --baseline /tmp/old [--sets produce hymenoptera]
        [--finetune-args "--unfreeze 3 --lr 1e-5"] [--baseline-env KEY=VALUE ...]

`--baseline` is a checkout of the code to compare with (e.g. `git worktree add /tmp/old
e0a76dd`); it runs through PYTHONPATH, with this venv. Per data set and contender: seconds of
each command, val accuracy of each run, and whether the finetune command passed the images
through the frozen backbone again ("caching frozen features" in its output). `--baseline .
--baseline-env MOBILETUNE_CPU_BF16=0` compares this code with itself, bf16 turned off. Data:
../shared's grocery_produce (8 classes, flat) and hymenoptera (train/ and val/), offline
MobileNetV2 weights.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
SETS = {"produce": SHARED / "datasets" / "grocery_produce",
        "hymenoptera": SHARED / "datasets" / "hymenoptera"}


def _run(code: Path, work: Path, args: list[str], extra: dict | None = None
         ) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(code), "MOBILETUNE_CACHE": str(work / "cache"),
           **(extra or {})}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mobiletune", *args], cwd=work, env=env,
                         capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{code}: mobiletune {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return took, res.stderr


def _acc(run: Path) -> float:
    return float(torch.load(run / "best.pt", weights_only=True)["metrics"]["val_acc"])


def flow(code: Path, data: Path, finetune: list[str], seed: int, extra: dict | None = None
         ) -> dict:
    """train then finetune in a fresh folder and cache (`extra`: environment variables);
    seconds, accuracies, re-pass."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t_train, _ = _run(code, work, ["train", "--data", str(data), "--arch", "mobilenet_v2",
                                       "--weights", str(WEIGHTS), "--name", "r", "-q",
                                       "--set", f"seed={seed}"], extra)
        t_ft, err = _run(code, work, ["finetune", *finetune, "-q"], extra)
        return {"train_s": t_train, "finetune_s": t_ft, "train_acc": _acc(work / "runs" / "r"),
                "finetune_acc": _acc(work / "runs" / "r-ft"),
                "repass": "caching frozen features" in err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--finetune-args", default="--unfreeze 3 --lr 1e-5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="environment variables for the baseline's runs")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    ft = shlex.split(args.finetune_args)
    t = Table(title=f"train, then finetune {args.finetune_args}: fresh processes, cold cache, "
                    f"{os.cpu_count()} cores")
    for col in ("data", "code", "train s", "finetune s", "both s", "ratio", "frozen pass again",
                "head acc", "finetune acc"):
        t.add_column(col, justify="right")
    extra = dict(kv.split("=", 1) for kv in args.baseline_env)
    for name in args.sets:
        rows = {"baseline": flow(args.baseline.resolve(), SETS[name], ft, args.seed, extra),
                "this": flow(ROOT, SETS[name], ft, args.seed)}
        base = rows["baseline"]["train_s"] + rows["baseline"]["finetune_s"]
        for who, r in rows.items():
            both = r["train_s"] + r["finetune_s"]
            t.add_row(name, who, f"{r['train_s']:.1f}", f"{r['finetune_s']:.1f}", f"{both:.1f}",
                      f"{both / base:.2f}x", "yes" if r["repass"] else "no",
                      f"{r['train_acc']:.3f}", f"{r['finetune_acc']:.3f}")
    Console(width=160).print(t)


if __name__ == "__main__":
    main()
