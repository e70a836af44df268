"""The cache fill (frozen/fill.py): a worker per core decodes and runs the engine; a writer stores."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mobiletune import parallel
from mobiletune.data.images import load_image
from mobiletune.data.transforms import pixel_views
from mobiletune.errors import DataError
from mobiletune.frozen.cache import FeatureCache
from mobiletune.frozen.fill import fill
from mobiletune.model.backbone import preprocess_spec
from tests.conftest import cache_entry, make_image, means

PRE = preprocess_spec("mobilenet_v3_small", "none", 32)


def test_entries_keep_their_job_across_batch_boundaries(tmp_path):
    """Training jobs (3 views) and eval jobs (1 view) mixed, batches of 4 views: every
    entry holds the engine's output for its own image's views, in view order."""
    paths = [str(make_image(tmp_path / f"{i}.jpg", 48, seed=i, color=i % 3)) for i in range(7)]
    jobs = [(p, "train" if i % 2 else "eval") for i, p in enumerate(paths)]
    store = FeatureCache(tmp_path / "c", "p", PRE, "light", 3)
    calls = []

    def engine(x):
        calls.append(len(x))
        return means(x)

    assert fill(store, jobs, lambda: engine, batch=4) == len(jobs)
    assert max(calls) <= 4 and sum(calls) == sum(3 if k == "train" else 1 for _, k in jobs)
    for p, kind in jobs:
        want = np.stack(pixel_views(load_image(p, 64), PRE, "light", kind, 3, store.key(p)))
        got = np.array(cache_entry(store, p, kind))
        assert got.shape == (3 if kind == "train" else 1, 3)
        assert np.array_equal(got, means(torch.from_numpy(want)).half().numpy())
    firsts = {tuple(np.array(cache_entry(store, p, k))[0]) for p, k in jobs}
    assert len(firsts) == len(jobs)  # distinct images, distinct entries: nothing mixed up


def with_a_bad_image(tmp_path: Path, bad: int, n: int = 6) -> tuple[FeatureCache, list]:
    """(an empty store, n eval jobs) where image `bad` changed into bytes PIL cannot decode
    after the scan; read the store back through a new FeatureCache on tmp_path / "c"."""
    paths = [str(make_image(tmp_path / f"{i}.jpg", 48, seed=i)) for i in range(n)]
    Path(paths[bad]).write_bytes(b"not a jpeg any more")
    return FeatureCache(tmp_path / "c", "p", PRE, "none", 1), [(p, "eval") for p in paths]


def test_an_image_that_no_longer_decodes_is_a_data_error_and_earlier_work_is_kept(tmp_path):
    store, jobs = with_a_bad_image(tmp_path, 4)
    with pytest.raises(DataError, match="4.jpg"):
        fill(store, jobs, lambda: means, batch=2)
    left = FeatureCache(tmp_path / "c", "p", PRE, "none", 1).missing(jobs)
    assert left == jobs[4:]  # the two batches before the bad image were stored


def test_a_chunk_still_running_when_another_fails_is_kept(tmp_path, monkeypatch):
    """The order the old test left to chance: the first chunk is still decoding when the
    bad image's chunk fails. It finishes, and is stored, before the error is raised."""
    from mobiletune.frozen import fill as fill_module

    store, jobs = with_a_bad_image(tmp_path, 4)
    paths = [p for p, _ in jobs]
    failed = threading.Event()
    decode = fill_module.decode_views

    def slow_first(store, job):
        if job[0] == paths[0]:
            assert failed.wait(10), "the bad chunk never ran"
        try:
            return decode(store, job)
        except DataError:
            failed.set()
            raise

    monkeypatch.setattr(fill_module, "decode_views", slow_first)
    monkeypatch.setattr(fill_module, "workers", lambda: 2)
    with pytest.raises(DataError, match="4.jpg"):
        fill(store, jobs, lambda: means, batch=2)
    left = FeatureCache(tmp_path / "c", "p", PRE, "none", 1).missing(jobs)
    assert left == jobs[4:]


def test_the_engine_is_built_once_while_decoding_starts(tmp_path):
    paths = [str(make_image(tmp_path / f"{i}.jpg", 48, seed=i)) for i in range(3)]
    store = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)
    built = []
    fill(store, [(p, "eval") for p in paths], lambda: built.append(1) or means, batch=1)
    assert built == [1]
    assert fill(store, [], lambda: built.append(1) or means) == 0 and built == [1]


WAIT_S = 10  # a bound, not a pace: a broken fill fails after it instead of hanging


class _Calls:
    """The engine's calls in progress, and the workers queued on the lock that fill hands to
    parallel.calling (its `with` enters this wrapper around that lock)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.now = self.most = self.calls = self.queued = 0
        self.lock: threading.Lock | None = None

    def around(self, lock: threading.Lock) -> _Calls:
        assert self.lock in (None, lock)  # one fill, one lock
        self.lock = lock
        return self

    def __enter__(self) -> None:
        with self.changed:
            self.queued += 1
            self.changed.notify_all()
        self.lock.acquire()
        with self.changed:
            self.queued -= 1

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _engine(calls: _Calls, concurrent: bool):
    """A concurrent engine's calls meet at a barrier that only three calls in progress at
    once can pass. A non-concurrent engine's first call returns only once the two other
    workers are queued on the lock (their calls can then only follow it) or inside the
    engine beside it (which the test then sees)."""
    meet = threading.Barrier(3, timeout=WAIT_S)

    def engine(x):
        with calls.changed:
            calls.now += 1
            calls.calls += 1
            calls.most = max(calls.most, calls.now)
            first = calls.calls == 1
            calls.changed.notify_all()
        try:
            if concurrent:
                meet.wait()  # BrokenBarrierError unless 3 calls run at once
            elif first:
                with calls.changed:
                    both = calls.changed.wait_for(
                        lambda: calls.queued == 2 or calls.now > 1, WAIT_S)
                assert both, "the other two workers never reached the engine"
            return means(x)
        finally:
            with calls.changed:
                calls.now -= 1

    engine.concurrent = concurrent
    return engine


@pytest.mark.parametrize("concurrent", [False, True])
def test_only_a_concurrent_engine_is_called_from_several_workers(tmp_path, monkeypatch, concurrent):
    """One worker per core decodes and runs the engine; an engine that uses every core
    itself (not `concurrent`) must run one call at a time, or threads oversubscribe. No
    sleeps: the engine waits for the other workers (see _engine), so what it counts does
    not depend on how fast the machine is."""
    monkeypatch.setattr("mobiletune.frozen.fill.workers", lambda: 3)
    calls = _Calls()
    monkeypatch.setattr("mobiletune.frozen.fill.calling",
                        lambda fn, lock: parallel.calling(fn, calls.around(lock)))
    paths = [str(make_image(tmp_path / f"{i}.jpg", 48, seed=i)) for i in range(9)]
    store = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)
    jobs = [(p, "eval") for p in paths]
    assert fill(store, jobs, lambda: _engine(calls, concurrent), batch=1) == 9
    assert calls.calls == 9 and calls.most == (3 if concurrent else 1)
    assert store.missing(jobs) == []


def test_an_engine_that_fails_to_build_fails_the_fill_and_stores_nothing(tmp_path):
    paths = [str(make_image(tmp_path / f"{i}.jpg", 48, seed=i)) for i in range(4)]
    store = FeatureCache(tmp_path / "c", "p", PRE, "none", 1)

    def broken():
        raise RuntimeError("no engine")

    jobs = [(p, "eval") for p in paths]
    with pytest.raises(RuntimeError, match="no engine"):
        fill(store, jobs, broken, batch=1)
    assert store.missing(jobs) == jobs
