"""`evaluate` as a library call: which images, which model, the metrics, and the files.

Results go to a new folder every time (`<run>/eval`, then `eval-2`, ...) so an earlier
evaluation is never replaced; `force` reuses the folder named (or `<run>/eval`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mobiletune.data.images import IMAGE_EXTENSIONS
from mobiletune.data.scan import read_splits
from mobiletune.data.walk import list_files
from mobiletune.errors import DataError
from mobiletune.evaluation.calibration import calibration_errors
from mobiletune.evaluation.explain import overlay_fn
from mobiletune.evaluation.metrics import classification_metrics
from mobiletune.evaluation.report import write_evaluation
from mobiletune.fileio import new_run_dir


@dataclass
class Evaluation:
    """What `evaluate` computed and wrote; `errors` are (path, why) of images left out."""

    metrics: dict[str, Any]
    files: dict[str, Path]
    errors: list[tuple[str, str]]
    source: str


def folder_images(data: Path, class_names: list[str]) -> tuple[list[str], list[int], str]:
    """DATA/val/<class>/* when DATA has train/ and val/, else every image in DATA/<class>/*,
    found by the walker `scan` uses."""
    if not data.is_dir():
        raise DataError(f"--data {data} is not a folder. Pass a folder of class folders "
                        "(DIR/<class>/*.jpg) or a data root with DIR/val/<class>/.")
    listing = list_files(data)
    split = "val" if listing.layout == "train/val" else "all"
    per_class = listing.files.get(split, {})
    unknown = [c for c in per_class if c not in class_names]
    if unknown:
        raise DataError(f"{data} has class folder(s) {', '.join(unknown)} that the model does "
                        f"not know; it was trained on {', '.join(class_names)}.")
    paths, labels = [], []
    for c, files in per_class.items():
        files = [f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        paths += files
        labels += [class_names.index(c)] * len(files)
    where = data / "val" if split == "val" else data
    return paths, labels, str(where.absolute())


def split_images(run_dir: Path, class_names: list[str]
                 ) -> tuple[list[str], list[int], str, list[tuple[str, str]]]:
    """The run's validation images from its splits.csv, and (path, why) of those gone."""
    path = run_dir / "splits.csv"
    if not path.is_file():
        raise DataError(f"{run_dir} has no splits.csv, so its validation images are unknown. "
                        "Pass a folder of labelled images with --data DIR.")
    res = read_splits(path, class_names, need=("val",))
    val = res.of("val")
    return [s.path for s in val], [s.label for s in val], f"{path} (val)", res.skipped


def open_model(checkpoint: str | None) -> tuple[Any, list[str], Path, dict[str, Any]]:
    """(predictor, class names, run directory, report info) for any model `predict`
    takes: a run, a .pt checkpoint, or an export (its run: the folder above holding
    splits.csv, so `export-2/model.onnx` finds it too)."""
    from mobiletune.predict.predictor import load

    predictor = load(checkpoint)
    info = predictor.info
    model = Path(info.get("checkpoint") or info["model"]).absolute()
    run = next((d for d in (model.parent, model.parent.parent) if (d / "splits.csv").is_file()),
               model.parent)
    return predictor, list(predictor.class_names), run, info


def output_dir(run_dir: Path, out: str | os.PathLike | None, force: bool) -> Path:
    """Where results go: a new `<run>/eval`, `eval-2`, ... unless `out` names a folder;
    a folder that already holds results is replaced only with `force`."""
    if out is None and not force:
        return new_run_dir(run_dir, "eval")
    target = Path(out) if out is not None else run_dir / "eval"
    if target.is_dir() and any(target.iterdir()) and not force:
        raise DataError(f"{target} already holds results; evaluate never replaces them. "
                        "Pick another --out folder, or pass --force to replace them.")
    if target.exists() and not target.is_dir():
        raise DataError(f"--out {target} is a file, not a folder.")
    target.mkdir(parents=True, exist_ok=True)
    return target


def evaluate(checkpoint: str | None, data: str | None = None, out: str | None = None, *,
             batch_size: int = 32, gallery: int = 24, force: bool = False,
             on_total: Callable[[int], None] = lambda n: None,
             on_batch: Callable[[int], None] = lambda n: None) -> Evaluation:
    """Evaluate a checkpoint (.pt, run dir, or exported .onnx) on the run's val split or
    on `data`; write metrics.json, confusion matrix (CSV, PNG), curves and report.html."""
    predictor, names, run_dir, info = open_model(checkpoint)
    paths, labels, source, errors = (folder_images(Path(data), names) + ([],) if data
                                     else split_images(run_dir, names))
    if not paths:
        raise DataError(f"{source} holds no images to evaluate on.")
    if out is not None and not force:
        output_dir(run_dir, out, force=False)  # refuse before the slow part, not after it
    on_total(len(paths))
    probs, unreadable = predictor.predict_probs(paths, batch_size, on_batch)
    errors = errors + unreadable
    ok = [i for i in range(len(paths)) if not np.isnan(probs[i]).any()]
    if not ok:
        raise DataError(f"None of the {len(paths)} image(s) from {source} could be read "
                        f"(first: {errors[0][0]}: {errors[0][1]}).")
    paths, labels, probs = [paths[i] for i in ok], [labels[i] for i in ok], probs[ok]
    metrics = classification_metrics(probs, labels, names)
    # on the run's own val split the temperature was fitted there: ece is cross-fitted
    metrics.update(calibration_errors(probs, labels, info.get("temperature"), not data))
    metrics["source"] = source
    metrics["unreadable"] = [{"path": p, "error": e} for p, e in errors]
    info = {**info, "data": source, "unreadable": len(errors) or None}
    target = output_dir(run_dir, out, force)
    files = write_evaluation(target, metrics, paths, labels, probs, names, info,
                             metrics_csv=run_dir / "metrics.csv", gallery=gallery,
                             explain=overlay_fn(predictor))
    return Evaluation(metrics, files, errors, source)
