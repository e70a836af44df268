"""Run directories: a new one per run, `latest`, and finding a run from a user's argument.

Nothing here ever overwrites what a user made: a new run takes the first free name
(`cats`, `cats-2`, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

from mobiletune.errors import CheckpointError


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
        hint = "Train first (`mobiletune train --config FILE.yaml`) or pass --from/--checkpoint."
        raise CheckpointError(f"Run directory {p} not found. {hint}")
    return p.resolve()
