"""`mobiletune profile`: parameters, multiply-adds, separable savings and latency per block."""

from __future__ import annotations

import json

import typer

from mobiletune.cli.app import app, err, guarded, out
from mobiletune.cli.common import ArchName


def _m(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _block_table(prof: dict):
    from rich import box
    from rich.table import Table

    t = Table(title=f"{prof['arch']}, {prof['image_size']} px, {prof['num_classes']} classes",
              title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    t.add_column("block", no_wrap=True)
    t.add_column("output", no_wrap=True)
    for col in ("params", "MACs", "exp", "dw", "pw", "SE", "sep"):
        t.add_column(col, justify="right", no_wrap=True)
    for b in prof["blocks"]:
        roles = b["macs_by_role"]
        ratio = " ".join(f"{s['ratio']:.3f}" for s in b["separable"]) or "-"
        t.add_row(b["name"].removeprefix("features."), "x".join(map(str, b["out_shape"])),
                  f"{b['params'] / 1e3:.1f}k", _m(b["macs"]),
                  *(_m(roles[r]) if r in roles else "-"
                    for r in ("expand", "depthwise", "pointwise", "se")), ratio)
    return t


def _summary(prof: dict) -> str:
    sep, pub = prof["separable_totals"], prof.get("published")
    lines = ["MACs: multiply-adds per image, in millions; exp: expansion, dw/pw: depthwise/"
             "pointwise, SE: squeeze-and-excitation; sep: separable cost / standard conv cost",
             f"total: {prof['params']:,} parameters, {prof['macs'] / 1e6:.1f}M multiply-adds"
             + (f" (published: {pub['params'] / 1e6:.2f}M / {pub['macs'] / 1e6:.0f}M)" if pub
                else "")]
    by_role = ", ".join(f"{r} {_m(v)}M" for r, v in prof["macs_by_role"].items() if v)
    lines.append(f"by role: {by_role}")
    if sep["pairs"]:
        lines.append(
            f"{sep['pairs']} depthwise-separable pairs cost {_m(sep['separable_macs'])}M MACs "
            f"where standard convolutions would cost {_m(sep['standard_macs'])}M: "
            f"ratio {sep['ratio']:.3f} ({1 / sep['ratio']:.1f}x fewer); per pair the ratio is "
            "1/n_c' + 1/f^2 (sep column)")
    return "\n".join(lines)


def _latency_lines(lat: dict) -> str:
    rows = []
    for engine, per in lat.items():
        rows.append(f"{engine:12s} " + "  ".join(
            f"batch {b}: {ms:8.1f} ms ({ms / b:.1f} ms/image)" for b, ms in per.items()))
    return "latency on this machine (median):\n" + "\n".join(rows)


@app.command(short_help="Per-block parameters, multiply-adds, separability savings and latency of an arch.", epilog="""Examples:

  mobiletune profile --arch mobilenet_v3_small

  mobiletune profile --arch mobilenet_v2 --image-size 160 --json --no-latency""")
@guarded
def profile(
    arch: ArchName = typer.Option(..., "--arch", help="backbone architecture"),
    image_size: int = typer.Option(224, "--image-size", min=32, max=1024, help="input side in pixels"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (params, macs, blocks, ...)"),
    no_latency: bool = typer.Option(False, "--no-latency", help="skip the PyTorch / ONNX Runtime timing"),
) -> None:
    """Per-block shapes, parameters and multiply-adds, what depthwise separability saves,
    and measured latency (1000-class ImageNet head, random weights)."""
    from mobiletune.model.backbone import build_model
    from mobiletune.model.profile import measure_latency, profile_arch

    prof = profile_arch(arch, image_size)
    if not as_json:
        out.print(_block_table(prof))
        out.print(_summary(prof), highlight=False)
    if not no_latency:
        err.print("[dim]timing PyTorch and ONNX Runtime at batch 1 and 32...[/]")
        lat = measure_latency(build_model(arch, "none", 1000), image_size)
        prof["latency_ms"] = {k: {str(b): ms for b, ms in v.items()} for k, v in lat.items()}
        if not as_json:
            out.print(_latency_lines(lat), highlight=False)
    if as_json:
        print(json.dumps(prof))
