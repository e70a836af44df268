"""Plots and the self-contained HTML evaluation report.

Plots use matplotlib's Agg canvas directly (no pyplot, no display), so they work headless
and never touch global backend state. The report embeds every image as a base64 data URI
and links nothing outside itself: it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mobiletune.fileio import atomic_write, write_csv, write_text

_PNG_META = {"Software": None}  # matplotlib would otherwise stamp its web address into each PNG


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _read_curves(path: Path) -> list[dict[str, Any]]:
    def num(v: str | None) -> float:
        try:
            return float(v) if v not in (None, "") else float("nan")
        except ValueError:
            return float("nan")

    with open(path, newline="", encoding="utf-8") as f:
        return [{"stage": r.get("stage", ""), **{k: num(r.get(k)) for k in
                 ("train_loss", "val_loss", "train_acc", "val_acc")}} for r in csv.DictReader(f)]


def plot_curves(metrics_csv_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch (train and val) from a run's metrics.csv, with the
    head/finetune boundary marked. Epochs are counted across both stages."""
    rows = _read_curves(Path(metrics_csv_path))
    fig = _new_figure(10, 3.8)
    axes = fig.subplots(1, 2)
    x = np.arange(1, len(rows) + 1)
    for ax, what in zip(axes, ("loss", "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(x, [r[f"{split}_{what}"] for r in rows], style, ms=4, label=split)
        ax.set_xlabel("epoch (both stages)")
        ax.set_title("loss" if what == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        if what == "acc":
            ax.set_ylim(-0.02, 1.02)
        for i in range(1, len(rows)):
            if rows[i]["stage"] != rows[i - 1]["stage"]:
                ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
                ax.text(i + 0.5, 0.98, f" {rows[i]['stage']} ->", transform=ax.get_xaxis_transform(),
                        va="top", fontsize=8, color="grey")
        if len(rows):
            ax.set_xticks(x if len(rows) <= 20 else ax.get_xticks())
            ax.set_xlim(0.5, len(rows) + 0.5)
            ax.legend(loc="best", fontsize=8)
    if not rows:
        fig.suptitle(f"{metrics_csv_path} has no epochs yet")
    return _save_png(fig, out_png)


def _save_png(fig, out_png: str | os.PathLike) -> Path:
    """Render `fig` and write the PNG whole or not at all (runs.atomic_write)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_META)
    return atomic_write(out_png, lambda f: f.write(buf.getbuffer()))


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str],
                          out_png: str | os.PathLike) -> Path:
    """Counts, coloured by the fraction of each true class (row) so small classes show too."""
    cm = np.asarray(cm)
    c = len(class_names)
    side = min(4 + 0.45 * c, 30)
    fig = _new_figure(side + 1.5, side)
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_xticks(range(c), class_names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:  # beyond that the numbers are unreadable; the CSV has them
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=14 if c <= 6 else 9,
                        color="white" if frac[i, j] > 0.5 else "black")
    return _save_png(fig, out_png)


def write_confusion_csv(cm: np.ndarray, class_names: Sequence[str],
                        path: str | os.PathLike) -> Path:
    """Header `true,<pred labels...>`, then one row per true label: label, counts."""
    return write_csv(path, ["true", *class_names],
                     ([name, *row] for name, row in zip(class_names, np.asarray(cm).tolist())))


def confident_mistakes(paths: Sequence[str], y_true: Sequence[int], probs: np.ndarray,
                       class_names: Sequence[str], n: int = 24) -> list[dict[str, Any]]:
    """The `n` wrong predictions made with the highest confidence, most confident first."""
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1)
    wrong = [i for i in range(len(paths)) if pred[i] != y_true[i]]
    wrong.sort(key=lambda i: -probs[i, pred[i]])
    return [{"path": str(paths[i]), "true": class_names[y_true[i]],
             "predicted": class_names[pred[i]], "confidence": float(probs[i, pred[i]]),
             "true_prob": float(probs[i, y_true[i]])} for i in wrong[:n]]


def data_uri(data: bytes, mime: str) -> str:
    """Bytes as a base64 data URI: the report embeds its images and loads nothing."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(path: str | os.PathLike) -> str:
    """A PNG file as a data URI."""
    return data_uri(Path(path).read_bytes(), "image/png")


def thumbnail_uri(path: str | os.PathLike, size: int = 180) -> str | None:
    """A small JPEG of an image (EXIF-upright) as a data URI, or None when it cannot be read."""
    from mobiletune.data.images import load_image

    try:
        img = load_image(path, min_side=size)
    except Exception:  # a file that vanished or broke since prediction: show no picture
        return None
    return image_uri(img, size)


def image_uri(img, size: int = 180) -> str:
    """A PIL image, shrunk to fit `size`, as a JPEG data URI."""
    img = img.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def write_evaluation(out_dir: str | os.PathLike, metrics: dict[str, Any], paths: Sequence[str],
                     y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str],
                     info: dict[str, Any], metrics_csv: str | os.PathLike | None = None,
                     gallery: int = 24, explain: Callable[[str], Any] | None = None
                     ) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.csv/.png, curves.png (when metrics.csv exists)
    and report.html into `out_dir`; return their paths by name. `explain(path)` gives a
    Grad-CAM overlay (PIL image, or None) shown beside each most-confidently-wrong image."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cm = np.asarray(metrics["confusion_matrix"])
    files = {"metrics.json": out / "metrics.json"}
    write_text(files["metrics.json"], json.dumps(metrics, indent=2) + "\n")
    files["confusion_matrix.csv"] = write_confusion_csv(cm, class_names,
                                                        out / "confusion_matrix.csv")
    files["confusion_matrix.png"] = plot_confusion_matrix(cm, class_names,
                                                          out / "confusion_matrix.png")
    curves = None
    if metrics_csv is not None and Path(metrics_csv).is_file():
        curves = files["curves.png"] = plot_curves(metrics_csv, out / "curves.png")
    mistakes = confident_mistakes(paths, y_true, probs, class_names, gallery)
    for m in mistakes:
        m["thumbnail"] = thumbnail_uri(m["path"])
        cam = explain(m["path"]) if explain and m["thumbnail"] else None
        m["overlay"] = image_uri(cam) if cam is not None else None
    info = {**info, "generated": datetime.now().strftime("%Y-%m-%d %H:%M")}
    page = render_report(metrics, info, png_uri(files["confusion_matrix.png"]),
                         png_uri(curves) if curves else None, mistakes)
    files["report.html"] = out / "report.html"
    write_text(files["report.html"], page)
    return files


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px}.meta b{color:#222}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#f4f6fa;border-radius:8px;padding:10px 16px;min-width:110px}
.card .v{font-size:24px;font-weight:600}.card .k{color:#555;font-size:12px}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #e5e5e5;text-align:left}
td.n,th.n{text-align:right}tr.avg td{font-weight:600;background:#fafafa}
img.plot{max-width:100%;border:1px solid #eee}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
.item{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;overflow-wrap:anywhere}
.item img{display:block;margin:0 auto 4px;max-width:180px;max-height:180px}
.pair{display:flex;gap:4px}.pair img{max-width:49%;margin:0 0 4px}
.bad{color:#b00020;font-weight:600}.path{color:#666;font-family:monospace;font-size:11px}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], avg_from: int | None = None) -> str:
    def is_num(v: Any) -> bool:  # numbers align right, labels left
        return isinstance(v, (int, float)) or (isinstance(v, str) and v[:1].isdigit())

    numeric = [bool(rows) and all(is_num(r[j]) for r in rows) for j in range(len(header))]
    head = "".join(f"<th{' class=n' if n else ''}>{html.escape(str(h))}</th>"
                   for h, n in zip(header, numeric))
    body = "".join(
        f"<tr{' class=avg' if avg_from is not None and i >= avg_from else ''}>"
        + "".join(f"<td{' class=n' if n else ''}>{html.escape(str(v))}</td>"
                  for v, n in zip(r, numeric)) + "</tr>"
        for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _metric_tables(m: dict[str, Any]) -> str:
    rows = [[k, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
            for k, v in m["per_class"].items()]
    total = sum(v["support"] for v in m["per_class"].values())
    for avg in ("macro", "weighted"):
        rows.append([f"{avg} average", *(f"{m[f'{avg}_{k}']:.3f}" for k in
                                         ("precision", "recall", "f1")), total])
    out = "<h2>Per class</h2>" + _table(["class", "precision", "recall", "F1", "support"], rows,
                                        avg_from=len(m["per_class"]))
    confused = [[p["true"], p["predicted"], p["count"]] for p in m.get("most_confused", [])]
    out += "<h2>Most confused pairs</h2>" + (
        _table(["true", "predicted as", "images"], confused) if confused else "<p>None.</p>")
    bins = [[f"{b['lower']:.2f}-{b['upper']:.2f}", b["count"], f"{b['confidence']:.3f}",
             f"{b['accuracy']:.3f}"] for b in m.get("calibration_bins", [])]
    unc = m.get("ece_uncalibrated")
    out += (f"<h2>Calibration</h2><p>Expected calibration error: <b>{m['ece']:.4f}</b> "
            "(count-weighted gap between confidence and accuracy)"
            + (f"; before temperature scaling: {unc:.4f}" if unc is not None else "") + ".</p>"
            + _table(["confidence bin", "images", "mean confidence", "accuracy"], bins))
    return out


def _gallery(mistakes: list[dict[str, Any]]) -> str:
    if not mistakes:
        return "<p>No misclassified images.</p>"
    items = []
    for m in mistakes:
        name = html.escape(Path(m["path"]).name)
        pic = (f'<img src="{m["thumbnail"]}" alt="{name}">'
               if m.get("thumbnail") else "<p>(image unreadable)</p>")
        if m.get("overlay"):  # where the model looked for the class it (wrongly) chose
            pic = (f'<div class="pair">{pic}<img src="{m["overlay"]}" alt="Grad-CAM of '
                   f'{name}" title="Grad-CAM for {html.escape(m["predicted"])}"></div>')
        items.append(
            f'<div class="item">{pic}<div>true: <b>{html.escape(m["true"])}</b></div>'
            f'<div>predicted: <span class="bad">{html.escape(m["predicted"])}</span> '
            f'({m["confidence"]:.1%})</div><div class="path">{html.escape(m["path"])}</div></div>')
    return f'<div class="gallery">{"".join(items)}</div>'


def _short(v: Any) -> str:
    """A value as a reader wants it: floats to 3 significant digits (T = 1.19, not
    1.1857920608576331), everything else as is."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def render_report(metrics: dict[str, Any], info: dict[str, Any], confusion_uri: str,
                  curves_uri: str | None, mistakes: list[dict[str, Any]]) -> str:
    """The report page as one HTML string (all images already embedded as data URIs)."""
    meta = " &middot; ".join(f"{html.escape(str(k))}: <b>{html.escape(_short(v))}</b>"
                             for k, v in info.items() if v not in (None, ""))
    ci = metrics.get("accuracy_ci95")
    acc_label = f"accuracy (95% CI {ci[0]:.1%}-{ci[1]:.1%})" if ci else "accuracy"
    cards = [(acc_label, f"{metrics['accuracy']:.1%}"), ("macro F1", f"{metrics['macro_f1']:.3f}"),
             ("weighted F1", f"{metrics['weighted_f1']:.3f}"),
             *((k.replace("_", "-"), f"{v:.1%}") for k, v in metrics["top_k"].items() if k != "top_1"),
             ("ECE", f"{metrics['ece']:.3f}"), ("images", str(metrics["num_samples"]))]
    cards_html = "".join(f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div></div>'
                         for k, v in cards)
    curves = (f'<img class="plot" src="{curves_uri}" alt="training curves">' if curves_uri
              else "<p>No metrics.csv next to this checkpoint, so no training curves.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mobiletune evaluation</title>
<style>{_CSS}</style></head><body>
<h1>mobiletune evaluation</h1><div class="meta">{meta}</div>
<div class="cards">{cards_html}</div>
{_metric_tables(metrics)}
<h2>Confusion matrix</h2><img class="plot" src="{confusion_uri}" alt="confusion matrix">
<h2>Training curves</h2>{curves}
<h2>Most confidently wrong ({len(mistakes)})</h2>{_gallery(mistakes)}
</body></html>
"""
