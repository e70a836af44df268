"""The data folder as samples: scanning it, the train/val split, splits.csv, and a dataset
that decodes on demand.

Every file under the data root ends up either as a Sample (in splits.csv) or in `skipped`
with a reason (skipped.csv), so nothing a user put there silently disappears. The walk itself
is mobiletune/walk.py; decoding is mobiletune/images.py.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Callable

from mobiletune.data.images import load_image
from mobiletune.data.samples import Sample, ScanResult, split_paths
from mobiletune.data.walk import find_images
from mobiletune.errors import DataError


def scan(root: str | os.PathLike, val_split: float = 0.2, seed: int = 0,
         on_progress: Callable[[int, int], None] | None = None,
         labels: str | os.PathLike | None = None) -> ScanResult:
    """Scan `root/train/<class>` + `root/val/<class>`, or `root/<class>` split by `val_split`
    (stratified per class, reproducible for a seed). Files are probed in parallel;
    `on_progress(done, total)` follows the probing. With `labels`, the images a labels CSV
    lists instead (`mobiletune.labels`)."""
    if labels:
        from mobiletune.data.labels import scan_labels

        return scan_labels(labels, val_split, seed, on_progress)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {root} not found. Put your images in {root}/<class>/ "
                        f"(one sub-folder per class) or in {root}/train/<class>/ and "
                        f"{root}/val/<class>/, or point --data (data.root) at the folder that "
                        "holds them; `mobiletune check-data DIR` shows what a folder holds.")
    warn: list[str] = []
    has_split, train, val, skipped = find_images(root, on_progress)
    for name in [c for c, paths in train.items() if not paths]:
        warn.append(f"class folder '{name}' holds no usable images and is ignored")
        del train[name]
    classes = sorted(train)
    stray = sorted(c for c, paths in val.items() if paths and c not in train)
    if stray:
        raise DataError(f"Class(es) {', '.join(stray)} in {root / 'val'} have no training images "
                        f"in {root / 'train'}; add images or remove those folders.")
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} usable class folder(s) ({', '.join(classes) or 'none'}); "
                        "a classifier needs at least 2, each a sub-folder of images.")
    samples: list[Sample] = []
    rng = random.Random(seed)
    for i, c in enumerate(classes):
        if has_split and val:
            tr, va = train[c], val.get(c, [])
        else:
            tr, va = split_paths(train[c], val_split, rng)
        samples += [Sample(p, i, "train") for p in tr] + [Sample(p, i, "val") for p in va]
    if not any(s.split == "val" for s in samples):
        raise DataError(f"{root} leaves no images for validation; add a val/ folder or more images.")
    return ScanResult(classes, samples, skipped, warn)


def read_splits(path: str | os.PathLike, classes: list[str],
                need: tuple[str, ...] = ("train", "val")) -> ScanResult:
    """The split a run used, from its splits.csv (the one reader: resume, finetune, evaluate
    and export use it), so that they see exactly the run's images whatever was added to the
    folder since (a fresh scan would move new images into both splits and leak old val
    images into train). Images that no longer exist are left out, listed in `skipped`;
    each split in `need` must keep at least one."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"Cannot read {path} ({e.strerror or e}).") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a path,label,split table ({e}); start a new run "
                        "instead, or pass the data folder with --data.") from None
    samples, gone = [], []
    for r in rows:
        if r.get("label") not in index or r.get("split") not in ("train", "val") or not r.get("path"):
            raise DataError(f"{path} is damaged or from another run (row {dict(r)}; the model "
                            f"knows {', '.join(classes)}); start a new run, or pass the data "
                            "folder with --data.")
        if os.path.isfile(r["path"]):
            samples.append(Sample(r["path"], index[r["label"]], r["split"]))
        else:
            gone.append((r["path"], "listed in splits.csv, no longer exists"))
    res = ScanResult(list(classes), samples, skipped=gone)
    if gone:
        res.warnings.append(f"{len(gone)} image(s) listed in {path} no longer exist and are "
                            f"left out (first: {gone[0][0]})")
    empty = [s for s in need if not res.of(s)]
    if empty:
        raise DataError(f"{path} leaves no {' and no '.join(empty)} images that still exist.")
    return res


class ImageDataset:
    """(tensor, label) pairs decoded on demand; a map-style torch Dataset."""

    def __init__(self, samples: list[Sample], transform, min_side: int | None = None) -> None:
        self.samples, self.transform, self.min_side = samples, transform, min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            img = load_image(s.path, self.min_side)
        except Exception as e:
            raise DataError(f"{s.path} could not be decoded during training ({e}); "
                            "it changed since the scan: remove or replace it.") from None
        return self.transform(img), s.label
