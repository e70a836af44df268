"""The fill for a fast engine (frozen/decoders.py): images decode in worker processes and the
engine gets large batches; the entries are the thread fill's, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobiletune.errors import DataError
from mobiletune.frozen.cache import FeatureCache
from mobiletune.frozen.decoders import MIN_JOBS, decoder_processes, fill_in_processes
from mobiletune.frozen.fill import fill
from tests.conftest import cache_entry, make_image, means
from tests.frozen.test_fill import PRE, with_a_bad_image


def test_entries_equal_the_thread_fill_and_batches_are_large(tmp_path):
    """Train jobs (random views seeded by content key) and eval jobs, decoded in 2 processes
    in chunks of 4 views, run in batches of up to 8 views."""
    paths = [str(make_image(tmp_path / f"{i}.jpg", 48, seed=i, color=i % 3)) for i in range(9)]
    jobs = [(p, "train" if i % 2 else "eval") for i, p in enumerate(paths)]
    threads = FeatureCache(tmp_path / "t", "p", PRE, "light", 3)
    assert fill(threads, jobs, lambda: means, batch=4) == len(jobs)
    calls, seen = [], []

    def engine(x):
        calls.append(len(x))
        return means(x)

    procs = FeatureCache(tmp_path / "p", "p", PRE, "light", 3)
    n = fill_in_processes(procs, jobs, lambda: engine, processes=2, batch=8, chunk=4,
                          on_progress=lambda d, t: seen.append((d, t)))
    assert n == len(jobs) and seen[-1] == (len(jobs), len(jobs))
    assert sum(calls) == sum(3 if k == "train" else 1 for _, k in jobs)
    assert max(calls) > 4  # chunks were joined into engine batches
    firsts = set()
    for p, kind in jobs:
        want = np.array(cache_entry(threads, p, kind))
        got = np.array(cache_entry(procs, p, kind))
        assert np.array_equal(got, want), (p, kind)
        firsts.add(tuple(got[0]))
    assert len(firsts) == len(jobs)  # distinct images, distinct entries: a real comparison


def test_a_bad_image_is_a_data_error_and_what_decoded_is_kept(tmp_path):
    store, jobs = with_a_bad_image(tmp_path, 5)
    with pytest.raises(DataError, match="5.jpg"):
        fill_in_processes(store, jobs, lambda: means, processes=1, batch=64, chunk=1)
    left = FeatureCache(tmp_path / "c", "p", PRE, "none", 1).missing(jobs)
    # one process, chunks in order: the five before the bad one decoded and were stored,
    # although the engine's batch (64) was never full
    assert left == jobs[5:]


def test_processes_only_beside_a_gpu_and_for_big_fills(monkeypatch):
    cuda = torch.device("cuda")
    assert decoder_processes(torch.device("cpu"), 10 * MIN_JOBS) == 0
    assert decoder_processes(cuda, MIN_JOBS - 1) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert decoder_processes(cuda, MIN_JOBS) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks share the cores
    assert decoder_processes(cuda, MIN_JOBS) == 4
