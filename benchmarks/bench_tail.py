"""A finetune step on the CPU, float32 against bfloat16 autocast, side by side.

    .venv/bin/python benchmarks/bench_tail.py [--unfreeze 1 3 5 8] [--steps 20] [--batch 32]

The step `finetune` runs on cached boundary activations: forward and backward of MobileNetV2's
last N blocks and head (offline ImageNet weights, BatchNorm frozen) plus an AdamW update,
through `stage.step_batch`, with `cpu_bf16` forced off and on. Per N: milliseconds per step
(median of --steps after 3 warm-up steps, the two modes interleaved so that machine noise
hits both), the ratio, and how far bf16's logits and first-step gradient stray from float32's
on the same weights and batch. Also whether this CPU has native bf16 (without it, autocast
emulates bf16 and is slower: mobiletune leaves it off there).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from rich.console import Console
from rich.table import Table

from mobiletune.model.backbone import boundary, build_model, configure_stage, split
from mobiletune.training import stage

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / \
    "mobilenet_v2_imagenet_offline.pth"
CPU = torch.device("cpu")


def _setup(unfreeze: int, batch: int):
    """The model at finetune stage `unfreeze`, its optimizer, and one batch of inputs."""
    torch.manual_seed(0)  # the same new head in every setup
    model = build_model("mobilenet_v2", str(WEIGHTS), 8)
    params = configure_stage(model, unfreeze)
    prefix, tail = split(model, unfreeze)
    with torch.no_grad():  # real boundary activations: the frozen part on noise images
        x = prefix(torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    return model, prefix, tail, torch.optim.AdamW(params, lr=1e-5), x, torch.arange(batch) % 8


def _step(bf16: bool, model, prefix, tail, opt, x, y) -> float:
    stage.cpu_bf16 = lambda: bf16
    start = time.perf_counter()
    model.train()
    _, loss, _ = stage.step_batch(tail, prefix, SimpleNamespace(live=False), x, y, CPU,
                                  torch.nn.CrossEntropyLoss())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def _fidelity(unfreeze: int, batch: int) -> tuple[float, float]:
    """(max |logit difference| / max |logit|, cosine of the gradients), bf16 vs float32."""
    out = {}
    for bf16 in (False, True):
        model, prefix, tail, _, x, y = _setup(unfreeze, batch)
        model.eval()  # no dropout: both modes see the same network
        stage.cpu_bf16 = lambda b=bf16: b
        logits, loss, _ = stage.step_batch(tail, prefix, SimpleNamespace(live=False), x, y, CPU,
                                           torch.nn.CrossEntropyLoss())
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in tail.parameters() if p.grad is not None])
        out[bf16] = (logits.detach(), grad)
    (l32, g32), (l16, g16) = out[False], out[True]
    return (float((l16 - l32).abs().max() / l32.abs().max()),
            float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unfreeze", type=int, nargs="+", default=[1, 3, 5, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    native = stage.cpu_bf16()
    t = Table(title=f"finetune step on the CPU, batch {args.batch}, {torch.get_num_threads()} "
                    f"threads; native bf16 here: {native}")
    for col in ("unfreeze", "from", "input", "fp32 ms", "bf16 ms", "bf16/fp32", "logit drift",
                "grad cosine"):
        t.add_column(col, justify="right")
    for n in args.unfreeze:
        setups = {b: _setup(n, args.batch) for b in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.steps + 3):
            for bf16 in (False, True):
                took = _step(bf16, *setups[bf16])
                if i >= 3:
                    times[bf16].append(took)
        ms = {b: 1000 * statistics.median(v) for b, v in times.items()}
        drift, cos = _fidelity(n, args.batch)
        model = setups[False][0]
        shape = "x".join(map(str, setups[False][4].shape[1:]))
        t.add_row(str(n), f"block {boundary(model, n)}", shape, f"{ms[False]:.0f}",
                  f"{ms[True]:.0f}", f"{ms[True] / ms[False]:.2f}x", f"{drift:.1e}", f"{cos:.4f}")
    Console().print(t)


if __name__ == "__main__":
    main()
