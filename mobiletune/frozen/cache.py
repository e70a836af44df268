"""Never compute the frozen part twice: cached prefix outputs, per image and per view.

Each training image gets K augmented views and each val image its eval view; the frozen
prefix runs on them once and the outputs are stored as float16 entries packed many to a
file (frozen/store.py), read back memory-mapped in slices or loaded into RAM once.

Keys cannot go stale. An entry's key is a hash of the image file's bytes (not its path,
size or mtime): an edited image is a new key, and a moved or renamed folder of the same
images hits. The folder holding the entries hashes everything else that shapes the numbers:
the prefix's own weights (so arch, weights file and depth), the preprocessing, the view
policy, the source of the decode/transform code, and the versions of the libraries that
compute them (torch, torchvision, Pillow, ONNX Runtime).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mobiletune.data.samples import Sample
from mobiletune.fileio import write_text
from mobiletune.frozen.store import Entries, Job, PackStore

CACHE_VERSION = 2  # 2: packed entries, content keys



def cache_root() -> Path:
    """`$MOBILETUNE_CACHE`, else `$XDG_CACHE_HOME/mobiletune`, else ~/.cache/mobiletune."""
    env = os.environ.get("MOBILETUNE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mobiletune"


def _sha(text: str, n: int = 24) -> str:
    # surrogateescape: file names that are not valid UTF-8 hash by their raw bytes
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def file_digest(path: str) -> str:
    """Hash of a file's bytes: an image's identity as the cache sees it. Reading a JPEG
    costs a small fraction of decoding it (hashlib releases the GIL, so threads scale)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:32]


def code_version() -> str:
    """A hash of the code that turns a file into network input (decode and transforms) and
    of the library versions that compute the numbers: any change there is a new cache."""
    import PIL

    from mobiletune.vision import torchvision

    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = "none"
    libs = f"torch {torch.__version__}|torchvision {torchvision.__version__}|" \
           f"pillow {PIL.__version__}|onnxruntime {ort}"
    return _sha(code_source() + libs)


def code_source() -> str:
    """The source that turns a file into network input: decoding, views, normalization.
    Moving these modules keeps the key; editing them (a blank line too) starts a new cache."""
    from mobiletune.data import images, transforms
    from mobiletune.data.preprocess import Normalized  # the normalization runs in the engine

    return inspect.getsource(transforms) + inspect.getsource(images.load_image) \
        + inspect.getsource(images._to_rgb) + inspect.getsource(Normalized)


class FeatureCache:
    """Frozen-prefix outputs on disk for one (prefix, preprocessing, view policy).

    The store API: `key(path)`, `missing(jobs)`, `put(job, array)` + `flush()` (what
    frozen/fill.py calls) and `entries(jobs)` for reading back.
    """

    def __init__(self, root: Path, prefix_id: str, pre: dict, augment: str, views: int) -> None:
        self.pre, self.augment, self.views = pre, augment, views
        policy = json.dumps({"v": CACHE_VERSION, "prefix": prefix_id, "pre": pre,
                             "augment": augment, "views": views, "code": code_version()},
                            sort_keys=True)
        self.dir = Path(root) / "features" / _sha(policy)
        self.store = PackStore(self.dir)
        meta = self.dir / "policy.json"
        if not meta.exists():
            write_text(meta, policy)
        # path -> (size, mtime_ns, digest): a file is hashed once per process unless it
        # changes under us; across processes every file is hashed again (never trusted)
        self._digests: dict[str, tuple[int, int, str]] = {}

    def key(self, path: str) -> str:
        """The content key of an image (see `file_digest`), hashed once per process."""
        st = os.stat(path)
        known = self._digests.get(path)
        if known and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        digest = file_digest(path)
        self._digests[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def hash_all(self, paths: list[str], threads: int = 8) -> list[str]:
        """Content keys of many files, read in parallel."""
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(self.key, paths))

    def entry_key(self, job: Job) -> str:
        return f"{self.key(job[0])}.{job[1]}"

    def missing(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose entries are not stored (yet)."""
        self.hash_all([p for p, _ in jobs])
        have = self.store.has([self.entry_key(j) for j in jobs])
        return [j for j, h in zip(jobs, have) if not h]

    def put(self, job: Job, array: np.ndarray) -> None:
        """Store the entry of `job` ([rows, *feature]); visible after `flush`."""
        self.store.put(self.entry_key(job), array)

    def flush(self) -> None:
        self.store.flush()

    def entries(self, jobs: list[Job]) -> Entries:
        """The stored entries of `jobs`, in order (every one must exist)."""
        self.hash_all([p for p, _ in jobs])
        return self.store.entries([self.entry_key(j) for j in jobs])


def jobs_for(train: list[Sample], val: list[Sample]) -> list[tuple[str, str]]:
    return [(s.path, "train") for s in train] + [(s.path, "eval") for s in val]
