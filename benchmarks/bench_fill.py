"""Cache fill rate by worker count: decoding on threads (frozen/fill.py, what a CPU run uses)
against decoding in processes (frozen/decoders.py, what a run beside a GPU uses).

    .venv/bin/python benchmarks/bench_fill.py [--images 1000] [--workers 1 2] [--device cpu]

Images: cut from ../shared's photos at their own resolution (random crops of 80-100% of each
side, JPEG quality 90), so every file is distinct and the sizes are real phone-photo sizes
(~350-500 px). Every image is a training job with the default 2 views. Per worker count,
images/s of a cold fill into an empty cache (content keys hashed beforehand) with
- a free engine (returns zeros): decoding, views and the write alone, i.e. the most the fill
  can feed an engine;
- the real engine: ONNX Runtime on CPU (one intra-op thread per worker for threads, all
  cores per call for processes), float16 PyTorch on CUDA.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or ./shared inside it (the device machine's copy)
SHARED = next((d for d in (ROOT.parent / "shared", ROOT / "shared") if d.is_dir()),
              ROOT.parent / "shared")
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
VIEWS = 2


def make_images(out: Path, n: int, seed: int = 0) -> list[str]:
    """`n` distinct JPEGs cut from ../shared's photos at their own resolution (in parallel:
    PIL decodes and encodes without the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    photos = sorted(p for p in (SHARED / "datasets").rglob("*.jp*g"))
    out.mkdir(parents=True, exist_ok=True)

    def cut(i: int) -> str:
        rng = random.Random(f"{seed}:{i}")
        with Image.open(photos[i % len(photos)]) as img:
            img = img.convert("RGB")
            w, h = (round(s * rng.uniform(0.8, 1.0)) for s in img.size)
            x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
            path = out / f"{i:06d}.jpg"
            img.crop((x, y, x + w, y + h)).save(path, quality=90)
        return str(path)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(cut, range(n)))


def _timed_fill(paths: list[str], root: Path, engine, workers: int, processes: bool) -> float:
    """Images/s of one cold fill of `paths` into a fresh cache under `root`."""
    from mobiletune.frozen.cache import FeatureCache
    from mobiletune.frozen.decoders import fill_in_processes
    from mobiletune.frozen.fill import fill
    from mobiletune.model.backbone import preprocess_spec

    pre = preprocess_spec("mobilenet_v2", str(WEIGHTS), 224)
    store = FeatureCache(root, f"bench-{time.perf_counter_ns()}", pre, "standard", VIEWS)
    jobs = [(p, "train") for p in paths]
    store.missing(jobs)  # content keys hashed beforehand: the fill alone is timed
    start = time.perf_counter()
    if processes:
        fill_in_processes(store, jobs, lambda: engine, processes=workers)
    else:
        fill(store, jobs, lambda: engine)
    return len(jobs) / (time.perf_counter() - start)


def engines(device: torch.device, cache: Path) -> dict[str, object]:
    """name -> engine: the free one and the real one in the form each fill uses."""
    from mobiletune.frozen.engine import frozen_engine
    from mobiletune.model.backbone import HeadPrefix, build_model, preprocess_spec

    pre = preprocess_spec("mobilenet_v2", str(WEIGHTS), 224)
    prefix = HeadPrefix(build_model("mobilenet_v2", str(WEIGHTS), 2)).eval()

    def free(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 1280)

    return {"free": free,
            "threads": frozen_engine(prefix, device, cache, 224, pixels=pre, concurrent=True),
            "processes": frozen_engine(prefix, device, cache, 224, pixels=pre)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not WEIGHTS.is_file():
        sys.exit(f"needs {WEIGHTS}")
    from rich.console import Console
    from rich.table import Table

    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    con = Console(width=140)
    t = Table(title=f"cache fill, images/s ({args.images} photos x {VIEWS} views, "
                    f"mobilenet_v2 224 px, {os.cpu_count()} cores, {device})")
    for col in ("workers", "threads, free engine", "processes, free engine",
                "threads, engine", "processes, engine", "processes/threads (engine)"):
        t.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", args.images)
        for w in args.workers:
            torch.set_num_threads(w)  # the thread fill runs one worker per torch thread
            eng = engines(device, Path(tmp) / "cache")
            r = [_timed_fill(paths, Path(tmp) / "cache", eng["free"], w, False),
                 _timed_fill(paths, Path(tmp) / "cache", eng["free"], w, True),
                 _timed_fill(paths, Path(tmp) / "cache", eng["threads"], w, False),
                 _timed_fill(paths, Path(tmp) / "cache", eng["processes"], w, True)]
            t.add_row(str(w), *(f"{x:.0f}" for x in r), f"{r[3] / r[2]:.2f}x")
            con.print(f"{w} workers: " + " ".join(f"{x:.0f}" for x in r))
    con.print(t)


if __name__ == "__main__":
    main()
