"""mobiletune vs. a hand-written PyTorch loop, PyTorch Lightning and fastai, side by side in one process.

    .venv/bin/python benchmarks/bench_train.py [--head-epochs 10] [--ft-head 5] [--ft-epochs 3]
                                               [--views K] [--only head|finetune] [--skip-throughput]

Needs the bench extra for the Lightning and fastai rows (`pip install -e '.[bench]'`; without
it those rows are left out); the peers live in benchmarks/peers.py. On ../shared hymenoptera
with the offline MobileNetV2 weights (fastai: the same network with BatchNorm statistics), each contender
runs (a) head-only training and (b) head + finetune (last 3 blocks) with the same data,
epochs and weights, and the table gives seconds, final val accuracy, the time at which val
accuracy first reached 0.94, and the speed-up of mobiletune. mobiletune starts from an empty
feature cache every time, so its numbers include decoding, the ONNX export and caching.
Then the cache fill rate against the engine alone (same batches, same process), and
frozen-feature throughput (images/s) of PyTorch eager, channels_last and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import (  # benchmarks/ is sys.path[0]
    DATA,
    WEIGHTS,
    Result,
    fastai_run,
    hand_written,
    lightning_run,
)

TARGET = 0.94  # val accuracy for the "time to" column


def ours(head_epochs: int, ft_epochs: int, views: int | None) -> Result:
    """mobiletune's pipeline from an empty cache."""
    from mobiletune.config.load import load_config
    from mobiletune.training import run as pipeline
    from mobiletune.training.stage import Callbacks

    res = Result()

    class Curve(Callbacks):
        def on_epoch_end(self, result, improved: bool) -> None:
            res.epoch(result.val_acc)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MOBILETUNE_CACHE"] = str(Path(tmp) / "cache")
        sets = [("name", "bench"), ("output", str(Path(tmp) / "runs")),
                ("model.arch", "mobilenet_v2"), ("model.weights", str(WEIGHTS)),
                ("data.root", str(DATA)), ("device", "cpu"),
                ("train.epochs", head_epochs), ("finetune.unfreeze", 3 if ft_epochs else 0),
                ("finetune.epochs", max(ft_epochs, 1))]
        sets += [("data.views", views)] if views else []  # default: the config's
        pipeline.train(load_config(None, sets), Curve())
        return res.done()


def throughput(arch: str, batch: int = 32, reps: int = 3) -> dict[str, float]:
    """Frozen-feature images/s: eager, channels_last, ONNX Runtime (mobiletune's engine)."""
    from mobiletune.frozen.engine import (
        OrtEngine,
        TorchEngine,
        export_onnx,
        frozen_engine,
    )
    from mobiletune.model.backbone import build_model, split

    weights = str(WEIGHTS) if arch == "mobilenet_v2" else "none"
    prefix, _ = split(build_model(arch, weights, 2), 0)
    prefix.eval()
    x = torch.randn(batch, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"eager": lambda t: prefix(t),
                   "channels_last": TorchEngine(prefix, torch.device("cpu")),
                   "onnxruntime": OrtEngine(export_onnx(prefix, Path(tmp) / "p.onnx", 224)),
                   "mobiletune": frozen_engine(prefix, torch.device("cpu"), Path(tmp) / "c", 224)}
        out = {}
        for name, fn in engines.items():
            with torch.inference_mode():
                fn(x[:4])
                start = time.perf_counter()
                for _ in range(reps):
                    fn(x)
            out[name] = reps * batch / (time.perf_counter() - start)
    return out


def _engine_alone(engine, x: torch.Tensor, n: int, streams: int) -> float:
    """Views/s of `engine` on in-memory uint8 batches `x`, called from `streams` threads."""
    from concurrent.futures import ThreadPoolExecutor

    engine(x)
    calls = -(-n // len(x))
    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: engine(x), range(calls)))
    return calls * len(x) / (time.perf_counter() - start)


def fill_rate(views: int, batch: int) -> tuple[float, float]:
    """Views/s of the engine alone (uint8 batches already in memory; the faster of its two
    forms: one call at a time on every core, or one call per core as the fill uses it) and
    of a cold cache fill (decode, views, engine, write) with the same engine, back to back."""
    import numpy as np

    from mobiletune.data.scan import scan
    from mobiletune.frozen.cache import FeatureCache, jobs_for
    from mobiletune.frozen.engine import frozen_engine
    from mobiletune.frozen.fill import fill, workers
    from mobiletune.model.backbone import HeadPrefix, build_model, preprocess_spec

    data = scan(DATA)
    pre = preprocess_spec("mobilenet_v2", str(WEIGHTS), 224)
    prefix = HeadPrefix(build_model("mobilenet_v2", str(WEIGHTS), 2)).eval()
    jobs = jobs_for(data.of("train"), data.of("val"))
    n = len(data.of("train")) * views + len(data.of("val"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = torch.device("cpu")
        whole = frozen_engine(prefix, cpu, Path(tmp), 224, pixels=pre)
        each = frozen_engine(prefix, cpu, Path(tmp), 224, pixels=pre, concurrent=True)
        big = torch.from_numpy(rng.integers(0, 256, (32, 224, 224, 3), dtype=np.uint8))
        alone = max(_engine_alone(whole, big, n, 1), _engine_alone(each, big[:batch], n, workers()))
        store = FeatureCache(Path(tmp), "bench", pre, "standard", views)
        store.missing(jobs)  # content keys hashed beforehand: the fill alone is timed
        start = time.perf_counter()
        fill(store, jobs, lambda: each, batch=batch)
        return alone, n / (time.perf_counter() - start)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head-epochs", type=int, default=10, help="the head-only job")
    ap.add_argument("--ft-head", type=int, default=5, help="head epochs of the finetune job")
    ap.add_argument("--ft-epochs", type=int, default=3, help="finetune epochs (3 blocks)")
    ap.add_argument("--views", type=int, default=None, help="default: data.views' default")
    ap.add_argument("--only", choices=("head", "finetune"), help="run one of the two jobs")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not (WEIGHTS.is_file() and DATA.is_dir()):
        sys.exit(f"needs {WEIGHTS} and {DATA}")
    torch.set_flush_denormal(True)
    con = Console(width=120)
    t = Table(title=f"training, hymenoptera, mobilenet_v2, {torch.get_num_threads()} threads, "
                    "mobiletune from an empty cache")
    for col in ("job", "contender", "seconds", "val acc", f"to {TARGET} s", "mobiletune speed-up"):
        t.add_column(col, justify="right")
    jobs = [(f"head {args.head_epochs}", args.head_epochs, 0),
            (f"head {args.ft_head} + ft {args.ft_epochs} (3 blocks)", args.ft_head, args.ft_epochs)]
    jobs = [j for j in jobs if args.only != ("finetune" if j[2] == 0 else "head")]
    contenders = {"mobiletune": lambda he, fe: ours(he, fe, args.views),
                  "hand-written loop": hand_written,
                  "Lightning + BackboneFinetuning": lightning_run,
                  "fastai vision_learner + fine_tune": fastai_run}
    for label, he, fe in jobs:
        me = None
        for name, fn in contenders.items():
            r = fn(he, fe)
            if r is None:  # its library is not installed
                continue
            me = me or r
            ratio = "" if r is me else f"{r.seconds / me.seconds:.1f}x"
            t.add_row(label, name, f"{r.seconds:.1f}", f"{r.acc:.3f}", _fmt(r.time_to(TARGET)),
                      ratio)
            con.print(f"{label} | {name}: {r.seconds:.1f}s acc {r.acc:.3f} "
                      f"to {TARGET}: {_fmt(r.time_to(TARGET))}s {ratio}")
        t.add_section()
    con.print(t)
    from mobiletune.config.schema import DataConfig
    from mobiletune.frozen.fill import BATCH

    views = args.views or DataConfig().views
    alone, fill = fill_rate(views, BATCH)
    con.print(f"cache fill on hymenoptera (decode + {views} views + engine + write): {fill:.0f} "
              f"views/s; the engine alone on the same batches: {alone:.0f}/s ({fill / alone:.0%})")
    if args.skip_throughput:
        return
    t2 = Table(title="frozen-feature throughput, images/s (batch 32, 224 px)")
    for col in ("arch", "eager", "channels_last", "onnxruntime", "mobiletune", "mobiletune/ORT"):
        t2.add_column(col, justify="right")
    for arch in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"):
        r = throughput(arch)
        t2.add_row(arch, *(f"{r[k]:.0f}" for k in ("eager", "channels_last", "onnxruntime",
                                                  "mobiletune")),
                   f"{r['mobiletune'] / r['onnxruntime']:.2f}x")
    t2.caption = "V3 archs use random weights (no offline file), denormals flushed"
    con.print(t2)


if __name__ == "__main__":
    main()
