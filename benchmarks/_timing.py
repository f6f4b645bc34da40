"""The one timer and the one side-stream warm-up shared by the benchmarks and the GPU tests.

Benchmark scripts import it as ``benchmarks._timing`` (each puts the repository root on
``sys.path``); tests do the same (``tests/conftest.py`` puts the root there).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["graph_replay_us", "median_time", "warm_up"]


def warm_up(fn: Callable[[], Any], k: int = 3) -> Any:
    """Run ``fn()`` ``k`` times on a side stream, then make the current stream wait for it.

    This is what a step needs before a capture: library handles, caches and lazily compiled
    kernels are created outside the capture, on a stream that is not the capturing one. Without
    CUDA the calls simply run ``k`` times. Returns the last call's result.
    """
    if not torch.cuda.is_available():
        out = None
        for _ in range(k):
            out = fn()
        return out
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    out = None
    with torch.cuda.stream(side):
        for _ in range(k):
            out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def median_time(
    fn: Callable[[], Any],
    *,
    reps: int,
    calls: int = 1,
    warmup: int = 0,
    clock: str = "device",
    wait: bool = True,
) -> float:
    """Median over ``reps`` rounds of the seconds per call of ``calls`` back-to-back ``fn()``.

    ``clock="device"``: CUDA events around each round, all rounds recorded back to back and the
    device synchronised once at the end (GPU time, no host gaps between rounds); without CUDA
    it falls back to the host clock. ``clock="host"``: ``time.perf_counter`` around each round,
    with the device synchronised before the round starts and, when ``wait`` is true, before the
    clock stops (``wait=False`` measures only the host's launch cost). ``warmup`` untimed calls
    run first.
    """
    if clock not in ("device", "host"):
        raise ValueError(f"clock={clock!r}; allowed values: 'device', 'host'")
    if reps < 1 or calls < 1:
        raise ValueError(f"reps={reps} and calls={calls} must both be >= 1")
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if clock == "device" and cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        torch.cuda.synchronize()
        for start, end in zip(starts, ends, strict=True):
            start.record()
            for _ in range(calls):
                fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(
            s.elapsed_time(e) / 1e3 / calls for s, e in zip(starts, ends, strict=True)
        )
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        if cuda and wait:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - began) / calls)
    if cuda and not wait:
        torch.cuda.synchronize()
    return statistics.median(times)


def graph_replay_us(fn: Callable[[], Any], *, warmup_ms: int = 10, rep_ms: int = 60) -> float:
    """Median replay time in µs of a CUDA graph of ``fn`` (CUDA only).

    ``fn`` runs once eagerly (compiling what it launches) and once more through ``warm_up``,
    is captured, and the graph's replays are timed with ``triton.testing.do_bench`` (warm-up
    and measuring budgets in ms).
    """
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    warm_up(fn, k=1)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1e3 * float(do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
