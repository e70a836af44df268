"""mobiletune vs. a plain hand-written PyTorch loop, side by side in one process.

    .venv/bin/python benchmarks/bench_train.py [--head-epochs 5] [--ft-epochs 3] [--views K]

On ../shared hymenoptera with the offline MobileNetV2 weights, runs (a) head-only training
and (b) head + finetune (3 blocks unfrozen) both ways with the same epochs, and prints
seconds, val accuracy and the speed ratio; then frozen-feature throughput (images/s) of
PyTorch eager, PyTorch channels_last and ONNX Runtime for all three archs. mobiletune starts
from an empty feature cache each time, so its numbers include decoding, export and caching.
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
from torch import nn
from torchvision import datasets, models, transforms as T

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
DATA = SHARED / "datasets" / "hymenoptera"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def hand_written(head_epochs: int, ft_epochs: int, seed: int = 0) -> tuple[float, float]:
    """The baseline: the transfer-learning tutorial's loop, frozen BN, full forward per step."""
    torch.manual_seed(seed)
    tf_train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(MEAN, STD)])
    tf_val = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(DATA / "train", tf_train)
    val = datasets.ImageFolder(DATA / "val", tf_val)
    tl = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=1)
    vl = torch.utils.data.DataLoader(val, batch_size=32, num_workers=1)
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.classifier[-1] = nn.Linear(1280, len(train.classes))
    start, acc = time.perf_counter(), 0.0
    for stage, epochs, lr in (("head", head_epochs, 1e-3), ("ft", ft_epochs, 1e-5)):
        model.requires_grad_(False)
        trainable = [model.classifier] + ([model.features[-3:]] if stage == "ft" else [])
        for m in trainable:
            m.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        for _ in range(epochs):
            model.train()
            for m in model.modules():  # hold every BatchNorm in eval mode
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            for x, y in tl:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            acc = _accuracy(model, vl)
    return time.perf_counter() - start, acc


def _accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def ours(head_epochs: int, ft_epochs: int, views: int | None) -> tuple[float, float]:
    """mobiletune's pipeline from an empty cache; returns (seconds, final val accuracy)."""
    from mobiletune import train as pipeline
    from mobiletune.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MOBILETUNE_CACHE"] = str(Path(tmp) / "cache")
        sets = [("name", "bench"), ("output", str(Path(tmp) / "runs")),
                ("model.arch", "mobilenet_v2"), ("model.weights", str(WEIGHTS)),
                ("data.root", str(DATA)), ("device", "cpu"),
                ("train.epochs", head_epochs), ("finetune.unfreeze", 3 if ft_epochs else 0),
                ("finetune.epochs", max(ft_epochs, 1))]
        sets += [("data.views", views)] if views else []  # default: the config's
        cfg = load_config(None, sets)
        start = time.perf_counter()
        run = pipeline.train(cfg)
        seconds = time.perf_counter() - start
        last = (run / "metrics.csv").read_text().strip().splitlines()[-1].split(",")
        return seconds, float(last[5])


def throughput(arch: str, batch: int = 32, reps: int = 3) -> dict[str, float]:
    """Frozen-feature images/s: eager, channels_last, ONNX Runtime (mobiletune's engine)."""
    from mobiletune.frozen.engine import OrtEngine, TorchEngine, export_onnx, frozen_engine
    from mobiletune.model import build_model, split

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


def cache_fill_rate(views: int) -> float:
    """Images/s of a cold cache fill: decode, augmented views, frozen forward, write."""
    from mobiletune.frozen.cache import FeatureCache, jobs_for
    from mobiletune.data import scan
    from mobiletune.frozen.engine import frozen_engine
    from mobiletune.model import HeadPrefix, build_model, preprocess_spec

    data = scan(DATA)
    model = build_model("mobilenet_v2", str(WEIGHTS), 2)
    pre = preprocess_spec("mobilenet_v2", str(WEIGHTS), 224)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = HeadPrefix(model).eval()
        engine = frozen_engine(prefix, torch.device("cpu"), Path(tmp), 224)
        store = FeatureCache(Path(tmp), "bench", pre, "standard", views)
        jobs = jobs_for(data.of("train"), data.of("val"))
        start = time.perf_counter()
        store.fill(jobs, engine)
        n = len(data.of("train")) * views + len(data.of("val"))
        return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head-epochs", type=int, default=5)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--views", type=int, default=None, help="default: data.views' default")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not (WEIGHTS.is_file() and DATA.is_dir()):
        sys.exit(f"needs {WEIGHTS} and {DATA}")
    torch.set_flush_denormal(True)
    con = Console(width=110)
    t = Table(title=f"training, hymenoptera, mobilenet_v2, {torch.get_num_threads()} threads")
    for col in ("job", "hand-written s", "acc", "mobiletune s", "acc", "speed-up"):
        t.add_column(col, justify="right")
    jobs = [(f"head {args.head_epochs}", args.head_epochs, 0),
            (f"head {args.head_epochs} + ft {args.ft_epochs} (3 blocks)", args.head_epochs,
             args.ft_epochs)]
    for label, he, fe in jobs:
        hs, ha = hand_written(he, fe)
        ms, ma = ours(he, fe, args.views)
        t.add_row(label, f"{hs:.1f}", f"{ha:.3f}", f"{ms:.1f}", f"{ma:.3f}", f"{hs / ms:.1f}x")
        con.print(f"{label}: hand-written {hs:.1f}s acc {ha:.3f} | mobiletune {ms:.1f}s acc {ma:.3f}")
    con.print(t)
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
    from mobiletune.config import DataConfig

    views = args.views or DataConfig().views
    fill = cache_fill_rate(views)
    con.print(f"end to end cache fill on hymenoptera (decode + {views} views + engine): "
              f"{fill:.0f} images/s")


if __name__ == "__main__":
    main()
