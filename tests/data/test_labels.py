"""data.labels: a CSV of path,label[,split] instead of class folders; bad rows to skipped.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobiletune.cli import app
from mobiletune.data.labels import read_labels, scan_labels
from mobiletune.data.scan import scan
from mobiletune.errors import DataError
from tests.conftest import HYMENOPTERA, make_image, needs_shared, tiny_config

runner = CliRunner()


def _photos(root: Path, n: int = 6) -> list[Path]:
    """Images in ONE flat folder: only the CSV says which class each is."""
    return [make_image(root / "photos" / f"img_{i}.jpg", seed=i, color=i % 2) for i in range(n)]


def _write(path: Path, rows: list[list[str]], header=("path", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([list(header), *rows])
    return path


def test_rows_become_samples_relative_to_the_csv(tmp_path):
    photos = _photos(tmp_path)
    rows = [[f"photos/../photos/{p.name}", "cat" if i % 2 else "dog"] for i, p in enumerate(photos)]
    res = scan_labels(_write(tmp_path / "labels.csv", rows), val_split=0.34, seed=0)
    assert res.classes == ["cat", "dog"] and not res.skipped
    assert sorted(s.path for s in res.samples) == sorted(str(p.absolute()) for p in photos)
    label = {s.path: res.classes[s.label] for s in res.samples}
    assert all(label[str(p.absolute())] == ("cat" if i % 2 else "dog") for i, p in enumerate(photos))
    assert {c: sum(s.split == "val" and s.label == i for s in res.samples)
            for i, c in enumerate(res.classes)} == {"cat": 1, "dog": 1}  # stratified
    again = scan_labels(tmp_path / "labels.csv", val_split=0.34, seed=0)
    assert again.samples == res.samples  # seeded: the same split every time


def test_split_column_is_honoured(tmp_path):
    photos = _photos(tmp_path)
    rows = [[f"photos/{p.name}", "ab"[i % 2], "val" if i < 2 else "train"]
            for i, p in enumerate(photos)]
    res = scan_labels(_write(tmp_path / "l.csv", rows, ("path", "label", "split")))
    val = sorted(Path(s.path).name for s in res.of("val"))
    assert val == ["img_0.jpg", "img_1.jpg"] and len(res.of("train")) == 4


def test_every_bad_row_is_skipped_with_its_reason(tmp_path):
    photos = _photos(tmp_path)
    (tmp_path / "photos" / "broken.jpg").write_text("not a jpeg")
    rows = [[f"photos/{p.name}", "ab"[i % 2], ""] for i, p in enumerate(photos)]
    rows += [["photos/missing.jpg", "a", ""], [f"photos/{photos[0].name}", "a", ""],
             [f"photos/{photos[1].name}", "", ""], ["photos/broken.jpg", "b", ""],
             [f"photos/{photos[2].name}", "a", "test"], ["", "a", ""]]
    rows[0][2] = "train"
    res = scan_labels(_write(tmp_path / "l.csv", rows, ("path", "label", "split")))
    why = dict(res.skipped)
    p = lambda name: str((tmp_path / "photos" / name).absolute())  # noqa: E731
    assert why[p("missing.jpg")] == "file not found"
    assert why[p(photos[0].name)] == "listed twice"
    assert why[p(photos[1].name)] == "empty label"
    assert why[p("broken.jpg")].startswith("unreadable")
    assert why[p(photos[2].name)].startswith("unknown split 'test'")
    assert why["line 13"] == "empty path"  # header on line 1, 11 rows before it
    assert len(res.samples) == len(photos)  # the good rows all survive


@pytest.mark.parametrize("text,match", [
    ("file,class\nx.jpg,a\n", "unknown column"), ("", "header row"),
    ("path,label\nnone.jpg,a\n", "0 class.*none.jpg: file not found"),
])
def test_unusable_files_are_data_errors(tmp_path, text, match):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        scan_labels(tmp_path / "l.csv")
    with pytest.raises(DataError, match="not found"):
        read_labels(tmp_path / "none.csv")


def test_train_with_a_labels_file_writes_splits_and_skipped(tmp_path):
    photos = _photos(tmp_path, 8)
    rows = [[str(p), "ab"[i % 2]] for i, p in enumerate(photos)] + [["gone.jpg", "a"]]
    labels = _write(tmp_path / "labels.csv", rows)
    cfg = tiny_config(tmp_path, tmp_path / "no-such-root", data={"labels": str(labels)})
    res = runner.invoke(app, ["train", "--config", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "t"
    split = list(csv.DictReader(open(run / "splits.csv")))
    assert sorted(r["path"] for r in split) == sorted(str(p) for p in photos)
    assert {r["label"] for r in split} == {"a", "b"}
    skipped = list(csv.DictReader(open(run / "skipped.csv")))
    assert [(Path(r["path"]).name, r["reason"]) for r in skipped] == [("gone.jpg", "file not found")]
    assert f"labels: {labels}" in (run / "config.yaml").read_text()


def test_check_data_reads_a_labels_file(tmp_path):
    photos = _photos(tmp_path, 8)
    rows = [[f"photos/{p.name}", "ab"[i % 2]] for i, p in enumerate(photos)]
    labels = _write(tmp_path / "labels.csv", rows + [[f"photos/{photos[0].name}", "b"]])
    res = runner.invoke(app, ["check-data", str(labels), "--json", "--min-size", "8"])
    report = json.loads(res.stdout)
    assert report["classes"] == ["a", "b"] and report["counts"] == {"all": {"a": 4, "b": 4}}
    assert [r["reason"] for r in report["ignored"]] == ["listed twice"]


@pytest.mark.integration
@needs_shared()
def test_hymenoptera_as_a_labels_file_is_the_same_data_as_the_folders(tmp_path):
    folders = scan(HYMENOPTERA)
    rows = [[s.path, folders.classes[s.label], s.split] for s in folders.samples]
    res = scan_labels(_write(tmp_path / "l.csv", rows, ("path", "label", "split")))
    assert res.classes == folders.classes and res.samples == folders.samples
