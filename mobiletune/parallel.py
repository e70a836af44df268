"""Chunks of work on one thread per core, results as they complete.

The cache fill and `predict` both decode images (PIL, which releases the GIL) and run an
engine on them (ONNX Runtime, which releases it too). On a 2-core machine, one decode thread
beside an engine that uses both cores means three threads on two cores: whenever the decoder
runs it stalls one engine thread, and the other waits for it at the end of each operator
(the fill ran at 77% of the engine alone that way). A worker per core that decodes a chunk
and then runs the engine on it, with an engine that runs each call on its caller's thread
(`concurrent`: ONNX Runtime with one intra-op thread), never puts two threads on a core.
Engines that are not concurrent are called one at a time (`calling`), while the other
workers decode.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import Callable, Iterator, TypeVar

import torch

C = TypeVar("C")
R = TypeVar("R")


def workers() -> int:
    """One worker per core this process may use (torchrun gives each rank its share)."""
    return max(1, torch.get_num_threads())


def calling(engine, lock: threading.Lock) -> contextlib.AbstractContextManager:
    """What a worker holds while it calls `engine`: nothing for a concurrent engine; else
    `lock` (one per pool), so an engine that uses every core itself runs one call at a time."""
    return contextlib.nullcontext() if getattr(engine, "concurrent", False) else lock


class Completed:
    """(chunk, work(chunk)) for every chunk, in the order they finish, with at most `window`
    in flight; the first `window` start at once, before the caller iterates. The first
    failure is raised once every chunk already running beside it has finished and come out
    (a fill stores them: an error never throws away work that completes). `close()` (or any
    other exit from a `for` over it) starts nothing more; what is running finishes
    unreported."""

    def __init__(self, pool: Executor, work: Callable[[C], R], chunks: list[C],
                 window: int) -> None:
        self.pool, self.work, self.rest = pool, work, iter(chunks[window:])
        self.pending: dict[Future, C] = {pool.submit(work, c): c for c in chunks[:window]}

    def __iter__(self) -> Iterator[tuple[C, R]]:
        try:
            while self.pending:
                done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
                failure = None
                for f in done:
                    chunk = self.pending.pop(f)
                    if f.exception() is None:
                        yield chunk, f.result()
                    elif failure is None:
                        failure = f.exception()
                if failure is not None:
                    yield from self._drain()
                    raise failure
                for c in itertools.islice(self.rest, len(done)):
                    self.pending[self.pool.submit(self.work, c)] = c
        finally:
            self.close()

    def _drain(self) -> Iterator[tuple[C, R]]:
        """The chunks still running, once they finish (their own failures dropped: the
        first one is what the caller hears about)."""
        self.rest = iter(())
        for f in [f for f in self.pending if f.cancel()]:
            del self.pending[f]
        for f in wait(self.pending).done:
            chunk = self.pending.pop(f)
            if f.exception() is None:
                yield chunk, f.result()

    def close(self) -> None:
        for f in self.pending:
            f.cancel()
        self.rest = iter(())
