"""A damaged cache is never trained on: every kind of damage is found, set aside with one
line, recomputed, and the run ends where a run on a sound cache ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mobiletune.frozen.integrity import file_crc, take_notices
from mobiletune.frozen.store import PackStore
from tests.conftest import make_folder, tiny_config
from tests.helpers_robust import invoke
from tests.helpers_runs import live_weights


def _zero(f: Path) -> None:
    f.write_bytes(b"\0" * f.stat().st_size)


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_one_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # inside the numbers, the header stays valid
    f.write_bytes(bytes(data))


def _garbage(f: Path) -> None:
    f.write_text("{not json")


def _orphan(f: Path) -> None:
    f.with_suffix(".json").unlink()
    os.utime(f, (1, 1))  # long ago: not a pack whose index is still being written


DAMAGE = {  # what damages which file: (glob under the cache, how)
    "zeroed pack": ("features/*/packs/*.npy", _zero),
    "truncated pack": ("features/*/packs/*.npy", _truncate),
    "flipped byte": ("features/*/packs/*.npy", _flip_one_byte),
    "deleted index": ("features/*/packs/*.npy", _orphan),
    "garbage index": ("features/*/packs/*.json", _garbage),
    "damaged engine": ("engines/*.onnx", _flip_one_byte),
}


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    """A head run on a live backbone (features vary per image), from an empty cache."""
    tmp = tmp_path_factory.mktemp("damage")
    data = make_folder(tmp / "data", per_class=8, size=48)
    cfg = tiny_config(tmp, data, model={"weights": str(live_weights(tmp / "w.pth"))},
                      train={"epochs": 3})
    return tmp, cfg


def _train(tmp: Path, cfg: Path, cache: Path, monkeypatch) -> tuple[dict, str]:
    monkeypatch.setenv("MOBILETUNE_CACHE", str(cache))
    res = invoke(["train", "--config", cfg, "--out", tmp / "runs", "-q"], 0)
    run = sorted((tmp / "runs").glob("t*"), key=lambda p: p.stat().st_mtime)[-1]
    return torch.load(run / "best.pt", weights_only=True)["metrics"], res.stderr


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_cache_is_set_aside_recomputed_and_trains_as_a_sound_one(
        sound, tmp_path, monkeypatch, case):
    tmp, cfg = sound
    cache = tmp_path / "cache"
    first, _ = _train(tmp, cfg, cache, monkeypatch)
    pattern, damage = DAMAGE[case]
    files = sorted(cache.glob(pattern))
    assert files, f"nothing to damage at {pattern}"
    for f in files:
        damage(f)
    again, err = _train(tmp, cfg, cache, monkeypatch)
    assert again["val_loss"] == pytest.approx(first["val_loss"], rel=1e-4)
    assert again["val_acc"] == first["val_acc"]
    lines = [line for line in err.splitlines() if "set aside" in line]
    if case == "damaged engine":  # an engine is checked when a run needs it: a warm run
        assert 1 <= len(lines) <= len(files), err  # needs the derivation's, not the fill's
    else:
        assert len(lines) == len(files), err  # one line per damaged file, saying where
    assert all((cache / "set-aside").exists() or "set-aside" in line for line in lines)
    assert list(cache.rglob("set-aside/*")), "damaged files are kept, not deleted"


def test_zeroed_features_would_change_the_run(sound, tmp_path, monkeypatch):
    """The check above can fail: the same zeroed cache, served unverified, trains to a
    different model (what happened before packs carried checksums)."""
    tmp, cfg = sound
    cache = tmp_path / "cache"
    first, _ = _train(tmp, cfg, cache, monkeypatch)
    for f in cache.glob("features/*/packs/*.npy"):
        _flip_all_numbers(f)
    monkeypatch.setattr(PackStore, "_damage", staticmethod(lambda *a: None))  # trust all
    served, _ = _train(tmp, cfg, cache, monkeypatch)
    assert served["val_loss"] != pytest.approx(first["val_loss"], rel=1e-4)


def _flip_all_numbers(f: Path) -> None:
    data = bytearray(f.read_bytes())
    for i in range(256, len(data)):  # past the .npy header: every value changes
        data[i] = 0
    f.write_bytes(bytes(data))


def test_a_pack_records_its_size_and_checksum_as_written(tmp_path):
    import json

    import numpy as np

    store = PackStore(tmp_path)
    store.put("k", np.ones((2, 4), np.float32))
    store.flush()
    (npy,) = (tmp_path / "packs").glob("*.npy")
    info = json.loads(npy.with_suffix(".json").read_text())
    assert (info["size"], info["crc32"]) == file_crc(npy)
    assert PackStore(tmp_path).has(["k"]) == [True] and take_notices() == []
