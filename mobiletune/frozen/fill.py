"""Filling the feature cache at the engine's own pace.

The frozen forward pass is the floor of a cold run; everything else must hide behind it.
A decode thread runs ahead of the engine and hands over uint8 pixels (decoding, cropping and
flipping in PIL, which releases the GIL; no float tensor work, which the engine does as part
of its graph, see engine.Normalized); the calling thread only stacks pixels and runs the
engine (ONNX Runtime releases the GIL too); a writer thread stores the outputs. The engine is
built (exported) while the first images decode.

Measured on a 2-core machine (benchmarks/bench_train.py, fill rate / engine alone): one
decode thread beside a 2-thread engine; batches of 32 views.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch

from mobiletune.data import load_image
from mobiletune.errors import DataError
from mobiletune.frozen.store import release_free_memory
from mobiletune.interrupts import INTERRUPT
from mobiletune.transforms import decode_side, pixel_views

Job = tuple[str, str]  # (image path, "train" | "eval")
BATCH = 32  # views per engine call
DECODE_THREADS = 1  # beside an engine that uses every core: more only preempts it


def decode_views(store, job: Job) -> list[np.ndarray]:
    """The uint8 HWC views of one job (transforms.pixel_views), as `store` keys and seeds them."""
    path, kind = job
    try:
        img = load_image(path, decode_side(store.pre))
    except Exception as e:  # noqa: BLE001 - PIL raises assorted errors on a changed file
        raise DataError(f"{path} could not be decoded while caching ({e}); it changed since "
                        "the scan: remove or replace it.") from None
    key = store.key(path) if kind == "train" and store.augment != "none" else ""
    return pixel_views(img, store.pre, store.augment, kind, store.views, key)


def _in_order(pool: ThreadPoolExecutor, fn: Callable, jobs: list, window: int) -> Iterator:
    """fn(job) for each job, in order, with at most `window` jobs submitted ahead."""
    pending: deque[tuple[object, Future]] = deque()
    rest = iter(jobs)
    try:
        for job in rest:
            pending.append((job, pool.submit(fn, job)))
            if len(pending) >= window:
                break
        while pending:
            job, fut = pending.popleft()
            nxt = next(rest, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield job, fut.result()
    finally:  # an interrupt or an error: decode nothing more
        for _, fut in pending:
            fut.cancel()


def _batches(decoded: Iterator, batch: int) -> Iterator[tuple[list, list[list[np.ndarray]]]]:
    """Whole jobs grouped into batches of at most `batch` views (one job never splits).
    When a job fails to decode, the jobs before it still come out first."""
    jobs, views, n = [], [], 0
    while True:
        try:
            job, vs = next(decoded)
        except StopIteration:
            break
        except Exception:
            if jobs:
                yield jobs, views
            raise
        if jobs and n + len(vs) > batch:
            yield jobs, views
            jobs, views, n = [], [], 0
        jobs.append(job)
        views.append(vs)
        n += len(vs)
    if jobs:
        yield jobs, views


def fill(store, jobs: list[Job], make_engine: Callable[[], Callable], *, batch: int = BATCH,
         on_progress: Callable[[int, int], None] | None = None) -> int:
    """Compute and store the entries of `jobs` (all missing) through `store.put`; the engine
    from `make_engine()` maps uint8 NHWC pixels to prefix outputs. Returns entries made.
    What was computed before an interrupt or an error is stored."""
    if not jobs:
        return 0

    done, writes = 0, []
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="cache-write") as writer:
        decoded = _in_order(pool, lambda job: decode_views(store, job), jobs, window=3 * batch)
        try:
            engine = make_engine()  # an ONNX export overlaps the first decodes
            for group, views in _batches(decoded, batch):
                if INTERRUPT.is_set():  # a Ctrl-C whose KeyboardInterrupt Python swallowed
                    raise KeyboardInterrupt
                x = torch.from_numpy(np.stack([v for vs in views for v in vs]))
                out = engine(x).to(torch.float16).cpu().numpy()
                writes.append(writer.submit(_put, store, group, [len(vs) for vs in views], out))
                done += len(group)
                release_free_memory()  # peak RSS follows the batch, not the folder
                if on_progress:
                    on_progress(done, len(jobs))
        finally:
            decoded.close()
            for w in writes:
                w.result()
            store.flush()
    return done


def _put(store, group: list[Job], counts: list[int], out: np.ndarray) -> None:
    start = 0
    for job, n in zip(group, counts):
        store.put(job, out[start:start + n])
        start += n
