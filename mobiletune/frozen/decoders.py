"""Filling the cache for a fast engine (a GPU): images decode in worker processes, and the
main process feeds the engine large batches while they go on decoding.

The thread fill (frozen/fill.py) suits an engine that runs on the CPU cores themselves: one
worker per core decodes a chunk, then runs the engine on it. Beside a GPU the cores have
nothing to do but decode, and threads cannot all do it at once: between PIL's calls (which
release the GIL) the crop, flip and numpy glue hold it, and the project's own H200 figures
were 102-370 img/s from 16 cores. Worker processes decode truly in parallel; the main
process concatenates their chunks into batches of `batch` views (the GPU engine's
`TorchEngine` pins them, copies them asynchronously and runs float16 channels_last), and a
writer thread stores the outputs. Workers are forked from a clean `forkserver` process that
imported the decoding code once (forking a process that holds CUDA or OpenMP threads is
unsafe; `spawn`, where there is no forkserver, makes every worker import torch itself), and
they ignore Ctrl-C: the main process owns the interrupt.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch

from mobiletune.data.views import decode_chunk
from mobiletune.errors import INTERRUPT, DataError
from mobiletune.frozen.fill import chunks, keyed, policy, put_rows
from mobiletune.frozen.store import Job
from mobiletune.parallel import Completed

GPU_BATCH = 256  # views per engine call: a GPU runs MobileNetV2 near its peak from ~128
CHUNK = 16  # views per process task: small enough to spread, big enough to amortize pickling


# Below this many images the thread fill is used even beside a GPU: each spawned process
# imports torch (~2 s, in parallel), time in which the threads decode several hundred images.
MIN_JOBS = 1000


def decoder_processes(device: torch.device, jobs: int) -> int:
    """How many decoder processes a fill on `device` should use: 0 (the thread fill) on the
    CPU, where the engine needs the cores itself, and for small fills; else this process's
    share of the machine's cores (torchrun's local ranks split them)."""
    if device.type == "cpu" or jobs < MIN_JOBS:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, (cores or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _context() -> multiprocessing.context.BaseContext:
    """forkserver with the decoding modules preloaded (workers fork ready to decode), or
    spawn where the platform has no forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mobiletune.data.views", "mobiletune.vision"])
    return ctx


def _ignore_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fill_in_processes(store, jobs: list[Job], make_engine: Callable[[], Callable], *,
                      processes: int, batch: int = GPU_BATCH, chunk: int = CHUNK,
                      on_progress: Callable[[int, int], None] | None = None) -> int:
    """As fill.fill (same entries, stored through `store.put`), with `processes` decoder
    processes and engine calls of up to `batch` views on the calling thread. Every image
    decoded before an error (an image that no longer decodes) is run and stored; after an
    interrupt, every batch already run."""
    if not jobs:
        return 0
    work = [[keyed(store, j) for j in group] for group in chunks(jobs, store.views, chunk)]
    done, writes = 0, []
    ctx = _context()
    with ProcessPoolExecutor(processes, ctx, initializer=_ignore_interrupt) as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="cache-write") as writer:
        results = Completed(pool, functools.partial(decode_chunk, policy(store)), work,
                            4 * processes)  # enough queued that no process waits on the GPU
        engine, pending = None, []

        def run_pending() -> None:
            nonlocal done, pending
            writes.append(_run(engine, pending, writer, store))
            done += sum(len(g) for g, *_ in pending)
            pending = []
            if on_progress:
                on_progress(done, len(jobs))

        try:
            engine = make_engine()  # built while the first chunks decode
            for group, (counts, pixels) in results:
                pending.append(([(p, k) for p, k, _ in group], counts, pixels))
                if sum(len(px) for *_, px in pending) >= batch:
                    run_pending()
                if INTERRUPT.is_set():  # a Ctrl-C whose KeyboardInterrupt Python swallowed
                    raise KeyboardInterrupt
            if pending:
                run_pending()
        except DataError:  # an image that no longer decodes: keep what decoded before it
            if pending and engine is not None:
                run_pending()
            raise
        finally:
            results.close()
            for w in writes:
                w.result()
            store.flush()
    return done


def _run(engine: Callable, pending: list, writer: ThreadPoolExecutor, store) -> Future:
    """One engine call on the decoded chunks in `pending`; their outputs go to the writer."""
    x = torch.from_numpy(np.concatenate([px for *_, px in pending]))
    out = engine(x).to(torch.float16).cpu().numpy()
    jobs = [job for group, _, _ in pending for job in group]
    counts = [n for _, group_counts, _ in pending for n in group_counts]
    return writer.submit(put_rows, store, jobs, counts, out)
