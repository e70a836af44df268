"""Cache files prove their bytes: CRC-32 while writing and reading back, the size a .npy header
promises, and damaged files set aside (renamed into `set-aside/`, never deleted) with one line
for the run to report. Used by the pack store and the engine cache."""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import numpy as np

# What this process set aside in any cache (damaged packs and engines), one line each, for
# the run to report; drained by `take_notices`.
_NOTICES: list[str] = []


def take_notices() -> list[str]:
    """The set-aside lines since the last call."""
    out = _NOTICES[:]
    del _NOTICES[:len(out)]
    return out


def set_aside(files: list[Path], what: str, why: str) -> None:
    """Move damaged cache files into `set-aside/` beside them (never deleted: a user may
    want to look), and say so once."""
    where = files[0].parent / "set-aside"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for f in files:
        try:
            where.mkdir(exist_ok=True)
            os.replace(f, where / f"{f.name}.{stamp}")
        except OSError:  # gone already, or a read-only cache: it is not served either way
            pass
    _NOTICES.append(f"cache: {what} {why}; set aside in {where}, recomputing what it held")


class Summing:
    """A file wrapper that counts and CRCs what is written through it."""

    def __init__(self, f) -> None:
        self.f, self.crc, self.size = f, 0, 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += memoryview(data).nbytes
        return self.f.write(data)


def file_crc(path: Path, chunk: int = 16 << 20) -> tuple[int, int]:
    """(size, CRC-32) of a file, read in large sequential chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc, size = zlib.crc32(block, crc), size + len(block)
    return size, crc


def npy_size(path: Path) -> int | None:
    """The size a well-formed .npy with this header must have (None: no valid header)."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) \
                else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
            return f.tell() + int(np.prod(shape)) * dtype.itemsize
    except Exception:  # zeroed, truncated in the header, or not an .npy at all
        return None
