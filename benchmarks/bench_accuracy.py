"""Accuracy you can trust: old defaults vs new defaults vs a long fixed run vs a linear probe.

    .venv/bin/python benchmarks/bench_accuracy.py [--seeds 0 1 2 3 4] [--out bench_accuracy.json]

Two data sets: ../shared hymenoptera (train/val folders, 153 val images; seeds change the
head's init and order) and `small`, a flat subset cut from it (60 images per class, val_split
0.3, so each seed is a different stratified split of 36 val images). Per seed:

- old defaults: 5 head epochs, best epoch by val accuracy (as before issue 10)
- new defaults: `train` with nothing set (epochs auto), then default `finetune`
- long fixed: `train.epochs: 100`
- probe: L2-regularised logistic regression (full-batch LBFGS) on the same frozen features

Accuracy is the run's reported val accuracy (scored live, the number `evaluate` gives),
ECE is cross-fit on val (temperature fitted on one half, measured on the other), and
seconds are wall time of the `train` call in this process (imports excluded) with a warm
feature cache. Results accumulate in `--out`, so an interrupted sweep continues where it
stopped.

    .venv/bin/python benchmarks/bench_accuracy.py --baseline-src DIR [--reps 3]

times a default hymenoptera `train` (a fresh process each) against the source tree DIR, and

    .venv/bin/python benchmarks/bench_accuracy.py --folds 5

times `train --folds 5` against one default `train` on both data sets (cold cache).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera"
WORK = Path(os.environ.get("BENCH_DIR", "/tmp/mobiletune-bench"))


def make_small(per_class: int = 60) -> Path:
    """A flat subset of hymenoptera (symlinks, so the feature cache is shared): every k-th
    image of each class over train + val."""
    root = WORK / "small"
    if root.is_dir():
        return root
    for cls in ("ants", "bees"):
        files = sorted((HYMENOPTERA / "train" / cls).iterdir()) + \
            sorted((HYMENOPTERA / "val" / cls).iterdir())
        step = len(files) / per_class
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f = files[int(i * step)]
            (root / cls / f"{f.parent.parent.name}_{f.name}").symlink_to(f)
    return root


DATASETS = {"hymenoptera": lambda: HYMENOPTERA, "small": make_small}


def base_overrides(root: Path, name: str) -> list[tuple[str, object]]:
    """A default config but for arch, weights and data: what a new user sets."""
    return [("name", name), ("output", str(WORK / "runs")), ("model.arch", "mobilenet_v2"),
            ("model.weights", str(WEIGHTS)), ("data.root", str(root)),
            ("data.val_split", 0.3 if root.name == "small" else 0.2), ("device", "cpu")]


def _train(overrides: list, finetune_from: Path | None = None) -> tuple[Path, float]:
    """A run (or a default finetune of `finetune_from`) and its wall seconds."""
    from mobiletune.config.load import load_config
    from mobiletune.training import run as pipeline

    start = time.perf_counter()
    if finetune_from is not None:
        run = pipeline.finetune(str(finetune_from), {})
    else:
        run = pipeline.train(load_config(None, overrides))
    return run, time.perf_counter() - start


def _scores(run: Path, seconds: float) -> dict:
    from mobiletune.model.checkpoint import load_checkpoint

    best = load_checkpoint(run)
    m = best["metrics"]
    return {"acc": m["val_acc"], "n_val": m["n_val"], "ece": m["ece"],
            "ece_uncalibrated": m["ece_uncalibrated"], "seconds": seconds,
            "epoch": best["epoch"], "stage": best["stage"], "run": str(run)}


def probe(overrides: list, l2: float = 1e-3) -> dict:
    """Multinomial logistic regression (full-batch LBFGS, L2) on the cached head features:
    every cached view of the training images, scored on the val images' eval features."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mobiletune.config.load import load_config
    from mobiletune.data.scan import scan
    from mobiletune.evaluation.calibration import calibration_errors, cross_fit_probs
    from mobiletune.evaluation.metrics import expected_calibration_error
    from mobiletune.frozen.feeds import FeedSpec, make_feed
    from mobiletune.model.backbone import build_model, preprocess_spec
    from mobiletune.training.stage import Callbacks

    cfg = load_config(None, overrides)
    start = time.perf_counter()
    data = scan(cfg.data.root, cfg.data.val_split, cfg.seed)
    model = build_model(cfg.model.arch, cfg.model.weights, len(data.classes))
    pre = preprocess_spec(cfg.model.arch, cfg.model.weights, cfg.data.image_size)
    feed = make_feed(FeedSpec.of(cfg), data, pre, model, 0, torch.device("cpu"), Callbacks())
    def every(arrays) -> np.ndarray:  # [n, views, features], in RAM or from the packs
        return arrays if isinstance(arrays, np.ndarray) else arrays.block(0, len(arrays))

    tr = torch.from_numpy(np.ascontiguousarray(every(feed.train)))
    views = tr.shape[1]
    x = tr.reshape(-1, tr.shape[-1]).float()
    y = feed.train_labels.repeat_interleave(views)
    xv = torch.from_numpy(np.ascontiguousarray(every(feed.val)[:, 0]))
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mean) / std, (xv.float() - mean) / std
    w = torch.zeros(x.shape[1], len(data.classes), requires_grad=True)
    b = torch.zeros(len(data.classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        z = (xv @ w + b).double().numpy()
    yv = feed.val_labels.numpy()
    seconds = time.perf_counter() - start
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return {"acc": float((z.argmax(1) == yv).mean()), "n_val": int(len(yv)),
            "ece": expected_calibration_error(cross_fit_probs(z, yv), yv),
            "ece_uncalibrated": calibration_errors(probs, yv, None, False)["ece"],
            "seconds": seconds}


SETTINGS = {
    "old defaults (5 epochs)": lambda o: _scores(*_train(o + [("train.epochs", 5)])),
    "new defaults (auto)": lambda o: _scores(*_train(o)),
    "long fixed (100 epochs)": lambda o: _scores(*_train(o + [("train.epochs", 100)])),
    "logistic probe (LBFGS)": probe,
}


def sweep(seeds: list[int], out: Path) -> dict:
    """Every (data set, setting, seed); results accumulate in `out`."""
    results = json.loads(out.read_text()) if out.is_file() else {}
    for seed in seeds:  # seed-major: a partial sweep still covers both data sets
        for name, make in DATASETS.items():
            root = make()
            base = base_overrides(root, f"{name}-s{seed}") + [("seed", seed)]
            for label, fn in SETTINGS.items():
                key = f"{name}|{label}|{seed}"
                if key not in results:
                    results[key] = fn(base)
                    out.write_text(json.dumps(results, indent=1))
                    print(key, results[key]["acc"], flush=True)
            key = f"{name}|new defaults + default finetune|{seed}"
            if key not in results:
                parent = Path(results[f"{name}|new defaults (auto)|{seed}"]["run"])
                results[key] = _scores(*_train([], finetune_from=parent))
                out.write_text(json.dumps(results, indent=1))
                print(key, results[key]["acc"], flush=True)
    return results


def table(results: dict) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    t = Table(title="val accuracy (scored live, as `evaluate`), ECE (cross-fitted) and seconds "
                    "per run, over seeds; mobilenet_v2, offline weights, warm cache, CPU")
    for col in ("data set", "setting", "acc mean", "acc min", "ECE", "ECE uncal.", "seconds",
                "epochs (best)", "seeds"):
        t.add_column(col, justify="right")
    groups: dict = {}
    for key, r in results.items():
        name, label, _ = key.split("|")
        groups.setdefault((name, label), []).append(r)
    for (name, label), rs in groups.items():
        acc = np.array([r["acc"] for r in rs])
        ece = np.mean([r["ece"] for r in rs])
        unc = np.mean([r["ece_uncalibrated"] for r in rs])
        ep = np.mean([r["epoch"] for r in rs]) if "epoch" in rs[0] else float("nan")
        t.add_row(name, label, f"{acc.mean():.4f}", f"{acc.min():.4f}", f"{ece:.3f}",
                  f"{unc:.3f}", f"{np.mean([r['seconds'] for r in rs]):.1f}", f"{ep:.1f}",
                  str(len(rs)))
    Console(width=170).print(t)
    for name in DATASETS:  # the bar: finetune never worse than its head by > 1 image
        pairs = [(results[f"{name}|new defaults (auto)|{s}"],
                  results.get(f"{name}|new defaults + default finetune|{s}"))
                 for s in sorted({k.split("|")[2] for k in results if k.startswith(name)})]
        worst = min(((f["acc"] - h["acc"]) * h["n_val"] for h, f in pairs if f), default=0)
        Console().print(f"{name}: default finetune vs its head, worst seed: {worst:+.0f} images")


def timing(baseline_src: Path, reps: int) -> None:
    """Wall time of a default `mobiletune train` on hymenoptera (a fresh process each, imports
    included), this tree vs `baseline_src` (e.g. `git archive` of the commit before issue 10),
    alternated so that machine noise hits both alike: with a warm feature cache, and cold
    (an empty cache per run, as a user's first run on a folder)."""
    import subprocess
    import sys
    import tempfile

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    here = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-m", "mobiletune", "train", "--arch", "mobilenet_v2", "--weights",
            str(WEIGHTS), "--data", str(HYMENOPTERA), "--out", str(WORK / "timing"), "-q"]
    codes = {"before issue 10 (5 epochs)": baseline_src, "this tree (auto)": here}
    times = {(label, cache): [] for label in codes for cache in ("warm", "cold")}
    for rep in range(reps + 1):  # round 0 warms the shared cache and the ONNX engines
        for cache in ("warm", "cold"):
            for label, src in codes.items():
                with tempfile.TemporaryDirectory() as tmp:
                    env = {**os.environ, "PYTHONPATH": str(src)}
                    if cache == "cold":
                        env["MOBILETUNE_CACHE"] = tmp
                    start = time.perf_counter()
                    subprocess.run(args, check=True, env=env, capture_output=True, timeout=900)
                    if rep:
                        times[(label, cache)].append(time.perf_counter() - start)
    t = Table(title=f"default `train` on hymenoptera, wall seconds (fresh process), median of "
                    f"{reps}")
    for col in ("code", "cache", "seconds", "vs before"):
        t.add_column(col, justify="right")
    for (label, cache), ts in times.items():
        base = float(np.median(times[("before issue 10 (5 epochs)", cache)]))
        med = float(np.median(ts))
        t.add_row(label, cache, f"{med:.1f}", f"{med / base:.2f}x")
    Console().print(t)


def folds_timing(k: int) -> None:
    """`train --folds K` against one default `train` on both data sets, each from an empty
    feature cache in a fresh process (imports included): what a K-fold estimate costs."""
    import subprocess
    import sys
    import tempfile

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"--folds {k} vs one default train, cold cache, wall seconds")
    for col in ("data set", "images", "one train", f"--folds {k}", "ratio", "folds accuracy"):
        t.add_column(col, justify="right")
    for name, make in DATASETS.items():
        root = make()
        secs = {}
        for label, extra in (("one", []), ("folds", ["--folds", str(k)])):
            with tempfile.TemporaryDirectory() as tmp:
                args = [sys.executable, "-m", "mobiletune", "train", "--arch", "mobilenet_v2",
                        "--weights", str(WEIGHTS), "--data", str(root), "--out", f"{tmp}/runs",
                        "--set", f"data.val_split={0.3 if name == 'small' else 0.2}", "-q", *extra]
                start = time.perf_counter()
                subprocess.run(args, check=True, env={**os.environ, "MOBILETUNE_CACHE": tmp},
                               capture_output=True, timeout=1800)
                secs[label] = time.perf_counter() - start
                if extra:
                    summary = json.loads(next(Path(tmp, "runs").glob("*/folds.json")).read_text())
        t.add_row(name, str(summary["n_images"]), f"{secs['one']:.1f}", f"{secs['folds']:.1f}",
                  f"{secs['folds'] / secs['one']:.2f}x",
                  f"{summary['accuracy_pooled']:.4f} ({summary['accuracy_ci95'][0]:.3f}-"
                  f"{summary['accuracy_ci95'][1]:.3f})")
    Console().print(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=Path("bench_accuracy.json"))
    ap.add_argument("--table", action="store_true", help="only print the table of --out")
    ap.add_argument("--baseline-src", type=Path, help="time default train vs this source tree")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--folds", type=int, help="time `train --folds K` against one train")
    args = ap.parse_args()
    if args.folds:
        folds_timing(args.folds)
        return
    if args.baseline_src:
        timing(args.baseline_src, args.reps)
        return
    import torch

    torch.set_flush_denormal(True)
    table(json.loads(args.out.read_text()) if args.table else sweep(args.seeds, args.out))


if __name__ == "__main__":
    main()
