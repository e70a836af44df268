"""`mobiletune evaluate`: metrics, confusion matrix, plots and an HTML report for a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mobiletune.cli.app import app, err, guarded, out


def _print_summary(m: dict[str, Any], files: dict[str, Path]) -> None:
    from rich.table import Table

    table = Table(title="per class", show_edge=False)
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, r in m["per_class"].items():
        table.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                      str(r["support"]))
    for avg in ("macro", "weighted"):
        table.add_row(f"[bold]{avg} avg[/]", *(f"{m[f'{avg}_{k}']:.3f}" for k in
                                               ("precision", "recall", "f1")), str(m["num_samples"]))
    out.print(table)
    tops = "  ".join(f"{k.replace('_', '-')} {v:.3f}" for k, v in m["top_k"].items())
    lo, hi = m["accuracy_ci95"]
    out.print(f"accuracy [bold]{m['accuracy']:.4f}[/] (95% CI {lo:.3f}-{hi:.3f})  macro F1 "
              f"[bold]{m['macro_f1']:.4f}[/]  {tops}  ECE {m['ece']:.4f} (uncalibrated "
              f"{m['ece_uncalibrated']:.4f})  images {m['num_samples']}", highlight=False)
    for p in m["most_confused"][:5]:
        out.print(f"  confused: {p['true']} -> {p['predicted']}: {p['count']}", highlight=False)
    out.print(f"wrote {', '.join(files)} to {next(iter(files.values())).parent}", highlight=False)


@app.command(short_help="Score a checkpoint on its val split or a folder: metrics, confusion matrix, report.", epilog="""Examples:

  mobiletune evaluate                                  (runs/latest on its val split)

  mobiletune evaluate --checkpoint runs/cats/export/model.int8.onnx

  mobiletune evaluate --checkpoint runs/cats --data photos/ --out eval-photos""")
@guarded
def evaluate(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "--from", show_default="runs/latest/best.pt", help="run directory, .pt file or an export (.onnx, TorchScript)"),
    data: Optional[str] = typer.Option(None, "--data", show_default="the run's val split (splits.csv)", help="labelled images to evaluate on: DIR/val/<class>/* if DIR has train/ and val/, else DIR/<class>/*"),
    out_dir: Optional[str] = typer.Option(None, "--out", show_default="a new <run>/eval, then eval-2, ...", help="folder for metrics.json, confusion_matrix.csv/.png, report.html"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="images per forward pass"),
    gallery: int = typer.Option(24, "--gallery", min=0, help="most confidently wrong images shown in report.html"),
    force: bool = typer.Option(False, "--force", help="replace the results in --out (or <run>/eval) instead of refusing / writing a new folder"),
) -> None:
    """Evaluate a checkpoint: accuracy, per-class scores, confusion matrix, calibration, report."""
    from rich.progress import Progress

    from mobiletune.evaluation.evaluate import evaluate as run_evaluation

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        res = run_evaluation(checkpoint, data, out_dir, batch_size=batch_size, gallery=gallery,
                             force=force, on_total=lambda n: bar.update(task, total=n),
                             on_batch=lambda n: bar.advance(task, n))
    for p, e in res.errors[:5]:
        err.print(f"[yellow]skipped[/] {p}: {e}", highlight=False)
    if res.errors:
        n = len(res.errors) + res.metrics["num_samples"]
        err.print(f"[yellow]{len(res.errors)} of {n} image(s) could not be read and are "
                  "left out of the metrics.[/]")
    _print_summary(res.metrics, res.files)
