"""Whole-or-nothing file writes: every file goes to a temporary name and is renamed into place,
so an interrupt or a full disk never leaves half a file where a good one was."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from mobiletune.errors import CheckpointError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file whole or not at all."""
    # surrogateescape: a file name that is not valid UTF-8 is written back as its own bytes
    return atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))


def write_csv(path: str | os.PathLike, header: list[str], rows: Iterable[Iterable]) -> Path:
    """Write a CSV file whole or not at all."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def new_run_dir(output: str | os.PathLike, name: str) -> Path:
    """Create and return `<output>/<name>`, or `<name>-2`, `-3`, ... if taken. Never reuses."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(1, 100000):
            candidate = out / (name if i == 1 else f"{name}-{i}")
            try:
                candidate.mkdir()  # atomic: two runs started together never share a folder
                return candidate
            except FileExistsError:  # a run, or anything else the user put there: keep it
                continue
    except OSError as e:  # `output` is a file, read-only, or on a full disk
        raise CheckpointError(f"Cannot create a run directory in {out}: {e.strerror or e}. "
                              "Choose another folder with --out (or `output:`).") from None
    raise CheckpointError(f"No free run name for {name!r} in {out}.")


def update_latest(run_dir: Path) -> None:
    """Point `<output>/latest` at `run_dir` (a relative symlink, swapped atomically)."""
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        return  # a real folder or file named `latest` is the user's: leave it alone
    tmp = run_dir.parent / f".latest.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)  # filesystems without symlinks: `latest` is a convenience


def find_run(arg: str | os.PathLike | None, default_output: str = "runs") -> Path:
    """A run directory from an argument (run dir or file inside one), or `runs/latest`."""
    p = Path(arg) if arg is not None else Path(default_output) / "latest"
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        hint = "Train first (`mobiletune train --config FILE.yaml`) or name a run with --checkpoint RUN_DIR (--from for finetune; either name works)."
        raise CheckpointError(f"Run directory {p} not found. {hint}")
    return p.resolve()
