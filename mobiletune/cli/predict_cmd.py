"""`mobiletune predict`: top-k labels for images, as a table or JSON lines."""

from __future__ import annotations

import json
from typing import Optional

import typer

from mobiletune.cli.app import app, err, guarded, out


@app.command()
@guarded
def predict(
    paths: list[str] = typer.Argument(..., help="image files, folders (recursive) or globs"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="run directory, .pt file, or exported .onnx file (default: runs/latest/best.pt)"),
    top_k: int = typer.Option(3, "--top-k", min=1, help="labels to show per image"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line, per image, in input order"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="images per forward pass"),
) -> None:
    """Predict the class of each image with a trained checkpoint."""
    from rich.table import Table

    from mobiletune.predict import Predictor, expand_inputs, require_some

    files = expand_inputs(paths)
    predictor = Predictor.from_checkpoint(checkpoint)
    preds = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    require_some(preds)
    if as_json:
        for p in preds:
            print(json.dumps(p.to_json(), ensure_ascii=False), flush=False)
        return
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
    bad = sum(1 for p in preds if p.error)
    if bad:
        err.print(f"[yellow]{bad} of {len(preds)} file(s) could not be read.[/]")
