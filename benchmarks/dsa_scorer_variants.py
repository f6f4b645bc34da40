"""The DSA indexer scorer alone, four ways of doing q . k, side by side (CUDA only).

One standalone Triton kernel with a compile-time switch (the library kernel's loop: load a block
of keys, q . k on the tensor cores, relu, head-weighted sum, per-key scale; on the library's
block grid: the persistent grid that fp8 problems now take is timed
on the library's kernel by ``benchmarks/dsa_speed.py --triton-sweep``):

- ``bf16``: bf16 keys and queries;
- ``fp8->bf16``: e4m3 keys cast to bf16 in registers, bf16 queries (the library's fp8 path
  before queries were quantised);
- ``fp8->fp16``: e4m3 keys cast to fp16, queries cast to fp16;
- ``fp8xfp8``: e4m3 keys and e4m3 queries (a scale per head folded into the head weights, the
  published design and the library's fp8 path now).

For each, a few launch configurations (keys per block, blocks per program, warps, stages), at
B in {1, 64} x L in {4096, 65536} and B=64, L=16384 (H=64, D=128, one query token), timed as
CUDA-graph replays with ``triton.testing.do_bench`` (median). "overlap" is the share of the
bf16 top-2048 set that the variant's top-2048 keeps (random Gaussian inputs).

    python benchmarks/dsa_scorer_variants.py [--out FILE.md] [--json FILE.json]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H, D, K = 64, 128, 2048
MODES = ("bf16", "fp8->bf16", "fp8->fp16", "fp8xfp8")
CONFIGS = ((64, 1, 4, 1), (128, 8, 4, 3), (128, 4, 4, 3), (256, 2, 8, 3), (256, 8, 8, 3))
SHAPES = ((1, 4096), (1, 65536), (64, 4096), (64, 16384), (64, 65536))


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def scores_kernel(
        q_ptr, k_ptr, w_ptr, out_ptr, scale_ptr, length,
        H: tl.constexpr, D: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
        MODE: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        chunk = tl.program_id(1)
        offs_h = tl.arange(0, H)
        offs_d = tl.arange(0, D)
        q = tl.load(q_ptr + row * (H * D) + offs_h[:, None] * D + offs_d[None, :])
        if MODE == 2:
            q = q.to(tl.float16)
        q_t = tl.trans(q)
        w = tl.load(w_ptr + row * H + offs_h).to(tl.float32)
        for i in range(ITERS):
            offs_l = (chunk * ITERS + i) * BLOCK_L + tl.arange(0, BLOCK_L)
            visible = offs_l < length
            keys = tl.load(
                k_ptr + row * length * D + offs_l[:, None] * D + offs_d[None, :],
                mask=visible[:, None],
                other=0.0,
            )
            if MODE == 1:
                keys = keys.to(tl.bfloat16)
            if MODE == 2:
                keys = keys.to(tl.float16)
            logits = tl.maximum(tl.dot(keys, q_t), 0.0)
            scores = tl.sum(logits * w[None, :], axis=1)
            if MODE != 0:
                scores *= tl.load(scale_ptr + row * length + offs_l, mask=visible, other=0.0)
            tl.store(out_ptr + row * length + offs_l, scores, mask=visible)

    return scores_kernel


def measure() -> list[dict[str, Any]]:
    import triton

    from benchmarks._timing import graph_replay_us

    kernel = _kernel()
    rows: list[dict[str, Any]] = []
    for batch, length in SHAPES:
        torch.manual_seed(0)
        q = torch.randn(batch, H, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, length, D, device="cuda", dtype=torch.bfloat16)
        w = torch.rand(batch, H, device="cuda")
        k_scale = (k.float().abs().amax(-1) / 448).clamp_min(1e-30)
        k8 = (k.float() / k_scale[..., None]).clamp(-448, 448).to(torch.float8_e4m3fn)
        q_scale = (q.float().abs().amax(-1) / 448).clamp_min(1e-30)
        q8 = (q.float() / q_scale[..., None]).clamp(-448, 448).to(torch.float8_e4m3fn)
        out = torch.empty(batch, length, device="cuda")
        inputs = (
            (q, k, w, w),
            (q, k8, w, k_scale),
            (q, k8, w, k_scale),
            (q8, k8, w * q_scale, k_scale),
        )
        reference = None
        for mode, (qq, kk, ww, sc) in enumerate(inputs):
            for block_l, iters, warps, stages in CONFIGS:
                grid = (batch, triton.cdiv(length, block_l * iters))

                def launch(
                    qq=qq,
                    kk=kk,
                    ww=ww,
                    sc=sc,
                    mode=mode,
                    grid=grid,
                    cfg=(block_l, iters, warps, stages),
                    out=out,
                    length=length,
                ) -> None:
                    kernel[grid](
                        qq, kk, ww, out, sc, length, H=H, D=D, BLOCK_L=cfg[0], ITERS=cfg[1],
                        MODE=mode, num_warps=cfg[2], num_stages=cfg[3],
                    )  # fmt: skip

                us = graph_replay_us(launch)
                top = out.topk(K, dim=-1).indices
                if reference is None:
                    reference = top.clone()
                overlap = (
                    sum(
                        len(set(a.tolist()) & set(b.tolist()))
                        for a, b in zip(top, reference, strict=True)
                    )
                    / reference.numel()
                )
                rows.append(
                    {"B": batch, "L": length, "mode": MODES[mode],
                     "cfg": [block_l, iters, warps, stages], "us": us, "overlap": overlap}
                )  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
    configs = [tuple(c) for c in CONFIGS]
    names = [f"L{c[0]}x{c[1]}-w{c[2]}-s{c[3]}" for c in configs]
    lines = [
        f"# DSA scorer alone, four ways of doing q . k ({meta['gpu']})",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}. Command: "
        "`python benchmarks/dsa_scorer_variants.py`. H=64, D=128, one query token; CUDA-graph "
        "replays timed with triton.testing.do_bench (median), µs. overlap: the share of the "
        "bf16 top-2048 set that the variant keeps.",
        "",
        "| B | L | q . k | " + " | ".join(names) + " | overlap |",
        "|---:|---:|---|" + "---:|" * len(names) + "---:|",
    ]
    for batch, length in SHAPES:
        for mode in MODES:
            cells = {
                tuple(r["cfg"]): r
                for r in rows
                if (r["B"], r["L"], r["mode"]) == (batch, length, mode)
            }
            if not cells:
                continue
            times = [f"{cells[c]['us']:.1f}" if c in cells else "-" for c in configs]
            overlap = next(iter(cells.values()))["overlap"]
            lines.append(
                f"| {batch} | {length} | {mode} | " + " | ".join(times) + f" | {overlap:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import run_table_script

    return run_table_script(__doc__ or "", "dsa_scorer_variants.py", measure, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
