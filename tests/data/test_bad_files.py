"""Bad data never crashes a run: every odd file is either used or listed in skipped.csv
with a reason, and a folder that cannot make a classifier is exit 2 with one message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import mobiletune.data.scan as D
from mobiletune.data.images import load_image
from mobiletune.data.scan import scan
from mobiletune.errors import DataError
from tests.conftest import make_folder
from tests.helpers_robust import (
    DATA_CASES,
    every_entry,
    invoke,
    make_messy,
    one_thread,  # noqa: F401 (autouse fixture)
    read_csv,
    rgb,
    save,
    write_config,
)


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_each_odd_file_is_used_or_skipped_with_a_reason(tmp_path, case):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    build, expected = DATA_CASES[case]
    odd = str(build(root / "a").absolute())
    res = scan(root)
    used = {s.path for s in res.samples}
    skipped = dict(res.skipped)
    assert len(res.skipped) == len(skipped)  # nothing listed twice
    if expected == "used":
        assert odd in used and odd not in skipped
        img = load_image(odd)
        assert img.mode == "RGB" and min(img.size) > 0
    else:
        assert odd not in used and expected in skipped[odd], skipped
    assert res.classes == ["a", "b"] and len(used) == 8 + (expected == "used")


@pytest.mark.parametrize("case, check", [
    ("cmyk_jpeg", lambda a: a.std() > 10),  # not a blank or inverted-to-black image
    ("png_16bit", lambda a: 100 < a.mean() < 160 and a.max() > 200),  # scaled, not clipped
    ("rgba_png", lambda a: a.shape[2] == 3),
    ("grayscale", lambda a: (a[..., 0] == a[..., 1]).all()),
])
def test_odd_modes_decode_to_sensible_rgb(tmp_path, case, check):
    path = DATA_CASES[case][0](tmp_path)
    assert check(np.asarray(load_image(path)).astype(float))


def test_exif_orientation_is_applied(tmp_path):
    path = DATA_CASES["exif_rotated"][0](tmp_path)
    with Image.open(path) as raw:
        assert raw.size == (60, 30)
    assert load_image(path).size == (30, 60)  # orientation 6: width and height swap


@pytest.mark.parametrize("side", [80, 120])  # over the limit (a warning) and over 2x (an error)
def test_decompression_bomb_is_skipped_without_decoding(tmp_path, monkeypatch, side):
    root = make_folder(tmp_path / "d", per_class=4, size=40)
    bomb = save(rgb((side, side)), root / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    decoded: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        decoded.append(getattr(self, "filename", ""))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    res = scan(root)
    assert "decompression-bomb" in dict(res.skipped)[str(bomb)]
    assert str(bomb) not in decoded and decoded  # the others were decoded, the bomb never


def test_empty_class_folder_is_ignored_with_a_warning(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    (root / "nothing here").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "x.jpg").write_bytes(b"")
    res = scan(root)
    assert res.classes == ["a", "b"]
    assert any("'nothing here'" in w for w in res.warnings)
    assert any("'broken'" in w for w in res.warnings)


@pytest.mark.parametrize("layout", ["one_class", "one_usable_class"])
def test_fewer_than_two_usable_classes_is_exit_2(tmp_path, layout):
    root = make_folder(tmp_path / "d", classes=("[raw] only",), per_class=4, size=40)
    if layout == "one_usable_class":
        (root / "ghost").mkdir()
        (root / "ghost" / "a.jpg").write_text("not an image")
    with pytest.raises(DataError, match="at least 2"):
        scan(root)
    res = invoke(["train", "--config", write_config(tmp_path, root), "-q"], 2)
    assert str(root) in res.stderr and "[raw] only" in res.stderr  # brackets are not markup


@pytest.mark.parametrize("workers", [0, 1])
def test_image_that_breaks_after_the_scan_is_exit_2(tmp_path, monkeypatch, workers):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    real = D.load_image

    def flaky(path, *args, **kwargs):  # the file changed on disk after the scan
        if Path(path).name == "a_1.jpg":
            raise OSError("image file is truncated")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(D, "load_image", flaky)
    cfg = write_config(tmp_path, root, data={"workers": workers})
    res = invoke(["train", "--config", cfg, "-q"], 2)  # a worker's traceback is not shown
    assert "a_1.jpg could not be decoded" in res.stderr and "File " not in res.stderr
    # it failed before its first epoch: no half-made run is left (CONTRACT, issue 9)
    assert not (tmp_path / "runs" / "t").exists()


def test_symlink_into_another_class_is_not_counted_twice(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=4, size=40)
    (root / "a" / "more").symlink_to(root / "b", target_is_directory=True)
    outside = make_folder(tmp_path / "elsewhere", classes=("c",), per_class=2, size=40)
    (root / "b" / "linked").symlink_to(outside / "c", target_is_directory=True)
    res = scan(root)
    assert "scanned on its own" in dict(res.skipped)[str(root / "a" / "more")]
    labels = {Path(s.path).name: res.classes[s.label] for s in res.samples}
    assert len(res.samples) == 10 and labels["c_0.jpg"] == "b"  # outside links are followed


def test_split_layout_accounts_for_files_outside_train_and_val(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=6, layout="split", size=40)
    (root / "notes.txt").write_text("x")
    save(rgb(), root / "extra" / "a" / "x.jpg")
    res = scan(root)
    skipped = dict(res.skipped)
    for p in (root / "notes.txt", root / "extra" / "a" / "x.jpg"):
        assert "outside train/ and val/" in skipped[str(p)]


@pytest.mark.parametrize("cache", [False, True])
def test_messy_folder_trains_and_every_file_is_accounted_for(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "messy"
    made = make_messy(root)
    for side in (80, 120):  # over PIL's (lowered) limit, and over twice it
        made[f"bomb{side}"] = (str(save(rgb((side, side)), root / "hünd" / f"b{side}.png")),
                               "decompression-bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    cfg = write_config(tmp_path, root, data={"batch_size": 16, "cache": cache},
                       finetune={"unfreeze": 1, "epochs": 1})
    res = invoke(["train", "--config", cfg, "-q"], 0)
    assert "'empty class'" in res.stderr  # the warning names the ignored folder
    run = tmp_path / "runs" / "t"
    splits, skipped = read_csv(run / "splits.csv"), read_csv(run / "skipped.csv")
    used, why = {r["path"] for r in splits}, {r["path"]: r["reason"] for r in skipped}
    assert len(used) == len(splits) and len(why) == len(skipped)  # nothing listed twice
    assert not used & set(why)
    assert every_entry(root) == used | set(why)  # every file in exactly one of the two
    for case, (path, expected) in made.items():
        assert (path in used) if expected == "used" else expected in why.get(path, ""), case
    assert {r["label"] for r in splits} == {"big cat", "hünd"}
    rows = read_csv(run / "metrics.csv")
    # a finetune stage starts with an epoch 0 row scoring the model it starts from
    assert [(r["stage"], r["epoch"]) for r in rows] == [("head", "1"), ("finetune", "0"),
                                                        ("finetune", "1")]
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)


def test_decompression_bomb_is_caught_when_probed_from_many_threads(tmp_path, monkeypatch):
    """The scan probes in threads: the limit must hold in every thread at once (a per-call
    warnings filter is process-wide state that another thread's exit can undo)."""
    from concurrent.futures import ThreadPoolExecutor

    from mobiletune.data.images import probe

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    bombs = [save(rgb((80, 80)), tmp_path / f"bomb{i}.png") for i in range(8)]
    fine = [save(rgb((40, 40)), tmp_path / f"ok{i}.png") for i in range(8)]
    paths = (bombs + fine) * 25
    with ThreadPoolExecutor(16) as pool:
        reasons = list(pool.map(probe, paths))
    for path, reason in zip(paths, reasons):
        if path in bombs:
            assert reason and "decompression-bomb" in reason, path
        else:
            assert reason is None, (path, reason)
