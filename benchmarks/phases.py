"""Where a cold `mobiletune train` spends its time: the CLI in a fresh process, empty cache.

    .venv/bin/python benchmarks/phases.py [--epochs 10] [--reps 3]

Runs `mobiletune train` on ../shared hymenoptera (offline MobileNetV2 weights, head only)
with an empty feature cache, stamps every line it prints on stderr, and splits the wall time
at the lines that open each phase; the median over --reps runs per phase. Also the bare import
of torch and torchvision in a fresh process, for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
DATA = SHARED / "datasets" / "hymenoptera"
# (phase, the line that ends it); a phase starts where the previous one ended
MARKS = [("start: imports, scan, model", "caching frozen features"),
         ("prefix export + cache fill", "stage: "),
         ("epochs", "scoring the selected model"),
         ("calibrate + score val live", "done."),
         ("'done.' to exit", None)]


def one_run(epochs: int) -> dict[str, float]:
    """Seconds per phase of one cold run (a fresh cache and output folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MOBILETUNE_CACHE": f"{tmp}/cache", "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "mobiletune", "train", "--arch", "mobilenet_v2",
                "--weights", str(WEIGHTS), "--data", str(DATA), "--out", f"{tmp}/runs",
                "--epochs", str(epochs), "--device", "cpu"]
        start = time.perf_counter()
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True, env=env)
        stamps, i = {}, 0
        for line in proc.stderr:
            while i < len(MARKS) - 1 and MARKS[i][1] in line:
                stamps[MARKS[i][0]] = time.perf_counter()
                i += 1
        if proc.wait() != 0 or i < len(MARKS) - 1:
            sys.exit(f"the run failed or printed other lines (reached {MARKS[i][0]})")
        stamps[MARKS[-1][0]] = time.perf_counter()
    out, prev = {}, start
    for name, _ in MARKS:
        out[name], prev = stamps[name] - prev, stamps[name]
    out["total"] = prev - start
    return out


def import_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if not (WEIGHTS.is_file() and DATA.is_dir()):
        sys.exit(f"needs {WEIGHTS} and {DATA}")
    runs = [one_run(args.epochs) for _ in range(args.reps)]
    t = Table(title=f"cold `mobiletune train --epochs {args.epochs}` on hymenoptera, seconds, "
                    f"median of {args.reps}")
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    for name in [m[0] for m in MARKS] + ["total"]:
        t.add_row(name, f"{statistics.median(r[name] for r in runs):.2f}")
    for code in ("import torch", "import torch, torchvision"):
        t.add_row(f"(python -c '{code}')",
                  f"{statistics.median(import_seconds(code) for _ in range(args.reps)):.2f}")
    Console().print(t)


if __name__ == "__main__":
    main()
