"""`mobiletune predict`: top-k labels for images, as a table or JSON lines."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.markup import escape

from mobiletune.cli.app import PlainUsage, app, err, guarded, out


@app.command(cls=PlainUsage, short_help="Predict the class of images, folders or globs with a run or an export.", epilog="""Examples:

  mobiletune predict photo.jpg holiday/ --top-k 3

  mobiletune predict "shots/*.png" --json --checkpoint runs/cats/export/model.onnx""")
@guarded
def predict(
    paths: list[str] = typer.Argument(..., metavar="PATH", help="image files, folders (recursive) or globs"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "--from", show_default="runs/latest/best.pt", help="run directory, .pt checkpoint, or an exported .onnx, .tflite or TorchScript file"),
    top_k: int = typer.Option(3, "--top-k", min=1, help="labels to show per image"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line, per image, in input order"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="images per forward pass"),
) -> None:
    """Predict the class of each image with a trained checkpoint or an export. Exit 2 when
    any input could not be read (the others are still predicted)."""
    from mobiletune.predict.predictor import expand_inputs, load, require_some

    files = expand_inputs(paths)
    model = load(checkpoint)
    used = model.info.get("checkpoint") or model.info.get("model") or checkpoint
    err.print(f"model: {used} ({model.kind})", highlight=False, markup=False)
    preds = model.predict(files, top_k=top_k, batch_size=batch_size)
    require_some(preds)
    if as_json:
        for p in preds:
            print(json.dumps(p.to_json(), ensure_ascii=False), flush=False)
    else:
        _print_table(preds)
    bad = [p for p in preds if p.error]
    if bad:
        err.print(f"[bold red]error:[/] {len(bad)} of {len(preds)} input(s) could not be read "
                  f"(first: {escape(str(bad[0].path))}: {escape(bad[0].error)}); the others "
                  "were predicted.", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _print_table(preds) -> None:
    from rich.table import Table

    table = Table(show_edge=False)
    table.add_column("image", overflow="fold")  # a path is useless cut short
    for col in ("label", "confidence", "top-k"):
        table.add_column(col)
    for p in preds:
        if p.error:
            table.add_row(p.path, "[red]error[/]", "", p.error)
        else:
            rest = ", ".join(f"{lab} {prob:.3f}" for lab, prob in p.top_k[1:])
            table.add_row(p.path, p.top_k[0][0], f"{p.top_k[0][1]:.3f}", rest)
    out.print(table)
