"""Filling the feature cache at the engine's own pace.

The frozen forward pass is the floor of a cold run; everything else must hide behind it.
The jobs are cut into chunks of whole images (at most `batch` views each). One worker per
core (mobiletune/parallel.py) takes the next chunk, decodes it into uint8 pixels (PIL decode,
crop and flip, which release the GIL; the engine normalizes inside its graph, see
engine.Normalized) and runs the engine on it; a writer thread stores the outputs. The engine
is built (exported) while the first chunks decode.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from mobiletune.data.views import KeyedJob, Policy, decode_job
from mobiletune.errors import INTERRUPT
from mobiletune.frozen.store import Job, release_free_memory
from mobiletune.parallel import Completed, calling, workers

BATCH = 16  # views per engine call: as fast per view as 32 on one thread, half the tail


def policy(store) -> Policy:
    """What a store's entries depend on besides the image: the views' recipe."""
    return store.pre, store.augment, store.views


def keyed(store, job: Job) -> KeyedJob:
    """`job` with the content key that seeds its random views ("" where none are drawn)."""
    path, kind = job
    return path, kind, store.key(path) if kind == "train" and store.augment != "none" else ""


def decode_views(store, job: Job) -> list[np.ndarray]:
    """The uint8 HWC views of one job (transforms.pixel_views), as `store` keys and seeds them."""
    return decode_job(policy(store), keyed(store, job))


def chunks(jobs: list[Job], views: int, batch: int) -> list[list[Job]]:
    """Consecutive whole jobs, at most `batch` views per chunk (a train job has `views` rows,
    an eval job one; one job never splits, so a chunk may hold one job of more rows)."""
    out: list[list[Job]] = []
    n = 0
    for job in jobs:
        rows = views if job[1] == "train" else 1
        if out and n + rows <= batch:
            out[-1].append(job)
            n += rows
        else:
            out.append([job])
            n = rows
    return out


def fill(store, jobs: list[Job], make_engine: Callable[[], Callable], *, batch: int = BATCH,
         on_progress: Callable[[int, int], None] | None = None) -> int:
    """Compute and store the entries of `jobs` (all missing) through `store.put`; the engine
    from `make_engine()` maps uint8 NHWC pixels to prefix outputs. Returns entries made.
    Every chunk that finished before an interrupt or an error (an image that no longer
    decodes) is stored."""
    if not jobs:
        return 0
    engine: Future = Future()
    run = _runner(store, engine)
    done, writes = 0, []
    with ThreadPoolExecutor(workers(), thread_name_prefix="cache-fill") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="cache-write") as writer:
        results = Completed(pool, run, chunks(jobs, store.views, batch), workers())
        try:
            _build(engine, make_engine)  # the export overlaps the first chunks' decoding
            for chunk, (counts, out) in results:
                writes.append(writer.submit(put_rows, store, chunk, counts, out))
                done += len(chunk)
                if INTERRUPT.is_set():  # a Ctrl-C whose KeyboardInterrupt Python swallowed
                    raise KeyboardInterrupt
                if on_progress:
                    on_progress(done, len(jobs))
        finally:
            results.close()  # start nothing more
            if not engine.done():  # the first chunks wait for it: let them fail
                engine.set_exception(KeyboardInterrupt())
            for w in writes:
                w.result()
            store.flush()
    return done


def _build(engine: Future, make_engine: Callable[[], Callable]) -> None:
    try:
        engine.set_result(make_engine())
    except BaseException as e:
        engine.set_exception(e)
        raise


def _runner(store, engine: Future) -> Callable[[list[Job]], tuple]:
    """The work of one chunk: decode it, then run the engine (alone, unless concurrent)."""
    lock = threading.Lock()

    def run(chunk: list[Job]) -> tuple[list[int], np.ndarray]:
        views = [decode_views(store, job) for job in chunk]
        x = torch.from_numpy(np.stack([v for vs in views for v in vs]))
        fn = engine.result()
        with calling(fn, lock):
            out = fn(x).to(torch.float16).cpu().numpy()
        release_free_memory()  # peak RSS follows the batch, not the folder
        return [len(vs) for vs in views], out

    return run


def put_rows(store, group: list[Job], counts: list[int], out: np.ndarray) -> None:
    """Store the engine's output rows `out` as the entries of `group`, job i taking the next
    `counts[i]` rows."""
    start = 0
    for job, n in zip(group, counts):
        store.put(job, out[start:start + n])
        start += n
