"""Packed cache entries: many entries per file, so an epoch costs bytes read, not files opened.

An entry is a float16 array [rows, *feature] (rows = K views for a training image, 1 for an
eval view) under a string key. Entries of one shape are appended to a pack: `<name>.npy`
holds them as one contiguous [n, rows, *feature] array (read memory-mapped, in slices) and
`<name>.json` lists their keys. A pack is written whole or not at all (the .npy first, then
its index, each renamed into place), so a killed fill leaves no half entry, and concurrent
writers (ranks of one run, or two runs) never touch the same file: each writes its own packs.
An entry present in two packs (two runs filled it at once) is the same numbers; either serves.

A pack proves its bytes: its index records the .npy's size and CRC-32, computed as it is
written, and a pack is checked once per process before any of its entries is served. One
that fails (zeroed, truncated, a garbage or orphaned index) is set aside into `set-aside/`,
renamed, never deleted; its entries count as missing and are computed again. Packs written
before checksums existed are checked by their .npy header and size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import secrets
import time
from pathlib import Path

import numpy as np

from mobiletune.fileio import atomic_write, write_text
from mobiletune.frozen.integrity import Summing, file_crc, npy_size, set_aside

# A fill flushes a pack every this many bytes: what an interrupt can lose, and what a
# filling process holds in memory beyond its batch.
PACK_BYTES = 64 << 20
# A pack's .npy without its index for this long is an orphan, not a pack being written.
ORPHAN_AFTER_S = 120


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


Job = tuple[str, str]  # (image path, "train" | "eval"): what one cache entry is made from


def release_free_memory() -> None:
    """Give memory that decoder threads freed back to the OS. glibc keeps it in per-thread
    arenas, fragmented: without this a fill's peak RSS grew ~250 KB per image (1k images at
    224 px: 1.46 GB, flat at 1.24 GB with it), so it grew with the folder, not the batch."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class PackStore:
    """The packs of one cache folder: which keys exist, adding entries, reading them back."""

    def __init__(self, folder: Path, pack_bytes: int = PACK_BYTES) -> None:
        self.dir = Path(folder) / "packs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pack_bytes = pack_bytes
        self._buffer: list[tuple[str, np.ndarray]] = []
        self._buffered = 0
        self._known: dict[str, list[str]] = {}  # pack name -> keys (packs never change)
        self._mmaps: dict[str, np.ndarray] = {}
        self._orphans_checked = False  # once per store: index() runs on every has/entries

    # -- what exists --------------------------------------------------------------------
    def index(self) -> dict[str, tuple[str, int]]:
        """key -> (pack name, row) over every complete pack in the folder that proves its
        bytes (checked once per process; a failing pack is set aside)."""
        for meta in sorted(self.dir.glob("*.json")):
            name = meta.stem
            if name not in self._known:
                keys = self._verified_keys(name, meta)
                if keys is not None:
                    self._known[name] = keys
        self._orphans()
        out: dict[str, tuple[str, int]] = {}
        for name in sorted(self._known):
            for row, key in enumerate(self._known[name]):
                out.setdefault(key, (name, row))
        return out

    def _orphans(self) -> None:
        """A .npy whose index is gone (deleted, or lost in a copy) is set aside, once the
        writer that made it has surely written its index (which comes milliseconds after)."""
        if self._orphans_checked:
            return
        self._orphans_checked = True
        for npy in self.dir.glob("*.npy"):
            try:
                old = time.time() - npy.stat().st_mtime > ORPHAN_AFTER_S
            except OSError:
                continue
            if old and npy.stem not in self._known and not npy.with_suffix(".json").exists():
                set_aside([npy], f"pack {npy.stem}", "has no index (deleted or never written)")

    def _verified_keys(self, name: str, meta: Path) -> list[str] | None:
        """The keys of pack `name` when its index reads and its .npy is the one written."""
        npy = self.dir / f"{name}.npy"
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            keys = [str(k) for k in info["keys"]]
        except (OSError, ValueError, KeyError, TypeError):
            set_aside([meta, npy], f"pack {name}", "has an unreadable index")
            return None
        why = self._damage(npy, info, len(keys))
        if why:
            set_aside([meta, npy], f"pack {name}", why)
            return None
        return keys

    @staticmethod
    def _damage(npy: Path, info: dict, n_keys: int) -> str | None:
        """Why the .npy of a pack is not the file its index describes, or None."""
        try:
            size = npy.stat().st_size
        except OSError:
            return "lost its .npy file"
        if "crc32" in info:  # written with a checksum: the bytes must be those written
            if size != info.get("size"):
                return f"is {size} bytes, not the {info.get('size')} written"
            if file_crc(npy)[1] != info["crc32"]:
                return "fails its checksum (its bytes changed after writing)"
            return None
        expected = npy_size(npy)  # an older pack: its header and size must agree
        if expected is None:
            return "has no valid .npy header"
        if size != expected or (info.get("shape") or [n_keys])[0] != n_keys:
            return f"is {size} bytes, not the {expected} its header says"
        return None

    def has(self, keys: list[str]) -> list[bool]:
        idx = self.index()
        return [k in idx for k in keys]

    # -- adding entries -----------------------------------------------------------------
    def put(self, key: str, array: np.ndarray) -> None:
        """Add one entry; it becomes visible when its pack is flushed (automatically every
        PACK_BYTES, and by `flush`)."""
        array = np.ascontiguousarray(array, dtype=np.float16)
        if self._buffer and self._buffer[0][1].shape != array.shape:
            self.flush()  # a pack holds one shape
        self._buffer.append((key, array))
        self._buffered += array.nbytes
        if self._buffered >= self.pack_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered entries as one new pack, whole or not at all."""
        if not self._buffer:
            return
        keys = [k for k, _ in self._buffer]
        data = np.stack([a for _, a in self._buffer])
        self._buffer, self._buffered = [], 0
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
        summed: list[Summing] = []

        def save(f) -> None:
            summed.append(Summing(f))
            np.save(summed[0], data)

        atomic_write(self.dir / f"{name}.npy", save)
        # the index last: a pack without one is invisible (and its .npy an orphan)
        write_text(self.dir / f"{name}.json", json.dumps({
            "keys": keys, "shape": list(data.shape), "size": summed[0].size,
            "crc32": summed[0].crc}))
        self._known[name] = keys  # its bytes are the ones just written

    # -- reading ------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        """Pack `name` as a read-only memory-mapped [n, rows, *feature] array."""
        if name not in self._mmaps:
            self._mmaps[name] = np.load(self.dir / f"{name}.npy", mmap_mode="r")
        return self._mmaps[name]

    def entries(self, keys: list[str]) -> "Entries":
        """The entries of `keys`, in that order; KeyError names the first missing one."""
        idx = self.index()
        missing = [k for k in keys if k not in idx]
        if missing:
            raise KeyError(missing[0])
        locs = [idx[k] for k in keys]
        names = sorted({n for n, _ in locs})
        packs = {n: i for i, n in enumerate(names)}
        where = np.array([[packs[n], r] for n, r in locs], dtype=np.int64).reshape(-1, 2)
        return Entries([self.array(n) for n in names], where)


class Entries:
    """A list of cache entries spread over packs: `take(items, rows)` gathers one row of
    each asked item into a contiguous array, reading each pack in sorted slices. `load()`
    copies everything into RAM once (then `take` is a plain in-memory gather)."""

    def __init__(self, packs: list[np.ndarray], where: np.ndarray) -> None:
        self.packs, self.where = packs, where
        self.ram: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.where)

    @property
    def entry_shape(self) -> tuple[int, ...]:
        """[rows, *feature] of each entry."""
        if self.ram is not None:
            return tuple(self.ram.shape[1:])
        return tuple(self.packs[0].shape[1:]) if self.packs else (1, 1)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.entry_shape)) * 2

    def take(self, items: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """[len(items), *feature] float16: row `rows[i]` (0 if None) of entry `items[i]`."""
        items = np.asarray(items, dtype=np.int64)
        rows = np.zeros(len(items), np.int64) if rows is None else np.asarray(rows, np.int64)
        if self.ram is not None:
            return self.ram[items, rows]
        out = np.empty((len(items),) + self.entry_shape[1:], np.float16)
        pack, prow = self.where[items, 0], self.where[items, 1]
        for p in np.unique(pack):
            sel = np.nonzero(pack == p)[0]
            order = np.argsort(prow[sel], kind="stable")  # ascending offsets: sequential reads
            sel = sel[order]
            out[sel] = self.packs[p][prow[sel], rows[sel]]
        return out

    def block(self, start: int, stop: int) -> np.ndarray:
        """Entries start..stop-1 whole: [n, rows, *feature]."""
        if self.ram is not None:
            return self.ram[start:stop]
        n = stop - start
        rows = self.entry_shape[0]
        items = np.repeat(np.arange(start, stop), rows)
        flat = self.take(items, np.tile(np.arange(rows), n))
        return flat.reshape((n, rows) + flat.shape[1:])

    def load(self, chunk: int = 4096) -> "Entries":
        """Copy every entry into one contiguous in-RAM array, reading in large slices."""
        if self.ram is None:
            ram = np.empty((len(self),) + self.entry_shape, np.float16)
            for s in range(0, len(self), chunk):
                ram[s:s + chunk] = self.block(s, min(s + chunk, len(self)))
            self.ram = ram
        return self
