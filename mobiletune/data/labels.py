"""Labels from a CSV file (`data.labels: labels.csv`) instead of class folders.

Columns `path,label` and an optional `split` (`train` or `val`); paths are relative to the
CSV's folder (or absolute). The result is the same `ScanResult` a folder scan gives, so
splits.csv, the cache, resume and finetune work unchanged. Every row that cannot be used
(missing or unreadable file, empty label, unknown split, a path listed twice) goes to
`skipped` with its reason, and so to the run's skipped.csv.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mobiletune.data.samples import Sample, ScanResult, split_paths
from mobiletune.data.walk import probe_files
from mobiletune.errors import DataError

COLUMNS = ("path", "label", "split")
SPLITS = ("train", "val")


@dataclass
class LabelRows:
    """The usable rows of a labels file (absolute path, label, split or None) and the rest."""

    rows: list[tuple[str, str, str | None]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _header(names: list[str] | None, path: Path) -> None:
    names = [n.strip().lower() for n in names or []]
    missing = [c for c in ("path", "label") if c not in names]
    unknown = [n for n in names if n not in COLUMNS]
    if missing or unknown:
        got = ",".join(names) or "nothing"
        raise DataError(f"{path} must start with the header row path,label (or path,label,split); "
                        f"it has {got}" + (f" (unknown column(s): {', '.join(unknown)})"
                                           if unknown else "") + ".")


def read_labels(path: str | os.PathLike) -> LabelRows:
    """Parse a labels CSV; rows that cannot be used are returned in `skipped` with why
    (the files themselves are not opened here)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Labels file {path} not found. data.labels names a CSV with the "
                        "columns path,label[,split], paths relative to its folder.")
    base, out, seen = path.parent, LabelRows(), set()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            _header(reader.fieldnames, path)
            reader.fieldnames = [n.strip().lower() for n in reader.fieldnames]
            for n, row in enumerate(reader, start=2):  # line 1 is the header
                _add_row(out, row, n, base, seen)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a UTF-8 CSV file ({type(e).__name__}: {e}).") from None
    return out


def _add_row(out: LabelRows, row: dict, n: int, base: Path, seen: set[str]) -> None:
    raw = (row.get("path") or "").strip()
    label = (row.get("label") or "").strip()
    split = (row.get("split") or "").strip().lower() or None
    # normalized ("photos/../x.jpg" is x.jpg), symlinks kept: the path as the user named it
    where = os.path.normpath((base / raw).absolute()) if raw else f"line {n}"
    why = ("empty path" if not raw else "empty label" if not label
           else f"unknown split {split!r} (use train or val, or leave it empty)"
           if split not in (None, *SPLITS) else "listed twice" if where in seen else None)
    if why is None and not os.path.isfile(where):
        why = "file not found" if not os.path.exists(where) else "not a regular file"
    if why:
        out.skipped.append((where, why))
        return
    seen.add(where)
    out.rows.append((where, label, split))


def scan_labels(path: str | os.PathLike, val_split: float = 0.2, seed: int = 0,
                on_progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """The images a labels CSV lists, as `data.scan` would give them: classes sorted, each
    file probed, rows without a split divided per class by `val_split` (seeded)."""
    listed = read_labels(path)
    probed = probe_files([Path(r[0]) for r in listed.rows], on_progress)
    problems = [probed[Path(r[0])] for r in listed.rows]
    skipped = list(listed.skipped)
    by_class: dict[str, dict[str | None, list[str]]] = {}
    for (p, label, split), why in zip(listed.rows, problems):
        if why:
            skipped.append((p, why))
        else:
            by_class.setdefault(label, {}).setdefault(split, []).append(p)
    classes = sorted(by_class)
    if len(classes) < 2:
        first = f"; {len(skipped)} row(s) unusable, first: {skipped[0][0]}: {skipped[0][1]}" \
            if skipped else ""
        raise DataError(f"{path} lists {len(classes)} class(es) with usable images "
                        f"({', '.join(classes) or 'none'}); a classifier needs at least 2{first}.")
    samples, rng = [], random.Random(seed)
    for i, c in enumerate(classes):
        given = by_class[c]
        tr, va = split_paths(given.get(None, []), val_split, rng)
        samples += [Sample(p, i, "train") for p in given.get("train", []) + tr]
        samples += [Sample(p, i, "val") for p in given.get("val", []) + va]
    res = ScanResult(classes, samples, skipped)
    for c in classes:
        if not any(s.split == "train" and s.label == classes.index(c) for s in samples):
            raise DataError(f"Class {c!r} in {path} has no training images; add rows for it "
                            "or leave their split empty so some go to training.")
    if not res.of("val"):
        raise DataError(f"{path} leaves no images for validation; mark some rows split=val "
                        "or leave the split empty.")
    return res
