"""Intra-op thread settings of the fusion engine.

Most of a fusion is small tensor work, which extra OpenMP threads only slow down: they
wait for each other, and unless ``OMP_WAIT_POLICY=PASSIVE`` is set they busy-wait between
operations, taking the cores other work needs (2-10x slower runs on a busy 2-core
machine). So :func:`~pyro_fusion.fuse` runs on one thread, and only large matrix products
may use more: :class:`GemmThreads` times them on one thread and on the caller's threads
and keeps the faster, since which one wins depends on how busy the machine is.
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Dict, Iterator, List, Optional

import torch

#: products of at least this many multiply-adds are "large"
LARGE_GEMM = 1 << 25


@contextlib.contextmanager
def intra_op_threads(num_threads: Optional[int]) -> Iterator[None]:
    """Run the block with ``num_threads`` intra-op threads (None: unchanged), restoring the
    caller's setting."""
    before = torch.get_num_threads()
    if num_threads is None or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class GemmThreads:
    """
    Chooses, by timing, between one intra-op thread and ``threads`` for large products:
    each option is tried ``trials`` times, then the faster per multiply-add (median of its
    last samples) is used, and the other is tried again every ``revisit`` products.

    Example::

        >>> chooser = GemmThreads(threads=2)
        >>> with chooser.run(1 << 30):  # a large product: timed on 1 or 2 threads
        ...     product = torch.ones(64, 64) @ torch.ones(64, 64)

    :param int threads: the alternative to one thread (the caller's setting).
    """

    def __init__(self, threads: int, trials: int = 2, revisit: int = 64, keep: int = 5):
        self.options = [1] if threads <= 1 else [1, threads]
        self.trials, self.revisit, self.keep = trials, revisit, keep
        self.samples: Dict[int, List[float]] = {n: [] for n in self.options}
        self.calls = 0

    def choose(self) -> int:
        """The thread count for the next large product."""
        self.calls += 1
        untried = [n for n in self.options if len(self.samples[n]) < self.trials]
        if untried:
            return untried[0]
        speed = {n: sorted(s)[len(s) // 2] for n, s in self.samples.items()}
        best = min(speed, key=speed.get)
        if self.calls % self.revisit == 0:
            return next(n for n in self.options if n != best)
        return best

    @contextlib.contextmanager
    def run(self, macs: int) -> Iterator[None]:
        """Run one product of ``macs`` multiply-adds (small ones as they are)."""
        if len(self.options) == 1 or macs < LARGE_GEMM:
            yield
            return
        threads = self.choose()
        start = time.perf_counter()
        with intra_op_threads(threads):
            yield
        samples = self.samples[threads]
        samples.append((time.perf_counter() - start) / macs)
        del samples[: -self.keep]


_ACTIVE: ContextVar[Optional[GemmThreads]] = ContextVar("pyro_fusion_gemm_threads", default=None)


@contextlib.contextmanager
def engine_threads(num_threads: Optional[int]) -> Iterator[None]:
    """The engine's setting: ``num_threads`` for everything (default use: 1), and large
    products chosen by a :class:`GemmThreads` over the caller's setting. None: the
    caller's setting for everything."""
    if num_threads is None:
        yield
        return
    token = _ACTIVE.set(GemmThreads(torch.get_num_threads()))
    try:
        with intra_op_threads(num_threads):
            yield
    finally:
        _ACTIVE.reset(token)


def gemm_threads(macs: int):
    """Context for one product of ``macs`` multiply-adds under :func:`engine_threads`."""
    chooser = _ACTIVE.get()
    return contextlib.nullcontext() if chooser is None else chooser.run(macs)
