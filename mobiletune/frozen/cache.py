"""Never compute the frozen part twice: cached prefix outputs, per image and per view.

Each training image gets K augmented views and each val image its eval view; the frozen
prefix runs on them once and the outputs are stored as float16 `.npy` files, read back
memory-mapped (data sets larger than RAM work). An entry's file name hashes the image's
real path, size and mtime; its folder hashes everything else that shapes the numbers: the
prefix's own weights (so arch, weights file, and depth), the preprocessing, the augmentation
and the number of views. A changed image or setting therefore never reads a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mobiletune.data import Sample, load_image
from mobiletune.fileio import write_text
from mobiletune.transforms import augmented_view, decode_side, eval_transform

CACHE_VERSION = 1


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


def image_key(path: str) -> str:
    """Identity of an image file's content as the cache sees it: real path, size, mtime."""
    st = os.stat(path)
    return _sha(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}", 32)


def views_of(img, pre: dict, augment: str, k: int, key: str) -> list[torch.Tensor]:
    """K training views of one decoded image, each seeded by (image key, view index), so the
    same image always yields the same views whatever the run's seed, order or thread."""
    if augment == "none":
        return [eval_transform(pre)(img)] * k
    return [augmented_view(img, pre, augment, random.Random(f"{key}:{v}")) for v in range(k)]


class FeatureCache:
    """Frozen-prefix outputs on disk for one (prefix, preprocessing, view policy)."""

    def __init__(self, root: Path, prefix_id: str, pre: dict, augment: str, views: int) -> None:
        self.pre, self.augment, self.views = pre, augment, views
        policy = json.dumps({"v": CACHE_VERSION, "prefix": prefix_id, "pre": pre,
                             "augment": augment, "views": views}, sort_keys=True)
        self.dir = Path(root) / "features" / _sha(policy)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "policy.json"
        if not meta.exists():
            write_text(meta, policy)

    def path(self, sample_path: str, kind: str) -> Path:
        return self.dir / f"{image_key(sample_path)}.{kind}.npy"

    def missing(self, jobs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(p, k) for p, k in jobs if not self.path(p, k).is_file()]

    def _decode(self, job: tuple[str, str]) -> list[torch.Tensor]:
        path, kind = job
        img = load_image(path, decode_side(self.pre))
        if kind == "eval":
            return [eval_transform(self.pre)(img)]
        return views_of(img, self.pre, self.augment, self.views, image_key(path))

    def fill(self, jobs: list[tuple[str, str]], engine: Callable[[torch.Tensor], torch.Tensor],
             batch: int = 32, on_progress: Callable[[int, int], None] | None = None) -> int:
        """Compute and store every missing (path, kind) entry; returns how many were made."""
        todo = self.missing(jobs)
        chunk = max(1, batch // (1 if self.augment == "none" else self.views))
        groups = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        done = 0
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            pending = pool.map(self._decode, groups[0]) if groups else None
            for gi, group in enumerate(groups):
                decoded = list(pending)
                if gi + 1 < len(groups):  # decode the next group while this one runs
                    pending = pool.map(self._decode, groups[gi + 1])
                out = engine(torch.stack([v for views in decoded for v in views]))
                out = out.to(torch.float16).cpu().numpy()
                start = 0
                for job, views in zip(group, decoded):
                    self._save(self.path(*job), out[start:start + len(views)])
                    start += len(views)
                done += len(group)
                if on_progress:
                    on_progress(done, len(todo))
        return done

    def _save(self, path: Path, arr: np.ndarray) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)  # whole or not at all: a killed run leaves no half entry

    def load(self, sample_path: str, kind: str) -> np.ndarray:
        return np.load(self.path(sample_path, kind), mmap_mode="r")


def jobs_for(train: list[Sample], val: list[Sample]) -> list[tuple[str, str]]:
    return [(s.path, "train") for s in train] + [(s.path, "eval") for s in val]
