"""The feature cache: same numbers as the live path, invalidated by any change that matters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mobiletune.config.load import load_config
from mobiletune.data.images import load_image
from mobiletune.data.transforms import pixel_views
from mobiletune.frozen.cache import FeatureCache, cache_root
from mobiletune.frozen.engine import TorchEngine, frozen_engine
from mobiletune.model.backbone import (
    build_model,
    configure_stage,
    preprocess_spec,
    split,
)
from mobiletune.training import run as pipeline
from mobiletune.training.stage import Callbacks
from tests.conftest import cache_entry, cache_fill, make_folder, make_image, means, tiny_config
from tests.helpers_runs import live_model

PRE = preprocess_spec("mobilenet_v3_small", "none", 32)


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, text: str) -> None:
        self.messages.append(text)

    def cached(self) -> bool:
        return any(m.startswith("caching frozen features") for m in self.messages)


def _model(seed: int = 0):
    """MobileNetV2 with O(1) activations (random init gives ~1e-10: every comparison passes)."""
    return live_model("mobilenet_v2", 2, seed, small_head=False)


@pytest.mark.parametrize("engine_kind", ["pytorch", "onnxruntime"])
def test_cached_head_gradients_match_live(tmp_path, engine_kind):
    img_path = make_image(tmp_path / "x.jpg", 48)
    model = _model()
    configure_stage(model, 0)
    prefix, tail = split(model, 0)
    store = FeatureCache(tmp_path / "c", "p", PRE, "standard", 3)
    engine = frozen_engine(prefix, torch.device("cpu"), tmp_path / "c", 32, prefer=engine_kind,
                           pixels=PRE)  # uint8 pixels in, normalized inside the engine
    cache_fill(store, [(str(img_path), "train")], engine)
    cached = torch.from_numpy(np.array(cache_entry(store, str(img_path), "train"))).float()
    # the live path's input: torchvision's ToTensor + Normalize of the same crops and flips
    views = _normalized(pixel_views(load_image(img_path), PRE, "standard", "train", 3,
                                    store.key(str(img_path))))
    y = torch.tensor([0, 1, 0])
    tail.eval()  # no dropout: compare the arithmetic, not random masks
    assert cached.abs().mean() > 0.1  # real signal, not vanishing activations
    grads = []
    for z in (prefix(views).detach(), cached):
        model.zero_grad()
        torch.nn.functional.cross_entropy(tail(z), y).backward()
        grads.append(model.classifier[-1].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=2e-2, atol=2e-3)  # float16 storage


def _normalized(pixels: list) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return torch.stack([TF.normalize(TF.to_tensor(np.array(p)), PRE["mean"], PRE["std"])
                        for p in pixels])


def test_prefix_cached_tail_equals_full_model():
    """tail(engine(prefix)) is the full model, at the head depth and 3 blocks deep."""
    model = _model()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
    assert full.abs().mean() > 0.1
    for unfreeze in (0, 3):
        prefix, tail = split(model, unfreeze)
        z = TorchEngine(prefix, torch.device("cpu"))(x)  # channels_last, inference mode
        with torch.no_grad():
            assert torch.allclose(tail(z.clone()), full, rtol=1e-4, atol=1e-4)


def test_changed_image_invalidates_its_entry(tmp_path):
    a, b = make_image(tmp_path / "a.jpg", seed=1), make_image(tmp_path / "b.jpg", seed=2)
    store = FeatureCache(tmp_path / "c", "p", PRE, "light", 2)
    engine = means
    jobs = [(str(a), "train"), (str(b), "eval")]
    assert cache_fill(store, jobs, engine) == 2 and store.missing(jobs) == []
    before = np.array(cache_entry(store, str(a), "train"))
    make_image(a, seed=9)  # replaced content, new mtime
    os.utime(a, ns=(1, 1))
    assert store.missing(jobs) == [(str(a), "train")]
    cache_fill(store, jobs, engine)
    assert not np.array_equal(before, np.array(cache_entry(store, str(a), "train")))


def test_runs_share_the_cache_only_when_everything_matches(tmp_path, monkeypatch):
    # its own cache: entries are keyed by content, and other tests make the same images
    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", per_class=4)
    base = load_config(tiny_config(tmp_path, data, data={"views": 2}))

    def run(**sets) -> bool:
        cfg = load_config(tiny_config(tmp_path, data, data={"views": 2}),
                          list(sets.items()))
        rec = Recorder()
        pipeline.train(cfg, rec)
        return rec.cached()

    assert base.data.cache
    assert run() is True  # cold
    assert run() is False  # warm: nothing recomputed
    assert run(**{"data.image_size": 48}) is True
    assert run(**{"model.arch": "mobilenet_v2"}) is True
    assert run(seed=5) is True  # weights none: the seed makes other backbone weights
    w = tmp_path / "w.pth"
    torch.manual_seed(3)
    torch.save(build_model("mobilenet_v3_small", "none", 1000).state_dict(), w)
    assert run(**{"model.weights": str(w)}) is True
    assert run(**{"model.weights": str(w), "data.views": 3}) is True


def test_finetune_after_train_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", per_class=4)
    cfg = load_config(tiny_config(tmp_path, data, finetune={"unfreeze": 2, "epochs": 1}))
    first = Recorder()
    run = pipeline.train(cfg, first)
    assert first.cached()
    second = Recorder()
    pipeline.finetune(str(run), {"finetune.unfreeze": 2}, second)
    assert not second.cached()


def test_cache_false_writes_nothing(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4)
    cfg = load_config(tiny_config(tmp_path, data, data={"cache": False}))
    before = set(Path(cache_root()).rglob("*")) if cache_root().exists() else set()
    rec = Recorder()
    run = pipeline.train(cfg, rec)
    after = set(Path(cache_root()).rglob("*")) if cache_root().exists() else set()
    assert not rec.cached() and after == before
    assert (run / "best.pt").is_file()


def test_packed_entries_read_back_what_was_written(tmp_path):
    paths = [str(make_image(tmp_path / f"{i}.jpg", seed=i, color=i)) for i in range(7)]
    store = FeatureCache(tmp_path / "c", "p", PRE, "light", 3)
    store.store.pack_bytes = 40  # several packs: reads must cross pack boundaries
    jobs = [(p, "train") for p in paths]
    assert cache_fill(store, jobs, means) == 7
    assert len(list((store.dir / "packs").glob("*.npy"))) > 1
    written = {}
    for p in paths:  # what the engine made for each image, computed on its own
        views = np.stack(pixel_views(load_image(p, 64), PRE, "light", "train", 3, store.key(p)))
        written[p] = means(torch.from_numpy(views)).half().numpy()
    assert not np.array_equal(written[paths[0]], written[paths[1]])
    entries = store.entries(jobs)
    items, rows = np.array([6, 0, 3, 3, 1]), np.array([2, 0, 1, 2, 0])
    got = entries.take(items, rows)
    want = np.stack([written[paths[i]][r] for i, r in zip(items, rows)])
    assert np.array_equal(got, want)
    assert np.array_equal(entries.load().take(items, rows), want)  # the in-RAM path too
    assert store.missing(jobs) == []


def test_moved_folder_hits_and_edited_bytes_miss(tmp_path):
    data = make_folder(tmp_path / "data", per_class=3)
    store = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)
    jobs = [(str(p), "eval") for p in sorted(data.rglob("*.jpg"))]
    cache_fill(store, jobs, means)
    moved = data.rename(tmp_path / "renamed")
    jobs2 = [(p.replace(str(data), str(moved)), k) for p, k in jobs]
    fresh = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)  # a new process, same cache
    assert fresh.missing(jobs2) == []
    target = jobs2[0][0]
    st = os.stat(target)
    raw = bytearray(Path(target).read_bytes())
    raw[-3] ^= 0xFF  # same size, same mtime, other bytes: the old path+size+mtime key missed it
    Path(target).write_bytes(bytes(raw))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert FeatureCache(tmp_path / "c", "p", PRE, "none", 1).missing(jobs2) == [jobs2[0]]


def test_a_killed_fill_leaves_no_visible_half_pack(tmp_path, monkeypatch):
    monkeypatch.setattr("mobiletune.frozen.fill.workers", lambda: 1)  # calls in job order
    paths = [str(make_image(tmp_path / f"{i}.jpg", seed=i)) for i in range(4)]
    store = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)
    store.store.pack_bytes = 1  # a pack per entry

    def dies_on_third(x, calls=[]):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return means(x)

    with pytest.raises(KeyboardInterrupt):
        cache_fill(store, [(p, "eval") for p in paths], dies_on_third, batch=1)
    (store.dir / "packs" / "orphan.npy").write_bytes(b"half")  # a pack killed before its index
    again = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)
    assert again.missing([(p, "eval") for p in paths]) == [(p, "eval") for p in paths[2:]]


def test_streaming_from_packs_trains_like_ram(tmp_path, monkeypatch):
    """Entries too big for the RAM budget are read from the memory-mapped packs batch by
    batch (data larger than RAM); the run is the in-RAM run. (That reads return the bytes
    written, with features that vary, is test_packed_entries_read_back_what_was_written.)"""
    from mobiletune.frozen import feeds

    data = make_folder(tmp_path / "data", per_class=5)
    cfg = load_config(tiny_config(tmp_path, data, finetune={"unfreeze": 2, "epochs": 2}))
    seen = []
    real = feeds.CachedData.__init__

    def spy(self, train, *a, **k):
        seen.append(type(train).__name__ + ("-ram" if getattr(train, "ram", None) is not None
                                            else ""))
        real(self, train, *a, **k)

    monkeypatch.setattr(feeds.CachedData, "__init__", spy)
    metrics = []
    for budget in (feeds.RAM_BYTES, 0):
        monkeypatch.setattr(feeds, "RAM_BYTES", budget)
        run = pipeline.train(cfg, Recorder())
        metrics.append((run / "metrics.csv").read_text().splitlines())
    assert seen == ["ndarray", "Entries-ram", "ndarray", "Entries"]  # head derived; ft: ram, mmap
    strip = [[",".join(r.split(",")[:-1]) for r in m] for m in metrics]  # all but seconds
    assert strip[0] == strip[1] and len(strip[0]) == 5  # header, head 1, finetune 0 (start), 1, 2
