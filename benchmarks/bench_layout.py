"""The finetune stage's tail on the CPU, its input contiguous (NCHW) against channels_last,
side by side.

    .venv/bin/python benchmarks/bench_layout.py [--unfreeze 1 3 5] [--reps 15] [--batch 32]
        [--val 147]

`stage.step_batch` hands the tail its input in channels_last; this measures what that buys
against the NCHW input it had before, with everything else the same: MobileNetV2's last N
blocks and head (offline ImageNet weights, BatchNorm frozen) on real boundary activations
(the frozen part run on noise images). Per N, median milliseconds of
  - a float32 val pass over --val maps in batches of --batch (what every epoch,
    calibration and the live score run), and
  - a training step (forward, backward, AdamW) in float32 and under bf16 autocast,
the two layouts interleaved so that machine noise hits both. The weights keep their layout in
both: only the input differs. Also the largest logit difference between the layouts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_tail import _setup  # noqa: E402  (benchmarks/ is sys.path[0])
from rich.console import Console
from rich.table import Table


def _input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)


def _val(tail, x: torch.Tensor, batch: int, channels_last: bool) -> float:
    start = time.perf_counter()
    tail.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            tail(_input(x[i:i + batch], channels_last))
    return time.perf_counter() - start


def _step(model, tail, opt, x, y, channels_last: bool, bf16: bool) -> float:
    start = time.perf_counter()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(tail(_input(x, channels_last)).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def _median_ms(fn, reps: int) -> dict[bool, float]:
    """fn(channels_last) timed for both layouts, interleaved, after 3 warm-up rounds."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(reps + 3):
        for cl in (False, True):
            took = fn(cl)
            if i >= 3:
                times[cl].append(took)
    return {cl: 1000 * statistics.median(v) for cl, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unfreeze", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--val", type=int, default=147, help="maps in the val pass")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    t = Table(title=f"finetune tail on the CPU, NCHW vs channels_last input, batch {args.batch}, "
                    f"{torch.get_num_threads()} threads (ms, median)")
    for col in ("unfreeze", "what", "NCHW", "channels_last", "ratio"):
        t.add_column(col, justify="right")
    for n in args.unfreeze:
        model, _, tail, opt, x, y = _setup(n, args.batch)
        val = x.repeat((args.val + len(x) - 1) // len(x), 1, 1, 1)[:args.val]
        tail.eval()
        with torch.no_grad():
            drift = float((tail(_input(val, True)) - tail(_input(val, False))).abs().max())
        rows = {f"val pass, {args.val} maps, float32": lambda cl: _val(tail, val, args.batch, cl),
                "training step, float32": lambda cl: _step(model, tail, opt, x, y, cl, False),
                "training step, bf16": lambda cl: _step(model, tail, opt, x, y, cl, True)}
        for what, fn in rows.items():
            ms = _median_ms(fn, args.reps)
            t.add_row(str(n), what, f"{ms[False]:.0f}", f"{ms[True]:.0f}",
                      f"{ms[True] / ms[False]:.2f}x")
        t.add_row(str(n), "largest val logit difference", "", f"{drift:.1e}", "")
    Console().print(t)


if __name__ == "__main__":
    main()
