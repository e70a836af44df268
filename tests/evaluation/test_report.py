"""Plots, the confusion-matrix CSV, the HTML report, and `mobiletune evaluate` end to end."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobiletune.evaluation import report
from mobiletune.evaluation.metrics import classification_metrics
from tests.conftest import make_folder, tiny_config

HEADER = "stage,epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"


def write_metrics_csv(path: Path, stages: list[str]) -> Path:
    rows = [f"{s},{i + 1},{1.0 / (i + 1):.3f},{0.5 + 0.05 * i:.3f},{1.2 / (i + 1):.3f},"
            f"{0.45 + 0.05 * i:.3f},0.001,1.0" for i, s in enumerate(stages)]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def test_plot_curves_marks_the_stage_boundary(tmp_path: Path):
    both = report.plot_curves(write_metrics_csv(tmp_path / "a.csv", ["head"] * 3 + ["finetune"] * 2),
                              tmp_path / "both.png")
    head = report.plot_curves(write_metrics_csv(tmp_path / "b.csv", ["head"] * 5),
                              tmp_path / "head.png")
    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (both, head))
    assert a.shape == b.shape and a.shape[1] > 500
    # same numbers, only the stage column differs: the boundary line and label are the change
    assert np.abs(a - b).sum(axis=2).astype(bool).sum() > 100
    assert b"matplotlib.org" not in both.read_bytes()


def test_plot_curves_survives_an_empty_csv(tmp_path: Path):
    out = report.plot_curves(write_metrics_csv(tmp_path / "e.csv", []), tmp_path / "e.png")
    assert Image.open(out).size[0] > 100


def assert_self_contained(page: str) -> None:
    """Nothing in the page is fetched from elsewhere: every src/href, CSS url() and import is
    a data URI (text that merely contains 'http', in a base64 image or a path, is fine)."""
    assert not re.search(r"""\b(src|href|srcset|action)\s*=\s*(?!["']?(data:|#))""", page, re.I)
    assert not re.search(r"""url\(\s*(?!["']?data:)""", page, re.I)
    assert "@import" not in page and "<link" not in page.lower()


def test_self_contained_check_catches_outside_links():
    for bad in ('<img src="http://x/a.png">', "<a href='https://x'>", "<script src=x.js>",
                'background:url("//cdn/x.png")', '<link rel="stylesheet" href="x.css">'):
        with pytest.raises(AssertionError):
            assert_self_contained(bad)
    assert_self_contained('<img src="data:image/png;base64,aHR0cHM6Ly8="><a href="#top">')


@pytest.fixture
def eval_case(tmp_path: Path):
    """Eight val images of 3 classes with fixed probabilities: 3 wrong, at known confidences."""
    names = ["ant", "bee", "wasp"]
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(8):
        p = tmp_path / "val" / names[i % 3] / f"img{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
        labels.append(i % 3)
    probs = np.full((8, 3), 0.05)
    probs[np.arange(8), labels] = 0.9
    wrong = {1: (2, 0.7), 4: (0, 0.95), 6: (1, 0.6)}  # index: (predicted, confidence)
    for i, (pred, conf) in wrong.items():
        probs[i] = (1 - conf) / 2
        probs[i, pred] = conf
    return names, paths, labels, probs, wrong


def test_report_names_only_wrong_val_images_with_their_thumbnails(tmp_path: Path, eval_case):
    names, paths, labels, probs, wrong = eval_case
    metrics = classification_metrics(probs, labels, names)
    curves = write_metrics_csv(tmp_path / "metrics.csv", ["head", "head", "finetune"])
    files = report.write_evaluation(tmp_path / "eval", metrics, paths, labels, probs, names,
                                    {"checkpoint": "x.pt"}, metrics_csv=curves)
    assert set(files) == {"metrics.json", "confusion_matrix.csv", "confusion_matrix.png",
                          "curves.png", "report.html"}
    page = files["report.html"].read_text()
    assert_self_contained(page)
    named = re.findall(r'<div class="path">([^<]+)</div>', page)
    # most confident mistake first; correct predictions never appear
    assert named == [paths[4], paths[1], paths[6]]
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == len(wrong)
    assert page.count("data:image/png;base64,") == 2  # confusion matrix and curves
    for cls in names:
        assert f"<td>{cls}</td>" in page


def test_confusion_csv_agrees_with_metrics_json(tmp_path: Path, eval_case):
    names, paths, labels, probs, _ = eval_case
    metrics = classification_metrics(probs, labels, names)
    files = report.write_evaluation(tmp_path / "eval", metrics, paths, labels, probs, names, {})
    check_consistent(files["metrics.json"], files["confusion_matrix.csv"], len(paths))
    assert "curves.png" not in files  # no metrics.csv given


def check_consistent(metrics_json: Path, cm_csv: Path, n: int) -> None:
    """metrics.json's per-class numbers recomputed from confusion_matrix.csv."""
    m = json.loads(metrics_json.read_text())
    with open(cm_csv, newline="") as f:
        rows = list(csv.reader(f))
    labels = rows[0][1:]
    assert rows[0][0] == "true" and [r[0] for r in rows[1:]] == labels == list(m["per_class"])
    cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert cm.sum() == n == sum(v["support"] for v in m["per_class"].values())
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
    for i, label in enumerate(labels):
        col = cm[:, i].sum()
        assert m["per_class"][label]["support"] == cm[i].sum()
        assert m["per_class"][label]["precision"] == pytest.approx(cm[i, i] / col if col else 0)


def test_evaluate_cli_on_a_tiny_run(tmp_path: Path):
    from typer.testing import CliRunner

    from mobiletune.cli import app

    data = make_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=6, layout="split")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(tiny_config(tmp_path, data))])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "t"
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run)])
    assert res.exit_code == 0, res.output
    assert "macro F1" in res.output
    ev = run / "eval"
    with open(run / "splits.csv", newline="") as f:
        val = [r["path"] for r in csv.DictReader(f) if r["split"] == "val"]
    check_consistent(ev / "metrics.json", ev / "confusion_matrix.csv", len(val))
    page = (ev / "report.html").read_text()
    assert_self_contained(page)
    assert set(re.findall(r'<div class="path">([^<]+)</div>', page)) <= set(val)
    assert Image.open(ev / "confusion_matrix.png").size[0] > 200
    assert (ev / "curves.png").is_file()

    out = tmp_path / "other"
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "best.pt"),
                              "--data", str(data / "train"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    n_train = sum(1 for _ in (data / "train").rglob("*.jpg"))
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == n_train

    (data / "train" / "zebra").mkdir()
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run), "--data", str(data / "train"),
                              "--out", str(out)])
    assert res.exit_code == 2 and "zebra" in res.output
