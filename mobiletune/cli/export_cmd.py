"""`mobiletune export`: ONNX, TorchScript, TFLite or Core ML (optionally int8), checked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

import typer

from mobiletune.cli.app import app, err, guarded, out
from mobiletune.config.schema import EXPORT_FORMATS

if TYPE_CHECKING:  # torch stays out of `--help`
    from mobiletune.deploy.parity import ExportReport


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _report_table(r: ExportReport):
    from rich.table import Table

    t = Table(title=f"parity on {r.images} validation images", title_justify="left",
              show_edge=False)
    for col in ("model", "size", "batch-1 latency", "speed-up", "val accuracy"):
        t.add_column(col, justify="left" if col == "model" else "right")
    base = r.latency_ms["pytorch"]
    for name, ms in r.latency_ms.items():
        t.add_row(name, _mb(r.size_bytes[name]), f"{ms:.1f} ms", f"{base / ms:.1f}x",
                  f"{r.accuracy[name]:.4f}")
    return t


def _summary(r: ExportReport, max_drop: float) -> str:
    if not r.images:  # Core ML: checked structurally, not run
        return "\n".join([f"wrote {r.path} ({_mb(r.size_bytes[r.format])})", *r.notes])
    lines = [f"wrote {r.path}",
             f"top-1 agreement with PyTorch: {r.agreement:.2%} of {r.images} images; "
             f"largest probability difference {r.max_prob_diff:.2e}"]
    if r.int8_path:
        speed = r.latency_ms[r.format] / r.latency_ms["int8"]
        mixed = f" (the last {r.int8_float_blocks} block(s) and the head kept float: " \
            "full int8 lost too much on the calibration images)" if r.int8_float_blocks else ""
        lines += [f"wrote {r.int8_path}{mixed}",
                  f"int8 accuracy {r.accuracy['int8']:.4f} vs float {r.accuracy[r.format]:.4f} "
                  f"(drop {r.int8_drop:+.4f}, allowed {max_drop}); {speed:.1f}x the float "
                  f"{r.format} speed at batch 1"]
    return "\n".join(lines)


@app.command(short_help="Export a checkpoint (ONNX, TorchScript, TFLite, Core ML), checked against PyTorch.", epilog="""Examples:

  mobiletune export --format onnx                      (runs/latest -> runs/<run>/export/model.onnx)

  mobiletune export --format onnx --int8 --checkpoint runs/cats

  mobiletune export --format torchscript --out model.pt""")
@guarded
def export(
    format: Literal[EXPORT_FORMATS] = typer.Option(..., "--format", case_sensitive=False, help="file format (tflite: extra mobiletune[tflite]; coreml: extra mobiletune[coreml])"),  # type: ignore[valid-type]
    int8: bool = typer.Option(False, "--int8", help="also write a static int8 model (<name>.int8.onnx or .int8.tflite beside the float one), calibrated on the run's training images"),
    uint8_input: bool = typer.Option(False, "--uint8-input", help="onnx: take the uint8 NHWC center crop and give probabilities, like tflite (model.uint8.onnx)"),
    out_path: Optional[str] = typer.Option(None, "--out", show_default="<run>/export/, then export-2/ ...", help="output file, or a folder for model.onnx / model.pt / model.tflite / model.mlpackage in it"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "--from", show_default="runs/latest/best.pt", help="run directory or .pt file"),
    data: Optional[str] = typer.Option(None, "--data", show_default="the run's splits.csv", help="data folder for the parity check and int8 calibration"),
    max_drop: float = typer.Option(0.03, "--max-drop", min=0.0, max=1.0, help="refuse the int8 model when its val accuracy is more than this below the float model's"),
    force: bool = typer.Option(False, "--force", help="replace an existing file at --out (or in <run>/export/) instead of refusing (or writing export-2/)"),
) -> None:
    """Export a checkpoint for deployment, with class names and preprocessing in the file,
    load it back in its runtime and check it against the PyTorch model on the run's
    validation images (Core ML: checked structurally, it runs only on Apple platforms)."""
    from mobiletune.deploy.export import export_checkpoint
    from mobiletune.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    report = export_checkpoint(
        ckpt, format.lower(), out_path, int8=int8, data=data, max_drop=max_drop,
        uint8_input=uint8_input, force=force,
        progress=lambda msg: err.print(f"[dim]{msg}...[/]", highlight=False))
    if report.images:
        out.print(_report_table(report))
    out.print(_summary(report, max_drop), highlight=False)
