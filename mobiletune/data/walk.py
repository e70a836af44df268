"""The one folder walker: scan, check-data and `evaluate --data` see the same files.

Every file under a data root ends up as a candidate image of a class or in `skipped` with a
reason. Symlinks are followed, never around a loop or twice; hidden folders and files outside
class folders are accounted for, never used. Walking is sequential and cheap; probing (a
decode per file, images.probe) runs in threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mobiletune.data.images import IMAGE_EXTENSIONS, probe


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


def images_under(folder: str | os.PathLike) -> list[str]:
    """Image files (by extension, hidden ones left out) anywhere under `folder`, sorted, by
    the same walk as a data root: symlinks followed, never around a loop or twice."""
    found = _walk(Path(folder), [], set(), [])
    return [str(f) for f in found
            if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")]


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


def find_images(root: Path, on_progress: Callable[[int, int], None] | None = None
                ) -> tuple[bool, dict[str, list[str]], dict[str, list[str]], list[tuple[str, str]]]:
    """(has train/ and val/ folders, train class -> usable paths, val class -> usable paths,
    skipped) for a data root; every file probed in parallel, in folder order."""
    skipped: list[tuple[str, str]] = []
    has_split = (root / "train").is_dir()
    folders = [root / "train", root / "val"] if has_split else [root]
    scanned = [os.path.realpath(f) for f in folders]
    seen: set[str] = set()
    if has_split:
        _account_outside(root, scanned, seen, skipped)
    steps = _class_steps(folders[0], scanned, seen)
    with_val = has_split and folders[1].is_dir()
    val_steps = _class_steps(folders[1], scanned, seen) if with_val else []
    probed = _probe_all(steps + val_steps, on_progress)
    train = _replay(steps, probed, skipped)
    val = _replay(val_steps, probed, skipped) if with_val else {}
    return has_split, train, val, skipped
