"""Scale: synthetic folders of 1k, 5k, 20k (100k with --big) images, and 1 vs 2 processes.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000 5000 20000] [--big]
        [--image-size 224] [--epochs 3] [--device cpu|cuda] [--skip-torchrun]

Folders are cut from ../shared hymenoptera photos (random crops, resizes and flips, saved as
small JPEGs, 20 classes, 20% val) into --work, and reused by later runs. For each size, one
fresh process (so its peak RSS is its own) does what a run with a finetune stage does before
its first head epoch, from an empty cache: scan (and, as the baseline, a scan probing on one
thread; both after a warm-up scan, so both read from the page cache), cache the finetune-boundary activations
(MobileNetV2, 3 blocks, 7x7x160 float16 per view, `augment: none`), derive the head
features, then trains the head for --epochs cached epochs. Columns: scan s; fill images/s;
cached head epoch s (train + val) in the packed layout and, side by side, in the previous
one-file-per-entry layout (same features, read as before: np.load per sample); the read
cost of one epoch of boundary activations (what a finetune epoch streams) and of opening
them (hashing every file, the index, loading into RAM when they fit); the whole run;
peak RSS. Then `mobiletune train` (head only) on the 1k folder under torchrun with 1 and 2
processes on CPU, each from an empty cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or shared/ inside it (a copy on a machine without ../)
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()),
              ROOT.parent / "shared")
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
DATA = SHARED / "datasets" / "hymenoptera"
CLASSES = 20


def _sources() -> list:
    """The photos to cut from: hymenoptera, else smooth random colour fields (timing only)."""
    import numpy as np
    from PIL import Image

    if DATA.is_dir():
        out = []
        for p in sorted(DATA.rglob("*.jpg")):
            with Image.open(p) as im:
                im.draft("RGB", (320, 320))
                out.append(im.convert("RGB"))
        return out
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (64, 8, 8, 3), dtype=np.uint8)
    return [Image.fromarray(a).resize((320, 320), Image.BICUBIC) for a in small]


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """n JPEGs (96-192 px crops of the hymenoptera photos) in 20 class folders."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = _sources()
    rng = random.Random(seed)
    for i in range(n):
        src = sources[rng.randrange(len(sources))]
        w, h = src.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        x, y = rng.randint(0, w - side), rng.randint(0, h - side)
        out = rng.randint(96, 192)
        img = src.crop((x, y, x + side, y + side)).resize((out, out), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / f"c{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:06d}.jpg", quality=85)
    done.write_text(str(n))
    return root


def _epoch_seconds(model, spec, feed, device, epochs: int) -> list[float]:
    """Wall seconds of each cached epoch (train steps + val), nothing written."""
    from mobiletune.training.stage import (
        Callbacks,
        StageState,
        fit_stage,
        stage_threads,
    )

    marks: list[float] = []

    class Clock(Callbacks):
        def on_epoch_start(self, *a) -> None:
            marks.append(time.perf_counter())

        def on_epoch_end(self, *a) -> None:
            marks[-1] = time.perf_counter() - marks[-1]

    with stage_threads(spec, feed, device):  # as train.py runs a stage
        fit_stage(model, spec, feed, seed=0, device=device, state=StageState(),
                  save=lambda s, b: None, callbacks=Clock())
    return marks


def _old_layout_epoch(feats, labels, tmp: Path, batch: int) -> float:
    """The previous layout: one .npy file per entry, np.load(mmap) per sample per epoch."""
    import numpy as np

    paths = []
    for i in range(len(feats)):
        p = tmp / f"{i}.npy"
        np.save(p, feats[i].astype(np.float16))
        paths.append(p)
    start = time.perf_counter()
    order = np.random.default_rng(0).permutation(len(paths))
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        np.stack([np.load(paths[i], mmap_mode="r")[0] for i in idx])
    return time.perf_counter() - start


def _config(root: Path, image_size: int, device: str, weights: str):
    """The run's config, built from the schema (no YAML needed)."""
    from mobiletune.config.schema import Config, DataConfig, FinetuneConfig, ModelConfig

    return Config(device=device, model=ModelConfig(arch="mobilenet_v2", weights=weights),
                  data=DataConfig(root=str(root), image_size=image_size, augment="none",
                                  batch_size=32), finetune=FinetuneConfig(unfreeze=3))


def one(root: Path, image_size: int, epochs: int, device_name: str) -> dict:
    """Everything for one folder, in this (fresh) process; returns the row."""
    import numpy as np
    import torch

    from mobiletune.data.scan import scan
    from mobiletune.frozen import feeds
    from mobiletune.model.backbone import build_model, preprocess_spec
    from mobiletune.training.stage import Callbacks, StageSpec

    torch.set_flush_denormal(True)
    device = torch.device(device_name)
    import functools

    from mobiletune.data import walk as walk_mod

    scan(root, 0.2, 0)  # a warm-up: both timed scans then read the files from the page cache
    probe_all = walk_mod._probe_all
    walk_mod._probe_all = functools.partial(probe_all, threads=1)  # the sequential baseline
    t0 = time.perf_counter()
    scan(root, 0.2, 0)
    t_scan1 = time.perf_counter() - t0
    walk_mod._probe_all = probe_all
    t0 = time.perf_counter()
    data = scan(root, 0.2, 0)
    t_scan = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MOBILETUNE_CACHE"] = str(Path(tmp) / "cache")
        weights = str(WEIGHTS) if WEIGHTS.is_file() else "none"
        cfg = _config(root, image_size, device_name, weights)
        model = build_model("mobilenet_v2", weights, len(data.classes))
        pre = preprocess_spec("mobilenet_v2", weights, image_size)
        t1 = time.perf_counter()
        feed = feeds.make_feed(feeds.FeedSpec.of(cfg), data, pre, model, 0, device, Callbacks())
        t_fill = time.perf_counter() - t1  # fill + derive the head features
        spec = StageSpec("head", 0, epochs, 1e-3, 1e-4, 0.0, 0)
        head = _epoch_seconds(model, spec, feed, device, epochs)
        whole = time.perf_counter() - t0
        # the boundary activations as a finetune epoch reads them (no arithmetic)
        t2 = time.perf_counter()
        boundary = feeds._cached_feed(feeds.FeedSpec.of(cfg), data, pre, model, 3, device,
                                      Callbacks())
        t_prep = time.perf_counter() - t2
        t2 = time.perf_counter()
        for _ in boundary.train_batches(1):
            pass
        t_bound = time.perf_counter() - t2
        verify = _verify_cost(cfg, data, pre, model, device, Path(tmp) / "cache")
        verify["warm_run_s"] = verify["warm_open_s"] + sum(head)
        old_dir = Path(tmp) / "old"
        old_dir.mkdir()
        t_old = _old_layout_epoch(np.asarray(feed.train), feed.train_labels, old_dir, 32)
    n = len(data.samples)
    return {"images": n, "scan_s": t_scan, "scan1_s": t_scan1, "fill_ips": n / t_fill, "head_epoch_s": min(head),
            "old_read_s": t_old, "boundary_read_s": t_bound, "boundary_prep_s": t_prep, "whole_s": whole,
            "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **verify}


def _verify_cost(cfg, data, pre, model, device, cache: Path) -> dict:
    """What proving the cache's bytes costs a warm run: opening the cached head features as
    a new process does (every pack checked once: size and CRC-32), and the same index read
    with the checks switched off, side by side."""
    from mobiletune.frozen import feeds
    from mobiletune.frozen.store import PackStore
    from mobiletune.training.stage import Callbacks

    folders = sorted(cache.glob("features/*"))
    t0 = time.perf_counter()
    feeds.make_feed(feeds.FeedSpec.of(cfg), data, pre, model, 0, device, Callbacks())
    warm_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in folders:
        PackStore(d).index()
    checked = time.perf_counter() - t0
    real = PackStore._damage
    PackStore._damage = staticmethod(lambda *a: None)
    try:
        t0 = time.perf_counter()
        for d in folders:
            PackStore(d).index()
        plain = time.perf_counter() - t0
    finally:
        PackStore._damage = real
    return {"warm_open_s": warm_open, "verify_s": max(checked - plain, 0.0),
            "pack_mb": sum(f.stat().st_size for d in folders for f in d.glob("packs/*.npy")) / 2**20}


def torchrun_row(root: Path, procs: int, image_size: int, work: Path) -> dict:
    """Wall seconds of `mobiletune train` (head only, 3 epochs) under torchrun on CPU."""
    run = work / f"torchrun{procs}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOBILETUNE_CACHE": str(run / "cache"),
           "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}",
           "--master-addr=127.0.0.1", f"--master-port={29500 + procs * 7}", "-m", "mobiletune",
           "train", "--data", str(root), "--arch", "mobilenet_v2", "--weights", str(WEIGHTS),
           "--image-size", str(image_size), "--epochs", "3", "--device", "cpu",
           "--out", str(run / "runs"), "--set", "data.augment=none", "-q"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, timeout=3600, capture_output=True)
    wall = time.perf_counter() - start
    rows = (run / "runs" / "run" / "metrics.csv").read_text().splitlines()[1:]
    return {"procs": procs, "wall_s": wall, "epoch_s": min(float(r.split(",")[-1]) for r in rows),
            "val_acc": float(rows[-1].split(",")[5])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--big", action="store_true", help="add the 100k folder")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mobiletune-scale")
    ap.add_argument("--skip-torchrun", action="store_true")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one row, as JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.image_size, args.epochs, args.device)))
        return
    if not (WEIGHTS.is_file() and DATA.is_dir()):
        print(f"note: {WEIGHTS} or {DATA} not found: random-init weights and synthetic images "
              "(timings only; random weights are slow on CPU)")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # a bare GPU box: the rows are printed as JSON above the tables
        from _plain import Console, Table  # type: ignore  # (benchmarks/ is sys.path[0])

    con = Console(width=130)
    sizes = args.sizes + ([100_000] if args.big else [])
    rows = []
    for n in sizes:
        folder = make_folder(args.work / f"n{n}", n)
        out = subprocess.run([sys.executable, __file__, "--one", str(folder), "--image-size",
                              str(args.image_size), "--epochs", str(args.epochs),
                              "--device", args.device], check=True, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        con.print(rows[-1])
    t = Table(title=f"scale, mobilenet_v2 {args.image_size}px, augment none, {args.device}, "
                    f"{os.cpu_count()} cores")
    for col in ("images", "scan s", "1 thread", "fill img/s", "head epoch s", "per-file layout s", "ratio",
                "boundary open s", "boundary epoch s", "whole s", "epoch/whole", "peak RSS GB"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['images']:,}", f"{r['scan_s']:.1f}", f"{r['scan1_s']:.1f}",
                  f"{r['fill_ips']:.0f}",
                  f"{r['head_epoch_s']:.3f}", f"{r['old_read_s']:.2f}",
                  f"{r['old_read_s'] / r['head_epoch_s']:.1f}x", f"{r['boundary_prep_s']:.2f}",
                  f"{r['boundary_read_s']:.2f}",
                  f"{r['whole_s']:.0f}", f"1/{r['whole_s'] / r['head_epoch_s']:.0f}",
                  f"{r['rss_gb']:.2f}")
    con.print(t)
    tv = Table(title="proving the cache's bytes: every pack's size and CRC-32, checked once per "
                     "process, against a warm head run (warm open + the head epochs above)")
    for col in ("images", "packs MB", "verify s", "warm run s", "verify / warm run"):
        tv.add_column(col, justify="right")
    for r in rows:
        tv.add_row(f"{r['images']:,}", f"{r['pack_mb']:.0f}", f"{r['verify_s']:.3f}",
                   f"{r['warm_run_s']:.2f}", f"{100 * r['verify_s'] / r['warm_run_s']:.1f}%")
    con.print(tv)
    if not args.skip_torchrun and args.device == "cpu":
        folder = make_folder(args.work / f"n{sizes[0]}", sizes[0])
        tr = [torchrun_row(folder, p, args.image_size, args.work) for p in (1, 2)]
        t2 = Table(title=f"torchrun on CPU, {sizes[0]:,} images, head 3 epochs, cold cache")
        for col in ("processes", "wall s", "head epoch s", "val acc", "speed-up"):
            t2.add_column(col, justify="right")
        for r in tr:
            t2.add_row(str(r["procs"]), f"{r['wall_s']:.1f}", f"{r['epoch_s']:.2f}",
                       f"{r['val_acc']:.3f}", f"{tr[0]['wall_s'] / r['wall_s']:.2f}x")
        con.print(t2)


if __name__ == "__main__":
    main()
