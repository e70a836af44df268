"""`check-data`: what a data folder holds and what is wrong with it, before training on it.

Counts per class and split, unreadable files, tiny images, class imbalance, and duplicate
images that would leak between train and val. Duplicates are found twice over: byte-equal
files (SHA-1) and perceptual near-copies (a 64-bit DCT pHash that survives resizing and
JPEG re-encoding; distinct photos sit ~32 bits apart, copies within a few bits).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from mobiletune.data.images import IMAGE_EXTENSIONS
from mobiletune.data.walk import list_files
from mobiletune.errors import DataError

_N = 32  # pHash works on a 32x32 greyscale thumbnail and keeps the 8x8 lowest frequencies
_K = np.arange(_N)
_DCT = np.cos(np.pi * (2 * _K[None, :] + 1) * _K[:, None] / (2 * _N))  # DCT-II basis rows
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class ImageInfo:
    """One image file: where it sits, its size, and its hashes (None when unreadable)."""

    path: str
    cls: str
    split: str
    width: int = 0
    height: int = 0
    sha1: str = ""
    phash: bytes = b""
    error: str | None = None


@dataclass
class Duplicate:
    """Two files showing the same picture; `kind` says why that matters."""

    kind: str  # leak (train and val) | label_conflict (two classes) | duplicate (flat layout)
    match: str  # exact (same bytes) | near (perceptual hash within the threshold)
    distance: int
    a: str
    b: str
    a_where: str  # "split/class"
    b_where: str


@dataclass
class CheckReport:
    """Everything `check-data` found; `problems` is empty when the folder is clean."""

    root: str
    layout: str  # train/val | flat
    classes: list[str]
    counts: dict[str, dict[str, int]]
    ignored: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    tiny: list[tuple[str, int, int]] = field(default_factory=list)
    imbalance: list[dict[str, Any]] = field(default_factory=list)
    layout_issues: list[str] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """One line per kind of problem found (empty: clean)."""
        out = list(self.layout_issues)
        for items, what in ((self.unreadable, "unreadable image file(s)"),
                            (self.tiny, f"image(s) smaller than {self.settings.get('min_size')} px"),
                            (self.imbalance, "imbalanced split(s)"),
                            ([d for d in self.duplicates if d.kind == "leak"],
                             "train/val duplicate pair(s) (leakage)"),
                            ([d for d in self.duplicates if d.kind == "label_conflict"],
                             "duplicate pair(s) filed under different classes"),
                            ([d for d in self.duplicates if d.kind == "duplicate"],
                             "duplicate pair(s) that a random train/val split would leak")):
            if items:
                out.append(f"{len(items)} {what}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`--json`)."""
        d = asdict(self)
        d["ignored"] = [{"path": p, "reason": r} for p, r in self.ignored]
        d["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        d["tiny"] = [{"path": p, "width": w, "height": h} for p, w, h in self.tiny]
        d["problems"] = self.problems
        d["clean"] = not self.problems
        return d


def phash(img: Image.Image) -> bytes:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT frequencies against their median."""
    grey = np.asarray(img.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
    # the DC term (overall brightness) is left out of the median so it cannot skew the split
    return np.packbits(low > np.median(low[1:])).tobytes()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances [N, M] between two arrays of packed hashes [N, 8] and [M, 8] (uint8)."""
    return _POPCOUNT[a[:, None, :] ^ b[None, :, :]].sum(axis=2, dtype=np.int64)


def _inspect(info: ImageInfo) -> ImageInfo:
    """Decode once: size, SHA-1 of the bytes, pHash; any failure becomes `error`."""
    try:
        data = Path(info.path).read_bytes()
        if not data:
            raise OSError("empty file")
        info.sha1 = hashlib.sha1(data).hexdigest()
        with Image.open(info.path) as img:
            w, h = img.size
            # EXIF orientations 5-8 turn the picture a quarter: the network sees it as h x w
            info.width, info.height = (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
            if img.format == "JPEG":
                img.draft("L", (2 * _N, 2 * _N))  # decode at reduced scale: 5-10x faster
            info.phash = phash(ImageOps.exif_transpose(img))
    except Exception as e:  # PIL raises assorted errors on broken or hostile files
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        info.error = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return info


def _collect(root: Path) -> tuple[str, list[ImageInfo], list[tuple[str, str]], dict]:
    """(layout, candidate images, ignored files, {split: class names}) of a data folder,
    found by the same walker as training (`walk.list_files`), so both see the same files."""
    listing = list_files(root)
    infos: list[ImageInfo] = []
    ignored = list(listing.skipped)
    classes: dict[str, list[str]] = {}
    for split, per_class in listing.files.items():
        classes[split] = list(per_class)
        for cls, paths in per_class.items():
            for f in paths:
                if os.path.basename(f).startswith(".") or \
                        os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
                    ignored.append((f, "not an image file"))
                else:
                    infos.append(ImageInfo(f, cls, split))
    return listing.layout, infos, ignored, classes


def _collect_csv(path: Path) -> tuple[str, list[ImageInfo], list[tuple[str, str]], dict]:
    """`_collect` for a labels CSV (`data.labels`): its usable rows, split as the file says
    when every row says (else all together, as a flat folder); its bad rows are ignored."""
    from mobiletune.data.labels import read_labels

    listed = read_labels(path)
    split = all(s for _, _, s in listed.rows) and bool(listed.rows)
    infos = [ImageInfo(p, label, s if split else "all") for p, label, s in listed.rows]
    classes: dict[str, list[str]] = {}
    for i in infos:
        classes.setdefault(i.split, [])
        if i.cls not in classes[i.split]:
            classes[i.split].append(i.cls)
    return ("train/val" if split else "flat"), infos, list(listed.skipped), \
        {k: sorted(v) for k, v in classes.items()}


def _layout_issues(counts: dict[str, dict[str, int]]) -> list[str]:
    """Classes with no readable images, or present in only one of train/val."""
    issues = [f"class folder {c if split == 'all' else split + '/' + c} holds no readable images"
              for split, per in counts.items() for c, n in per.items() if n == 0]
    if set(counts) == {"train", "val"}:
        train, val = set(counts["train"]), set(counts["val"])
        issues += [f"class '{c}' is in val/ but missing from train/" for c in sorted(val - train)]
        issues += [f"class '{c}' is in train/ but missing from val/" for c in sorted(train - val)]
    usable = {c for per in counts.values() for c, n in per.items() if n}
    if len(usable) < 2:  # what `train` refuses: say it here, where errors send the user
        issues.append(f"{len(usable)} class(es) with readable images "
                      f"({', '.join(sorted(usable)) or 'none'}); a classifier needs at least 2")
    return issues


def _imbalance(counts: dict[str, dict[str, int]], max_ratio: float) -> list[dict[str, Any]]:
    out = []
    for split, per_class in counts.items():
        if len(per_class) < 2:
            continue
        most = max(per_class, key=per_class.get)
        least = min(per_class, key=per_class.get)
        hi, lo = per_class[most], per_class[least]
        ratio = hi / lo if lo else float("inf")
        if ratio > max_ratio:
            out.append({"split": split, "largest": most, "largest_count": hi, "smallest": least,
                        "smallest_count": lo, "ratio": ratio if lo else None})
    return out


def find_duplicates(infos: list[ImageInfo], max_distance: int, flat: bool,
                    block: int = 512) -> list[Duplicate]:
    """Pairs of readable images that are the same picture and sit where that causes harm:
    across train/val, across classes, or anywhere in a flat folder (a random split leaks)."""
    good = [i for i in infos if i.error is None]
    if len(good) < 2:
        return []
    hashes = np.frombuffer(b"".join(i.phash for i in good), dtype=np.uint8).reshape(-1, 8)
    out = []
    for start in range(0, len(good), block):  # blocks keep memory at block x N, not N x N
        dist = hamming(hashes[start:start + block], hashes)
        for r, c in zip(*np.nonzero(dist <= max_distance)):
            i, j = start + int(r), int(c)
            if j <= i:
                continue
            a, b = good[i], good[j]
            kind = ("leak" if a.split != b.split else "label_conflict" if a.cls != b.cls
                    else "duplicate" if flat else None)
            if kind is None:
                continue  # the same picture twice in one split and class does no harm
            if a.split == "val" and b.split == "train":
                a, b = b, a  # name the training copy first
            match = "exact" if a.sha1 == b.sha1 else "near"
            out.append(Duplicate(kind, match, int(dist[r, c]), a.path, b.path,
                                 f"{a.split}/{a.cls}", f"{b.split}/{b.cls}"))
    return sorted(out, key=lambda d: (d.kind, d.distance, d.a, d.b))


def check_data(root: str | os.PathLike, *, min_size: int = 64, max_imbalance: float = 3.0,
               max_distance: int = 6, workers: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Inspect a data folder (root/train/<class> + root/val/<class>, or root/<class>), or
    the images a labels CSV lists.

    Raises DataError when `root` is missing or holds no class folders.
    """
    root = Path(root).expanduser()
    if root.is_file() and root.suffix.lower() == ".csv":
        layout, infos, ignored, class_dirs = _collect_csv(root)
    elif not root.is_dir():
        raise DataError(f"Data folder {root} does not exist (or is not a folder). Pass the folder "
                        "that holds train/<class>/ and val/<class>/, or one folder per class.")
    else:
        layout, infos, ignored, class_dirs = _collect(root)
    if not infos:
        raise DataError(f"{root} holds no images in class folders. Expected "
                        f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg, or "
                        f"{root}/<class>/*.jpg (extensions: {', '.join(IMAGE_EXTENSIONS)}).")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without holding the GIL
        for n, _ in enumerate(pool.map(_inspect, infos), 1):
            if progress:
                progress(n, len(infos))
    readable = [i for i in infos if i.error is None]
    counts = {split: dict.fromkeys(names, 0) for split, names in class_dirs.items()}
    for i in readable:
        counts[i.split][i.cls] += 1
    return CheckReport(
        root=str(root.absolute()), layout=layout, classes=sorted({i.cls for i in infos}),
        counts=counts, ignored=ignored, layout_issues=_layout_issues(counts),
        unreadable=[(i.path, i.error or "") for i in infos if i.error is not None],
        tiny=[(i.path, i.width, i.height) for i in readable if min(i.width, i.height) < min_size],
        imbalance=_imbalance(counts, max_imbalance),
        duplicates=find_duplicates(infos, max_distance, flat=layout == "flat"),
        settings={"min_size": min_size, "max_imbalance": max_imbalance,
                  "max_distance": max_distance})
