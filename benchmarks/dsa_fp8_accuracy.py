"""How much fp8 (e4m3, one float32 scale per key) keys change the indexer's top-k selection.

For each draw: bf16 q [B, 1, 64, 128], w [B, 1, 64] and keys [B, L, 128]; the top-2048 set of
the bf16 keys, and the top-2048 set of the same keys quantised with ``dsa.quantize_keys_fp8``,
both scored by ``dsa.indexer_scores`` on the PyTorch path (float32 on CPU). Reported per L: the
mean and the minimum over rows of |fp8 set & bf16 set| / 2048, and for scale the same overlap
between bf16 keys and the unrounded float32 keys they came from.

Two key distributions: "gaussian" (iid N(0, 1)) and "outlier channels" (N(0, 1) with 4 of the
128 channels scaled by 20, the shape of activation outliers in LLMs, which inflates each key's
max and so its fp8 step). Queries are N(0, 1); head weights N(0, 1) * (H * D) ** -0.5.
Random data, not a trained model's: it says how selection reacts to the rounding, not what a
served model would pick.

Runs on CPU (the reference path) or on a GPU (``--device cuda``)::

    python benchmarks/dsa_fp8_accuracy.py [--device cpu] [--rows 4] [--draws 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsa import indexer_scores, quantize_keys_fp8, select_topk

HEADS, DIM, TOPK = 64, 128, 2048
LENGTHS = (4096, 16384, 65536)
DISTRIBUTIONS = ("gaussian", "outlier channels")


def make_keys(rows: int, length: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    keys = torch.randn(rows, length, DIM, generator=gen)
    if kind == "outlier channels":
        channels = torch.randperm(DIM, generator=gen)[:4]
        keys[..., channels] *= 20.0
    return keys


def overlaps(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """|a & b| / k per row, for index rows [rows, 1, k] without sentinels."""
    out = []
    for row_a, row_b in zip(a[:, 0].tolist(), b[:, 0].tolist(), strict=True):
        out.append(len(set(row_a) & set(row_b)) / len(row_b))
    return out


def measure(rows: int, draws: int, device: str, seed: int) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for kind in DISTRIBUTIONS:
        for length in LENGTHS:
            fp8_vs_bf16: list[float] = []
            bf16_vs_fp32: list[float] = []
            for draw in range(draws):
                gen = torch.Generator().manual_seed(seed + 1000 * draw + length)
                q = torch.randn(rows, 1, HEADS, DIM, generator=gen).bfloat16()
                w = torch.randn(rows, 1, HEADS, generator=gen) * (HEADS * DIM) ** -0.5
                exact = make_keys(rows, length, kind, gen)
                bf16 = exact.bfloat16()
                values, scales = quantize_keys_fp8(bf16)
                qf, wf = q.float().to(device), w.to(device)
                pick_exact = select_topk(indexer_scores(qf, exact.to(device), wf), TOPK)
                pick_bf16 = select_topk(indexer_scores(qf, bf16.float().to(device), wf), TOPK)
                fp8_scores = indexer_scores(qf, values.to(device), wf, k_scale=scales.to(device))
                pick_fp8 = select_topk(fp8_scores, TOPK)
                fp8_vs_bf16 += overlaps(pick_fp8.cpu(), pick_bf16.cpu())
                bf16_vs_fp32 += overlaps(pick_bf16.cpu(), pick_exact.cpu())
            results.append(
                {
                    "keys": kind,
                    "L": length,
                    "rows": len(fp8_vs_bf16),
                    "fp8_vs_bf16_mean": sum(fp8_vs_bf16) / len(fp8_vs_bf16),
                    "fp8_vs_bf16_min": min(fp8_vs_bf16),
                    "bf16_vs_fp32_mean": sum(bf16_vs_fp32) / len(bf16_vs_fp32),
                    "bf16_vs_fp32_min": min(bf16_vs_fp32),
                }
            )
            print(results[-1], file=sys.stderr, flush=True)
    return results


def render(results: list[dict[str, object]], device: str) -> str:
    lines = [
        "# fp8 keys: top-k set overlap with bf16 keys (H=64, D=128, k=2048)",
        "",
        f"- device: {device}; torch {torch.__version__}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "- overlap = |top-k set of fp8 keys & top-k set of bf16 keys| / k, per row",
        "",
        "| keys | L | rows | fp8 vs bf16, mean | fp8 vs bf16, min | bf16 vs fp32, mean "
        "| bf16 vs fp32, min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['keys']} | {r['L']} | {r['rows']} | {r['fp8_vs_bf16_mean']:.4f} "
            f"| {r['fp8_vs_bf16_min']:.4f} | {r['bf16_vs_fp32_mean']:.4f} "
            f"| {r['bf16_vs_fp32_min']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--rows", type=int, default=4, help="batch rows per draw")
    parser.add_argument("--draws", type=int, default=2, help="draws per (keys, L)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    results = measure(args.rows, args.draws, args.device, args.seed)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    table = render(results, name)
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
