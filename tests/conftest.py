"""Shared fixtures: tiny image folders made in tmp_path, and the location of ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]  # the checkout: import this, never count parents
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera"


def make_image(path: Path, size: int = 48, seed: int = 0, color: int = 0) -> Path:
    """A small JPEG whose colour depends on `color` (so classes are learnable)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    arr[..., color % 3] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6,
                layout: str = "flat", size: int = 48) -> Path:
    """`root/<class>/*.jpg` (flat) or `root/{train,val}/<class>/*.jpg` (split)."""
    for ci, c in enumerate(classes):
        for i in range(per_class):
            sub = root / c if layout == "flat" else root / ("val" if i % 3 == 0 else "train") / c
            make_image(sub / f"{c}_{i}.jpg", size, seed=ci * 1000 + i, color=ci)
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def _fast_cpu(tmp_path_factory, monkeypatch):
    import torch

    torch.set_flush_denormal(True)  # random-init weights are full of denormals: slow on CPU
    # a per-session feature cache: tests never touch (or trust) the user's ~/.cache
    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield


def tiny_config(tmp_path: Path, data_root: Path, **sections) -> Path:
    """A config file for a 1-epoch, weights-none, 32 px run in tmp_path."""
    import yaml

    cfg = {"name": "t", "output": str(tmp_path / "runs"), "device": "cpu",
           "model": {"arch": "mobilenet_v3_small", "weights": "none"},
           "data": {"root": str(data_root), "image_size": 32, "batch_size": 8, "workers": 0},
           "train": {"epochs": 1, "lr": 1e-2}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.update({k: v})
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def needs_shared():
    """Skip unless ../shared holds the offline weights and hymenoptera."""
    return pytest.mark.skipif(not (WEIGHTS.is_file() and HYMENOPTERA.is_dir()),
                              reason=f"integration data not found at {SHARED} "
                                     "(weights/ and datasets/hymenoptera)")


def means(x):
    """A stand-in engine: per-channel means of uint8 NHWC pixels (images differ, so entries
    that got mixed up show)."""
    return x.float().mean(dim=(1, 2))


def cache_fill(store, jobs, engine, batch: int = 32) -> int:
    """Compute and store the missing entries of `jobs` with `engine`, as a run's fill does."""
    from mobiletune.frozen.fill import fill

    return fill(store, store.missing(jobs), lambda: engine, batch=batch)


def cache_entry(store, path: str, kind: str):
    """One stored entry, [rows, *feature]."""
    return store.entries([(path, kind)]).block(0, 1)[0]


@pytest.fixture
def live_run(tmp_path: Path) -> Path:
    """A 32 px run directory whose model's outputs vary across images (helpers_runs)."""
    from tests.helpers_runs import make_live_run

    return make_live_run(tmp_path, size=32)
