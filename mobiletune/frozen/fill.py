"""Filling the feature cache at the engine's own pace.

The frozen forward pass is the floor of a cold run; everything else must hide behind it.
The jobs are cut into chunks of whole images (at most `batch` views each). One worker per
core takes the next chunk, decodes it (uint8 pixels: PIL decode, crop and flip, which
release the GIL; the engine normalizes inside its graph, see engine.Normalized) and runs the
engine on it; a writer thread stores the outputs. The engine is built (exported) while the
first chunks decode.

Why workers that both decode and infer: with one decode thread beside a 2-thread engine, three
threads share two cores, and every time the decoder ran it stalled one engine thread while the
other waited for it at the end of each operator. The fill reached 77% of the engine alone
(benchmarks/bench_train.py, 2-core machine). An engine that runs each call on its caller's thread
(`engine.concurrent`: ONNX Runtime with one intra-op thread) lets each core alternate between
decoding and inferring, and never run two threads. Engines that are not concurrent (PyTorch,
CUDA) are called one at a time, while the other workers decode.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable

import numpy as np
import torch

from mobiletune.data import load_image
from mobiletune.errors import DataError
from mobiletune.frozen.store import release_free_memory
from mobiletune.interrupts import INTERRUPT
from mobiletune.transforms import decode_side, pixel_views

Job = tuple[str, str]  # (image path, "train" | "eval")
BATCH = 16  # views per engine call: as fast per view as 32 on one thread, half the tail


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


def workers() -> int:
    """One worker per core this process may use (torchrun gives each rank its share)."""
    return max(1, torch.get_num_threads())


def fill(store, jobs: list[Job], make_engine: Callable[[], Callable], *, batch: int = BATCH,
         on_progress: Callable[[int, int], None] | None = None) -> int:
    """Compute and store the entries of `jobs` (all missing) through `store.put`; the engine
    from `make_engine()` maps uint8 NHWC pixels to prefix outputs. Returns entries made.
    Every chunk computed before an interrupt or an error (an image that no longer decodes)
    is stored."""
    if not jobs:
        return 0
    todo = chunks(jobs, store.views, batch)
    engine: Future = Future()
    run = _runner(store, engine)
    done = 0
    with ThreadPoolExecutor(workers(), thread_name_prefix="cache-fill") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="cache-write") as writer:
        pending = {pool.submit(run, c) for c in todo[:workers()]}
        ahead = iter(todo[workers():])
        writes: list[Future] = []
        try:
            _build(engine, make_engine)  # the export overlaps the first chunks' decoding
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                ok = [f.result() for f in finished if f.exception() is None]
                for chunk in ok:
                    writes.append(writer.submit(_put, store, *chunk))
                    done += len(chunk[0])
                failed = [f.exception() for f in finished if f.exception() is not None]
                if failed:
                    raise failed[0]
                for nxt in itertools.islice(ahead, len(ok)):
                    pending.add(pool.submit(run, nxt))
                if INTERRUPT.is_set():  # a Ctrl-C whose KeyboardInterrupt Python swallowed
                    raise KeyboardInterrupt
                if on_progress:
                    on_progress(done, len(jobs))
        finally:
            _store_finished(pending, writer, store, writes)
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

    def run(chunk: list[Job]) -> tuple[list[Job], list[int], np.ndarray]:
        views = [decode_views(store, job) for job in chunk]
        x = torch.from_numpy(np.stack([v for vs in views for v in vs]))
        fn = engine.result()
        with contextlib.nullcontext() if getattr(fn, "concurrent", False) else lock:
            out = fn(x).to(torch.float16).cpu().numpy()
        release_free_memory()  # peak RSS follows the batch, not the folder
        return chunk, [len(vs) for vs in views], out

    return run


def _store_finished(pending: set[Future], writer, store, writes: list[Future]) -> None:
    """After an error or interrupt: start nothing more, keep what in-flight chunks finish."""
    for fut in pending:
        fut.cancel()
    for fut in pending:
        if not fut.cancelled() and fut.exception() is None:
            writes.append(writer.submit(_put, store, *fut.result()))


def _put(store, group: list[Job], counts: list[int], out: np.ndarray) -> None:
    start = 0
    for job, n in zip(group, counts):
        store.put(job, out[start:start + n])
        start += n
