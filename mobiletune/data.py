"""The data folder: the one walker, scanning, the train/val split, splits.csv, decoding.

Every file under the data root ends up either as a Sample (in splits.csv) or in `skipped`
with a reason (skipped.csv), so nothing a user put there silently disappears.
"""

from __future__ import annotations

import csv
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, ImageOps

from mobiletune.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Sample:
    """One usable image: absolute path, class index, and `train` or `val`."""

    path: str
    label: int
    split: str


@dataclass
class ScanResult:
    """What a data folder holds: class names, usable samples, skipped files, warnings."""

    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def of(self, split: str) -> list[Sample]:
        return [s for s in self.samples if s.split == split]


def load_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode any image PIL reads into upright RGB.

    `min_side` lets JPEGs decode at a reduced scale (PIL draft: the DCT does the resizing),
    never below what the target needs. EXIF orientation is applied; 16-bit, CMYK, palette
    and alpha images become plain 8-bit RGB (alpha over white).
    """
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = min(w, h) / min_side
            if scale >= 2:
                img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np  # 16-bit and float greyscale: scale to the 8-bit range

        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((arr.clip(0, top) * (255.0 / top)).astype("uint8"), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def probe(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None when it decodes fully."""
    if path.name.startswith("."):
        return "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image extension ({path.suffix or 'none'})"
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            # The limit is checked here, not by turning PIL's warning into an error: the
            # scan probes in threads, and warnings.catch_warnings is process-wide state that
            # one thread's exit restores under another (seen on a 16-core machine).
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{img.width * img.height} pixels")
            img.draft("RGB", (32, 32))  # a full but cheap decode: JPEG at 1/8 scale
            img.load()
            # the rest of load_image: a file that passes here also loads in training
            _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError:
        return f"larger than PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)"
    except OSError as e:
        return f"unreadable: {str(e).splitlines()[0][:120] or type(e).__name__}"
    except Exception as e:  # PIL raises assorted errors on hostile files
        return f"unreadable: {type(e).__name__}: {str(e)[:120]}"
    return None


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _dir_problem(d: Path, here: str, scanned: list[str], seen: set[str]) -> str | None:
    """Why folder `d` (inside real folder `here`) must not be entered: a symlink that leads
    back up (a loop), or to a folder that is scanned anyway (its images would count twice)."""
    real = os.path.realpath(d)
    if _within(here, real) or any(_within(r, real) for r in scanned):
        return f"symlink loop: leads back to {real}"
    if real in seen:
        return f"links to {real}, which is already scanned"
    if d.is_symlink() and any(_within(real, r) for r in scanned):
        return f"links to {real}, which is scanned on its own"
    return None


def _walk(folder: Path, scanned: list[str], seen: set[str],
          skipped: list[tuple[str, str]], hidden: str | None = None) -> list[Path]:
    """Every file under `folder` (symlinks followed, never around a loop or twice); what
    cannot be used, and every file under a hidden folder, goes to `skipped` with a reason."""
    out: list[Path] = []
    stack = [(folder, hidden)]
    seen.add(os.path.realpath(folder))
    while stack:
        d, hid = stack.pop()
        try:
            entries = sorted(d.iterdir(), reverse=True)
        except OSError as e:
            skipped.append((str(d.absolute()), f"unreadable folder: {e.strerror or e}"))
            continue
        for p in entries:
            if p.is_symlink() and not p.exists():
                skipped.append((str(p.absolute()), "broken or looping symbolic link"))
            elif p.is_dir():
                why = _dir_problem(p, os.path.realpath(d), scanned, seen)
                if why:
                    skipped.append((str(p.absolute()), why))
                else:
                    seen.add(os.path.realpath(p))
                    stack.append((p, hid or (p.name if p.name.startswith(".") else None)))
            elif hid:
                skipped.append((str(p.absolute()), f"inside hidden folder {hid}"))
            else:
                out.append(p)
    return sorted(out)


def _check(f: Path) -> str | None:
    return probe(f) if f.is_file() else "not a regular file"


# A scan is a list of steps in folder order: ("skip", (path, why)) or ("class", name, files).
# Walking is cheap and sequential; probing (a decode per file) then runs in parallel, and
# replaying the steps gives the same samples and skipped.csv, in the same order, as a loop.
Step = tuple


def _class_steps(folder: Path, scanned: list[str], seen: set[str]) -> list[Step]:
    """The class folders under `folder` and their files, still unprobed."""
    steps: list[Step] = []
    for p in sorted(folder.iterdir()):
        local: list[tuple[str, str]] = []
        if not p.is_dir():
            why = "broken or looping symbolic link" if p.is_symlink() and not p.exists() \
                else "not inside a class folder"
            steps.append(("skip", (str(p.absolute()), why)))
            continue
        why = _dir_problem(p, os.path.realpath(folder), scanned, seen)
        if why or p.name.startswith("."):
            if why:
                local.append((str(p.absolute()), why))
            else:  # .git, .ipynb_checkpoints: not a class, but its files are accounted for
                _walk(p, scanned, seen, local, hidden=p.name)
            steps += [("skip", s) for s in local]
            continue
        files = _walk(p, scanned, seen, local)
        steps += [("skip", s) for s in local] + [("class", p.name, files)]
    return steps


def _probe_all(steps: list[Step], on_progress: Callable[[int, int], None] | None,
               threads: int | None = None) -> dict[Path, str | None]:
    """Probe every file of the steps in parallel (PIL decodes without the GIL)."""
    files = [f for s in steps if s[0] == "class" for f in s[2]]
    threads = threads or min(16, 2 * (os.cpu_count() or 1))
    out: dict[Path, str | None] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, (f, why) in enumerate(zip(files, pool.map(_check, files, chunksize=16)), 1):
            out[f] = why
            if on_progress and (i % 256 == 0 or i == len(files)):
                on_progress(i, len(files))
    return out


def probe_files(files: list[Path], on_progress: Callable[[int, int], None] | None = None
                ) -> dict[Path, str | None]:
    """Why each file cannot be used (None: it can), probed in parallel."""
    return _probe_all([("class", "", files)], on_progress)


def _replay(steps: list[Step], probed: dict[Path, str | None],
            skipped: list[tuple[str, str]]) -> dict[str, list[str]]:
    """class name -> usable absolute paths; unusable files go to `skipped`."""
    found: dict[str, list[str]] = {}
    for step in steps:
        if step[0] == "skip":
            skipped.append(step[1])
            continue
        good = []
        for f in step[2]:
            if probed[f]:
                skipped.append((str(f.absolute()), probed[f]))
            else:
                good.append(str(f.absolute()))
        found[step[1]] = good
    return found


@dataclass
class Listing:
    """Every file under a data root, by split and class, before any decoding."""

    layout: str  # "train/val" (root/train/<class>, root/val/<class>) or "flat" (root/<class>)
    files: dict[str, dict[str, list[str]]]  # "train" | "val" | "all" -> class -> paths
    skipped: list[tuple[str, str]]


def list_files(root: str | os.PathLike) -> Listing:
    """What `scan` walks (the same walker: check-data and evaluate use it), without decoding:
    symlinks followed, never around a loop or twice; files outside class folders and in
    hidden folders are `skipped`."""
    root = Path(root)
    has_split = (root / "train").is_dir()
    folders = {"train": root / "train", "val": root / "val"} if has_split else {"all": root}
    scanned = [os.path.realpath(f) for f in folders.values()]
    seen: set[str] = set()
    skipped: list[tuple[str, str]] = []
    if has_split:
        _account_outside(root, scanned, seen, skipped)
    files = {}
    for key, folder in folders.items():
        if folder.is_dir():
            steps = _class_steps(folder, scanned, seen)
            skipped += [s[1] for s in steps if s[0] == "skip"]
            files[key] = {s[1]: [str(f.absolute()) for f in s[2]] for s in steps
                          if s[0] == "class"}
    return Listing("train/val" if has_split else "flat", files, skipped)


def _account_outside(root: Path, scanned: list[str], seen: set[str],
                     skipped: list[tuple[str, str]]) -> None:
    """With train/ and val/ folders, anything else under the root is listed, never used."""
    for p in sorted(root.iterdir()):
        if p.name in ("train", "val"):
            continue
        if p.is_dir() and not _dir_problem(p, os.path.realpath(root), scanned, seen):
            found = _walk(p, scanned, seen, skipped)
            skipped += [(str(f.absolute()), "outside train/ and val/") for f in found]
        else:
            skipped.append((str(p.absolute()), "outside train/ and val/"))


def split_paths(paths: list[str], fraction: float, rng: random.Random
                ) -> tuple[list[str], list[str]]:
    """(train, val) of one class's paths: `fraction` of them to val (at least 1 when there
    are 2 or more), order drawn from `rng`."""
    shuffled = sorted(paths)
    rng.shuffle(shuffled)
    n_val = round(len(shuffled) * fraction) if len(shuffled) > 1 else 0
    n_val = min(max(n_val, 1 if len(shuffled) > 1 else 0), len(shuffled) - 1)
    return shuffled[n_val:], shuffled[:n_val]


def scan(root: str | os.PathLike, val_split: float = 0.2, seed: int = 0,
         on_progress: Callable[[int, int], None] | None = None,
         labels: str | os.PathLike | None = None) -> ScanResult:
    """Scan `root/train/<class>` + `root/val/<class>`, or `root/<class>` split by `val_split`
    (stratified per class, reproducible for a seed). Files are probed in parallel;
    `on_progress(done, total)` follows the probing. With `labels`, the images a labels CSV
    lists instead (`mobiletune.labels`)."""
    if labels:
        from mobiletune.labels import scan_labels

        return scan_labels(labels, val_split, seed, on_progress)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {root} not found. Put your images in {root}/<class>/ "
                        f"(one sub-folder per class) or in {root}/train/<class>/ and "
                        f"{root}/val/<class>/, or point --data (data.root) at the folder that "
                        "holds them; `mobiletune check-data DIR` shows what a folder holds.")
    skipped: list[tuple[str, str]] = []
    warn: list[str] = []
    has_split = (root / "train").is_dir()
    folders = [root / "train", root / "val"] if has_split else [root]
    scanned = [os.path.realpath(f) for f in folders]
    seen: set[str] = set()
    if has_split:
        _account_outside(root, scanned, seen, skipped)
    steps = _class_steps(folders[0], scanned, seen)
    val_steps = _class_steps(folders[1], scanned, seen) if has_split and folders[1].is_dir() \
        else []
    probed = _probe_all(steps + val_steps, on_progress)
    train = _replay(steps, probed, skipped)
    val = _replay(val_steps, probed, skipped) if has_split and folders[1].is_dir() else {}
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
