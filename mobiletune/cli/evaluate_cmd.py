"""`mobiletune evaluate`: metrics, confusion matrix, plots and an HTML report for a checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import typer

from mobiletune.cli.app import app, err, guarded, out


def _folder_images(data: Path, class_names: list[str]) -> tuple[list[str], list[int], str]:
    """DATA/val/<class>/* when DATA has a val/ folder, else every image in DATA/<class>/*."""
    from mobiletune.data import IMAGE_EXTENSIONS
    from mobiletune.errors import DataError

    if not data.is_dir():
        raise DataError(f"--data {data} is not a folder. Pass a folder of class folders "
                        "(DIR/<class>/*.jpg) or a data root with DIR/val/<class>/.")
    folder = data / "val" if (data / "val").is_dir() else data
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [d.name for d in dirs if d.name not in class_names]
    if unknown:
        raise DataError(f"{folder} has class folder(s) {', '.join(unknown)} that the model does "
                        f"not know; it was trained on {', '.join(class_names)}.")
    paths, labels = [], []
    for d in dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in IMAGE_EXTENSIONS)
        paths += [str(f.absolute()) for f in files]
        labels += [class_names.index(d.name)] * len(files)
    return paths, labels, str(folder.absolute())


def _split_images(run_dir: Path, class_names: list[str]) -> tuple[list[str], list[int], str]:
    """The run's validation images from its splits.csv (split = val)."""
    from mobiletune.errors import DataError

    path = run_dir / "splits.csv"
    if not path.is_file():
        raise DataError(f"{run_dir} has no splits.csv, so its validation images are unknown. "
                        "Pass a folder of labelled images with --data DIR.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == "val"]
    bad = sorted({r["label"] for r in rows if r["label"] not in class_names})
    if bad:
        raise DataError(f"{path} names label(s) {', '.join(bad)} that the checkpoint does not "
                        f"know ({', '.join(class_names)}); is it the same run?")
    return [r["path"] for r in rows], [class_names.index(r["label"]) for r in rows], \
        f"{path} (val)"


def _open_model(checkpoint: Optional[str]) -> tuple[Any, list[str], Path, dict[str, Any]]:
    """(predictor, class names, run directory, report info) for any model `predict`
    takes: a run, a .pt checkpoint, or an export (its run is the folder above export/)."""
    from mobiletune.predict import load

    predictor = load(checkpoint)
    info = predictor.info
    model = Path(info.get("checkpoint") or info["model"]).absolute()
    run = model.parent.parent if model.parent.name == "export" else model.parent
    return predictor, list(predictor.class_names), run, info


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


@app.command()
@guarded
def evaluate(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="run directory, .pt file or exported .onnx (default: runs/latest/best.pt)"),
    data: Optional[str] = typer.Option(None, "--data", help="labelled images to evaluate on: DIR/val/<class>/* if DIR has val/, else DIR/<class>/* (default: the run's val split from splits.csv)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="where to write metrics.json, confusion_matrix.csv/.png, report.html (default: <run>/eval)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="images per forward pass"),
    gallery: int = typer.Option(24, "--gallery", min=0, help="most confidently wrong images shown in report.html"),
) -> None:
    """Evaluate a checkpoint: accuracy, per-class scores, confusion matrix, calibration, report."""
    import numpy as np
    from rich.progress import Progress

    from mobiletune.errors import DataError
    from mobiletune.evaluation.calibration import calibration_errors
    from mobiletune.evaluation.metrics import classification_metrics
    from mobiletune.evaluation.report import write_evaluation
    from mobiletune.explain import overlay_fn

    predictor, names, run_dir, info = _open_model(checkpoint)
    paths, labels, source = (_folder_images(Path(data), names) if data
                             else _split_images(run_dir, names))
    if not paths:
        raise DataError(f"{source} holds no images to evaluate on.")
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(paths))
        probs, errors = predictor.predict_probs(paths, batch_size, lambda n: bar.advance(task, n))
    ok = [i for i in range(len(paths)) if not np.isnan(probs[i]).any()]
    if not ok:
        raise DataError(f"None of the {len(paths)} image(s) from {source} could be read "
                        f"(first: {errors[0][0]}: {errors[0][1]}).")
    for p, e in errors[:5]:
        err.print(f"[yellow]skipped[/] {p}: {e}", highlight=False)
    if errors:
        err.print(f"[yellow]{len(errors)} of {len(paths)} image(s) could not be read and are "
                  "left out of the metrics.[/]")
    paths, labels, probs = [paths[i] for i in ok], [labels[i] for i in ok], probs[ok]
    metrics = classification_metrics(probs, labels, names)
    # on the run's own val split the temperature was fitted there: ece is cross-fitted
    metrics.update(calibration_errors(probs, labels, info.get("temperature"), not data))
    metrics["source"] = source
    metrics["unreadable"] = [{"path": p, "error": e} for p, e in errors]
    info = {**info, "data": source, "unreadable": len(errors) or None}
    target = Path(out_dir) if out_dir else run_dir / "eval"
    files = write_evaluation(target, metrics, paths, labels, probs, names, info,
                             metrics_csv=run_dir / "metrics.csv", gallery=gallery,
                             explain=overlay_fn(predictor))
    _print_summary(metrics, files)
