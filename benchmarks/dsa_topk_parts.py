"""Where the fused DSA top-k's time goes: the kernel per k, next to its pieces alone (CUDA).

Times, as CUDA-graph replays (triton.testing.do_bench, median): an empty Triton kernel (the
replay floor), ``dsa._triton_topk.topk_mask`` (+ mask) for k in {256, 512, 1024, 2048} with one
launch per row and with the default segments, ``torch.topk`` at k=2048, ``tl.sort`` of N packed
values in one program (int64 as the kernel sorts them, and int32), and 1 or 4 ``tl.histogram``
passes over 4096 keys (the radix select's passes). With ``--radix``: only the fused top-k
+ mask at k=2048 for each radix digit width (8 or 11 bits), order of the picks (score or
index) and segment count near the default.

Usage::

    python benchmarks/dsa_topk_parts.py > table.md
    python benchmarks/dsa_topk_parts.py --radix > radix.md
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dsa._triton_topk as fused  # noqa: E402
from benchmarks._timing import graph_replay_us  # noqa: E402


def replay_us(fn: Callable[[], Any]) -> float:
    return graph_replay_us(fn, warmup_ms=25, rep_ms=200)


@triton.jit
def sort_kernel(src, dst, N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, N)
    values = tl.sort(tl.load(src + row * N + offs), descending=True)
    tl.store(dst + row * N + offs, values)


@triton.jit
def histogram_kernel(src, dst, N: tl.constexpr, PASSES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x = tl.load(src + row * N + tl.arange(0, N))
    counts = tl.zeros([256], tl.int32)
    for p in tl.static_range(PASSES):
        counts += tl.histogram(((x >> (8 * p)) & 255).to(tl.int32), 256)
        x = x + counts.sum(0)  # each pass depends on the last, as the radix passes do
    tl.store(dst + row * 256 + tl.arange(0, 256), counts)


@triton.jit
def empty_kernel(dst):
    tl.store(dst + tl.program_id(0), 1)


def radix_table() -> None:
    """The fused top-k + mask at k=2048 per radix digit width, order and segment count."""
    props = torch.cuda.get_device_properties(0)
    print(
        f"# Fused DSA top-k: radix digit width and order ({props.name}, torch "
        f"{torch.__version__}, triton {triton.__version__})\n"
    )
    print("| what | B | L or N | warps | µs |")
    print("|---|---:|---:|---:|---:|")
    for batch in (1, 64):
        for length in (4096, 65536):
            scores = torch.randn(batch, length, device="cuda")
            mask = torch.empty_like(scores)
            default = fused.default_segments(batch, length, 2048, scores.device)
            for order in fused.ORDERS:
                for bits in fused.RADIX_WIDTHS:
                    for segments in sorted({1, default, 2 * default, max(default // 2, 1)}):
                        if segments > 1 and length < 2 * segments * 2048:
                            continue
                        step = partial(
                            fused.topk_mask, scores, 2048, mask, segments=segments,
                            order=order, radix_bits=bits,
                        )  # fmt: skip
                        print(
                            f"| topk_mask k=2048 order={order} radix={bits} "
                            f"segments={segments} | {batch} | {length} | auto "
                            f"| {replay_us(step):.1f} |"
                        )


def main() -> None:
    if "--radix" in sys.argv[1:]:
        radix_table()
        return
    props = torch.cuda.get_device_properties(0)
    print(
        f"# Fused DSA top-k, piece by piece ({props.name}, torch {torch.__version__}, "
        f"triton {triton.__version__})\n"
    )
    print("| what | B | L or N | warps | µs |")
    print("|---|---:|---:|---:|---:|")
    flag = torch.empty(64, dtype=torch.int32, device="cuda")
    print(f"| empty kernel | 1 | - | 4 | {replay_us(partial(empty_kernel[(1,)], flag)):.1f} |")
    for batch in (1, 64):
        for length in (4096, 65536):
            scores = torch.randn(batch, length, device="cuda")
            mask = torch.empty_like(scores)
            for k in (256, 512, 1024, 2048):
                for segments in (1, None):
                    shown = segments or fused.default_segments(batch, length, k, scores.device)

                    step = partial(fused.topk_mask, scores, k, mask, segments=segments)
                    print(
                        f"| topk_mask k={k} segments={shown} | {batch} | {length} | auto "
                        f"| {replay_us(step):.1f} |"
                    )
            us = replay_us(partial(torch.topk, scores, 2048))
            print(f"| torch.topk k=2048 | {batch} | {length} | - | {us:.1f} |")
    for n in (256, 1024, 2048, 4096):
        for dtype in (torch.int64, torch.int32):
            for warps in (8, 16):
                src = torch.randint(0, 1 << 30, (1, n), device="cuda", dtype=dtype)
                dst = torch.empty_like(src)
                us = replay_us(partial(sort_kernel[(1,)], src, dst, N=n, num_warps=warps))
                print(f"| tl.sort {dtype} | 1 | {n} | {warps} | {us:.1f} |")
    keys = torch.randint(0, 1 << 30, (1, 4096), device="cuda", dtype=torch.int32)
    counts = torch.empty(256, dtype=torch.int32, device="cuda")
    for warps in (8, 16):
        for passes in (1, 4):
            launch = histogram_kernel[(1,)]
            us = replay_us(partial(launch, keys, counts, N=4096, PASSES=passes, num_warps=warps))
            print(f"| tl.histogram x{passes} | 1 | 4096 | {warps} | {us:.1f} |")


if __name__ == "__main__":
    main()
