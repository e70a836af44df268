"""Scanning and splitting: stratified, reproducible, every file accounted for."""

from __future__ import annotations

from collections import Counter

import pytest

from mobiletune.data.scan import scan
from mobiletune.errors import DataError
from tests.conftest import make_folder, make_image


def test_split_is_stratified_and_reproducible(tmp_path):
    root = make_folder(tmp_path / "d", classes=("cat", "dog", "eel"), per_class=10)
    a, b = scan(root, 0.3, seed=1), scan(root, 0.3, seed=1)
    assert a.samples == b.samples
    val = Counter(a.classes[s.label] for s in a.of("val"))
    assert val == {"cat": 3, "dog": 3, "eel": 3}
    other = scan(root, 0.3, seed=2)
    assert {s.path for s in other.of("val")} != {s.path for s in a.of("val")}
    assert not {s.path for s in a.of("val")} & {s.path for s in a.of("train")}


def test_train_val_layout_and_sorted_classes(tmp_path):
    root = make_folder(tmp_path / "d", classes=("zebra", "ant"), per_class=6, layout="split")
    res = scan(root)
    assert res.classes == ["ant", "zebra"]
    assert all("/val/" in s.path for s in res.of("val"))
    assert len(res.of("val")) == 4 and len(res.of("train")) == 8


def test_val_class_missing_from_train_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", layout="split")
    make_image(root / "val" / "ghost" / "x.jpg")
    with pytest.raises(DataError, match="ghost"):
        scan(root)


def test_unusable_files_are_skipped_with_reasons(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / "fake.jpg").write_text("not a jpeg")
    (root / "a" / ".DS_Store").write_bytes(b"\0\1")
    res = scan(root)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in res.skipped}
    assert set(reasons) == {"notes.txt", "fake.jpg", ".DS_Store"}
    assert "unreadable" in reasons["fake.jpg"] and "hidden" in reasons[".DS_Store"]
    assert len(res.samples) == 12


def test_missing_root_and_single_class(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan(tmp_path / "nowhere")
    root = make_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="at least 2"):
        scan(root)
