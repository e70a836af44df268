"""check-data: counts, broken and tiny files, imbalance, and planted train/val copies."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mobiletune.data.checkdata import check_data, hamming, phash
from mobiletune.errors import DataError
from tests.conftest import HYMENOPTERA


def smooth_image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Blurry colour noise plus a random shape: distinct pictures, hashes far apart."""
    low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
    w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
    return img


def make_dataset(root: Path, per_split: dict[str, int], classes=("ants", "bees"), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                smooth_image(rng).save(d / f"{c}_{split}_{i}.jpg", quality=90)
    return root


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data", {"train": 6, "val": 3})


def test_clean_folder_reports_nothing(clean: Path):
    report = check_data(clean)
    assert report.problems == []
    assert report.duplicates == [] and report.unreadable == [] and report.tiny == []
    assert report.counts == {"train": {"ants": 6, "bees": 6}, "val": {"ants": 3, "bees": 3}}
    assert report.to_dict()["clean"] is True


def test_finds_exact_half_size_and_reencoded_copies_in_val(clean: Path):
    train = sorted((clean / "train" / "ants").glob("*.jpg")) + sorted(
        (clean / "train" / "bees").glob("*.jpg"))
    exact_src, half_src, requal_src = train[0], train[3], train[8]
    shutil.copy(exact_src, clean / "val" / "ants" / "copy_exact.jpg")
    img = Image.open(half_src)
    img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR).save(
        clean / "val" / "ants" / "copy_half.jpg", quality=90)
    Image.open(requal_src).save(clean / "val" / "bees" / "copy_q35.jpg", quality=35)
    assert (clean / "val" / "bees" / "copy_q35.jpg").read_bytes() != requal_src.read_bytes()

    report = check_data(clean)
    leaks = {Path(d.b).name: d for d in report.duplicates if d.kind == "leak"}
    assert set(leaks) == {"copy_exact.jpg", "copy_half.jpg", "copy_q35.jpg"}
    assert leaks["copy_exact.jpg"].a == str(exact_src) and leaks["copy_exact.jpg"].match == "exact"
    assert leaks["copy_half.jpg"].a == str(half_src) and leaks["copy_half.jpg"].match == "near"
    assert leaks["copy_q35.jpg"].a == str(requal_src) and leaks["copy_q35.jpg"].match == "near"
    assert leaks["copy_exact.jpg"].a_where == "train/ants"
    assert any("leakage" in p for p in report.problems)


def test_phash_separates_distinct_and_keeps_copies_close():
    rng = np.random.default_rng(1)
    imgs = [smooth_image(rng, 96) for _ in range(12)]
    hashes = np.frombuffer(b"".join(phash(i) for i in imgs), np.uint8).reshape(-1, 8)
    dist = hamming(hashes, hashes)
    off_diag = dist[~np.eye(len(imgs), dtype=bool)]
    assert off_diag.min() > 10  # distinct pictures
    buf = io.BytesIO()
    imgs[0].resize((48, 48)).save(buf, "JPEG", quality=40)
    copy = np.frombuffer(phash(Image.open(buf)), np.uint8)[None]
    assert hamming(copy, hashes[:1])[0, 0] <= 4


def test_unreadable_tiny_and_ignored_files_are_named(clean: Path):
    broken = clean / "train" / "ants" / "broken.jpg"
    broken.write_bytes((clean / "train" / "ants" / "ants_train_0.jpg").read_bytes()[:200])
    empty = clean / "val" / "bees" / "empty.png"
    empty.write_bytes(b"")
    tiny = clean / "train" / "bees" / "tiny.png"
    smooth_image(np.random.default_rng(5), 64).resize((20, 30)).save(tiny)
    (clean / "train" / "ants" / "notes.txt").write_text("not an image")

    report = check_data(clean, min_size=32)
    assert {p for p, _ in report.unreadable} == {str(broken), str(empty)}
    assert report.tiny == [(str(tiny), 20, 30)]
    assert [p for p, _ in report.ignored] == [str(clean / "train" / "ants" / "notes.txt")]
    assert report.counts["train"]["ants"] == 6  # the broken file is not counted
    assert len(report.problems) == 2


def test_imbalance_and_missing_class(tmp_path: Path):
    root = make_dataset(tmp_path / "d", {"train": 2, "val": 2})
    rng = np.random.default_rng(9)
    for i in range(6):
        smooth_image(rng).save(root / "train" / "bees" / f"extra{i}.jpg")
    (root / "val" / "wasps").mkdir()
    report = check_data(root, max_imbalance=3.0)
    (imb,) = [x for x in report.imbalance if x["split"] == "train"]
    assert (imb["largest"], imb["largest_count"], imb["smallest_count"]) == ("bees", 8, 2)
    assert any("wasps" in issue for issue in report.layout_issues)
    assert check_data(root, max_imbalance=5.0).imbalance[0]["split"] == "val"  # 2 vs 0


def test_flat_layout_reports_any_duplicate(tmp_path: Path):
    rng = np.random.default_rng(3)
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(4):
            smooth_image(rng).save(tmp_path / c / f"{i}.png")
    assert check_data(tmp_path).problems == []
    shutil.copy(tmp_path / "cats" / "0.png", tmp_path / "cats" / "again.png")
    shutil.copy(tmp_path / "cats" / "1.png", tmp_path / "dogs" / "mislabelled.png")
    kinds = sorted((d.kind, Path(d.b).name) for d in check_data(tmp_path).duplicates)
    assert kinds == [("duplicate", "again.png"), ("label_conflict", "mislabelled.png")]


def test_missing_or_empty_folder_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        check_data(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        check_data(tmp_path)


def test_cli_exit_codes_and_json(clean: Path, tmp_path: Path):
    import json

    from typer.testing import CliRunner

    from mobiletune.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["check-data", str(clean)])
    assert res.exit_code == 0, res.output
    assert "clean" in res.output
    copy = clean / "val" / "bees" / "leaked.jpg"
    shutil.copy(clean / "train" / "ants" / "ants_train_2.jpg", copy)
    res = runner.invoke(app, ["check-data", str(clean)])
    assert res.exit_code == 1
    assert "leaked.jpg" in res.output.replace("\n", "")
    res = runner.invoke(app, ["check-data", str(clean), "--json"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["clean"] is False
    assert [(d["kind"], d["b"]) for d in doc["duplicates"]] == [("leak", str(copy))]
    assert doc["counts"]["val"]["bees"] == 4
    res = runner.invoke(app, ["check-data", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.integration
def test_hymenoptera_clean_and_three_planted_copies_found(tmp_path: Path):
    src = HYMENOPTERA
    if not src.is_dir():
        pytest.skip(f"integration data not found at {src}")
    root = tmp_path / "hym"  # links to the real photos: /work/shared is never modified
    for f in src.rglob("*.jp*g"):
        dst = root / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(f)
    assert check_data(root).problems == []
    train = sorted((src / "train" / "bees").glob("*.jpg"))
    shutil.copy(train[0], root / "val" / "bees" / "exact.jpg")
    img = Image.open(train[10])
    img.resize((img.width // 2, img.height // 2)).save(root / "val" / "ants" / "half.jpg")
    Image.open(train[20]).save(root / "val" / "bees" / "q40.jpg", quality=40)
    found = {(Path(d.a).name, Path(d.b).name) for d in check_data(root).duplicates}
    assert found == {(train[0].name, "exact.jpg"), (train[10].name, "half.jpg"),
                     (train[20].name, "q40.jpg")}
