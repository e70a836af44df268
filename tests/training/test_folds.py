"""`train --folds K`: stratified folds over every image, each scored once; folds.csv/json."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from mobiletune.data.samples import Sample
from mobiletune.training.folds import assign_folds
from tests.conftest import make_folder, tiny_config
from tests.helpers_robust import invoke


def test_folds_are_stratified_and_balanced():
    samples = [Sample(f"/x/{c}{i}.jpg", c, "train") for c, n in ((0, 11), (1, 7), (2, 3))
               for i in range(n)]
    folds = assign_folds(samples, 4, seed=0)
    sizes = Counter(folds)
    assert set(sizes) == {0, 1, 2, 3} and max(sizes.values()) - min(sizes.values()) <= 1
    for c in (0, 1, 2):  # every class spread as evenly as it can be
        per = Counter(f for s, f in zip(samples, folds) if s.label == c)
        assert max(per.values()) - min(per.get(k, 0) for k in range(4)) <= 1
    assert assign_folds(samples, 4, seed=0) == folds != assign_folds(samples, 4, seed=1)


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_train_folds_covers_every_image_once(tmp_path, layout):
    data = make_folder(tmp_path / "data", per_class=6, layout=layout)
    cfg = tiny_config(tmp_path, data)
    invoke(["train", "--config", cfg, "--folds", "3", "-q"], 0)
    root = tmp_path / "runs" / "t"
    rows = list(csv.DictReader(open(root / "folds.csv")))
    assert list(rows[0]) == ["fold", "n_train", "n_val", "accuracy", "val_loss"]
    assert [r["fold"] for r in rows] == ["1", "2", "3"]
    assert all(int(r["n_train"]) + int(r["n_val"]) == 12 for r in rows)
    val = []
    for i in (1, 2, 3):
        split = list(csv.DictReader(open(root / f"fold-{i}" / "splits.csv")))
        assert len(split) == 12
        val += [r["path"] for r in split if r["split"] == "val"]
    every = sorted(str(p.absolute()) for p in data.rglob("*.jpg"))
    assert sorted(val) == every  # each image is a val image exactly once
    s = json.loads((root / "folds.json").read_text())
    assert s["k"] == 3 and len(s["accuracy_ci95"]) == 2
    assert s["accuracy_mean"] == pytest.approx(sum(float(r["accuracy"]) for r in rows) / 3)
    assert s["accuracy_ci95"][0] <= s["accuracy_pooled"] <= s["accuracy_ci95"][1]


def test_folds_refuses_too_few_images(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4)
    for f in list((data / "b").iterdir())[1:]:
        f.unlink()  # class b keeps one image: no fold could train on it
    res = invoke(["train", "--config", tiny_config(tmp_path, data), "--folds", "2"], 2)
    assert "--folds" in res.stderr
    assert not (tmp_path / "runs" / "t").exists()
    invoke(["train", "--config", tiny_config(tmp_path, data), "--folds", "1"], 2)
