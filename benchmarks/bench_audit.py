"""`mobiletune audit` on purpose-made label noise: recall, clean-set suspects, learning-curve
honesty and cost against `mobiletune train`, one table.

    MOBILETUNE_CACHE=/tmp/mt-bench-cache .venv/bin/python benchmarks/bench_audit.py \
        [--datasets hymenoptera grocery_produce] [--seeds 0 1 2] [--rates 0.05 0.10]

For each dataset of ../shared (MobileNetV2 offline weights, defaults otherwise):
- flipped: a copy (symlinks) with 5% / 10% of all images filed under another, random class
  (seeds 0, 1, 2); recall = flipped images among the top 2 x (number flipped) suspects.
- clean: the suspects of the unflipped set, by strength (a clean set must not look dirty).
- honesty: a learning curve fitted on nested subsets up to 50% of the training images
  forecasts the accuracy at 100% (twice the photos); compared with the measured 100%.
- cost: wall seconds of `mobiletune audit --no-curve` and of the curve alone (audit.json),
  against a default `mobiletune train` of the same folder; warm cache for all (an audit
  runs once first to fill it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
MODEL = ["--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--device", "cpu"]


def images(root: Path) -> list[tuple[str, str, Path]]:
    """(split folder or '', class, file) for every image of a train/val or flat folder."""
    out = []
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()] or [root]
    for sp in splits:
        for cls in sorted(p for p in sp.iterdir() if p.is_dir()):
            for f in sorted(cls.iterdir()):
                if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    out.append(("" if sp == root else sp.name, cls.name, f))
    return out


def flipped_copy(src: Path, dst: Path, rate: float, seed: int) -> set[str]:
    """`src` linked into `dst` with round(rate * N) images under another random class (in
    the same split); returns the flipped images' new paths."""
    files = images(src)
    classes = sorted({c for _, c, _ in files})
    rng = random.Random(seed)
    flip = set(rng.sample(range(len(files)), round(rate * len(files)))) if rate else set()
    moved = set()
    for i, (split, cls, f) in enumerate(files):
        to = rng.choice([c for c in classes if c != cls]) if i in flip else cls
        target = dst / split / to / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f, target)
        if i in flip:
            moved.add(str(target))
    return moved


def cli(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mobiletune", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def cfg_for(data: Path, out: Path, name: str):
    from mobiletune.config.load import load_config

    return load_config(None, [("data.root", str(data)), ("model.arch", "mobilenet_v2"),
                              ("model.weights", str(WEIGHTS)), ("device", "cpu"),
                              ("output", str(out)), ("name", name)])


def bench(name: str, seeds: list[int], rates: list[float], work: Path) -> dict:
    import numpy as np

    from mobiletune.data.samples import Sample
    from mobiletune.training.audit import audit
    from mobiletune.training.curve import learning_curve
    from mobiletune.training.folds import assign_folds
    from mobiletune.training.heads import load_features
    from mobiletune.training.run import scan_config

    src = SHARED / "datasets" / name
    clean = work / name / "clean"
    flipped_copy(src, clean, 0.0, 0)
    runs = work / name / "runs"
    print(f"[{name}] warming the cache (one audit with its curve)", flush=True)
    cli(["audit", str(clean), *MODEL, "--out", str(runs), "--name", "warm", "-q"], work)
    print(f"[{name}] timing train and audit (load average {os.getloadavg()[0]:.1f})",
          flush=True)
    t_train = cli(["train", "--data", str(clean), *MODEL, "--out", str(runs), "-q"], work)
    t_audit = cli(["audit", str(clean), *MODEL, "--out", str(runs), "--name", "clean",
                   "--no-curve", "-q"], work)
    t_curve_run = cli(["audit", str(clean), *MODEL, "--out", str(runs), "--name", "curve",
                       "-q"], work)
    summary = json.loads((runs / "curve-audit" / "audit.json").read_text())
    clean_summary = json.loads((runs / "clean-audit" / "audit.json").read_text())
    import csv

    with open(runs / "clean-audit" / "suspects.csv", newline="") as fh:
        clean_s = list(csv.DictReader(fh))
    mean_margin = (sum(float(r["margin"]) for r in clean_s) / len(clean_s)) if clean_s else 0.0

    recall: dict[float, list[float]] = {r: [] for r in rates}
    for rate in rates:
        for seed in seeds:
            copy = work / name / f"flip-{rate:g}-{seed}"
            moved = flipped_copy(src, copy, rate, seed)
            res = audit(cfg_for(copy, runs, f"flip-{rate:g}-{seed}"), curve=False)
            top = {s.path for s in res.suspects[:2 * len(moved)]}
            recall[rate].append(len(top & moved) / len(moved))
            print(f"[{name}] {rate:.0%} flipped, seed {seed}: {len(moved)} flipped, "
                  f"{len(res.suspects)} suspects, recall@2F {recall[rate][-1]:.2f}",
                  flush=True)

    # honesty: fit <= 50%, forecast 100% (2x), compare with the measured 100%
    cfg = cfg_for(clean, runs, "honesty")
    data = scan_config(cfg)
    feats, heads = load_features(cfg, data, __import__("mobiletune.training.stage",
                                                       fromlist=["Callbacks"]).Callbacks())
    folds = np.array(assign_folds([Sample(p, int(y), "train") for p, y in
                                   zip(feats.paths, feats.labels)], 5, cfg.seed))
    curve = learning_curve(heads, feats, folds, 5, cfg.seed, seeds=3,
                           fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 1.0), fit_upto=0.5,
                           sizes=(1.0,))
    f = curve.forecast
    print(f"[{name}] honesty: {f.sentence()}", flush=True)
    return {"name": name, "n": clean_summary["n_images"], "recall": recall,
            "clean": clean_summary["suspects"], "clean_margin": mean_margin,
            "oof_acc": clean_summary["accuracy_oof"],
            "honesty": (f.predicted[0], f.low[0], f.high[0], f.measured),
            "t_train": t_train, "t_audit": t_audit, "t_curve": summary["seconds"]["curve"],
            "t_curve_run": t_curve_run, "sentence": summary["curve"]["sentence"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["hymenoptera", "grocery_produce"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.05, 0.10])
    args = ap.parse_args()
    if not os.environ.get("MOBILETUNE_CACHE"):
        sys.exit("set MOBILETUNE_CACHE to a folder under /tmp (nothing lands in ~/.cache)")
    if not WEIGHTS.is_file():
        sys.exit(f"needs {WEIGHTS} and ../shared/datasets")
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine; heads are tiny anyway
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        results = [bench(d, args.seeds, args.rates, work) for d in args.datasets]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    head = ["dataset", "images"] + [f"recall@2F {r:.0%} flipped" for r in args.rates] + \
        ["clean: suspects (strong/likely/weak), mean margin", "OOF acc",
         "curve <=50% -> 100%: forecast [90% int.] vs measured", "train s", "audit s (x train)",
         "curve s (x train)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        p, lo, hi, m = r["honesty"]
        ok = "ok" if abs(p - m) <= 0.02 or lo <= m <= hi else "MISS"
        c = r["clean"]
        cells = [r["name"], str(r["n"])]
        cells += [f"{sum(v) / len(v):.0%} ({', '.join(f'{x:.2f}' for x in v)})"
                  for v in r["recall"].values()]
        cells += [(f"{c['total']} ({c['strong']}/{c['likely']}/{c['weak']}), "
                   f"{r['clean_margin']:.2f}"), f"{r['oof_acc']:.3f}",
                  f"{p:.1%} [{lo:.1%}-{hi:.1%}] vs {m:.1%} ({ok})", f"{r['t_train']:.1f}",
                  f"{r['t_audit']:.1f} ({r['t_audit'] / r['t_train']:.1f}x)",
                  f"{r['t_curve']:.1f} ({r['t_curve'] / r['t_train']:.1f}x)"]
        print("| " + " | ".join(cells) + " |")
    for r in results:
        print(f"{r['name']}: {r['sentence']}")


if __name__ == "__main__":
    main()
