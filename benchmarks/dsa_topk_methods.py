"""The fused DSA top-k + mask alone, by method, side by side (CUDA only).

For k=2048, ``dsa._triton_topk.topk_mask`` with the mask written, in index and score order, on
two kinds of rows: Gaussian float32 ("randn") and the indexer's own scores ("logits": the fused
scorer on fp8 keys, H=64, D=128, Gaussian q, k and w as in ``dsa_speed.py``). Methods: merge
with its default segments; histogram with 8- and 6-bit digits at its default segment length;
bucket at its default segment length and at 2048 to 8192 scores per program; rows (one CUDA
block per row, ``dsa._cuda_topk``) where its kernel can run. Every variant's
indices and mask are checked against the merge method's ("same"); times are CUDA-graph replays
with ``triton.testing.do_bench`` (median), µs.

    python benchmarks/dsa_topk_methods.py [--out FILE.md] [--json FILE.json]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K = 2048
SHAPES = (
    (1, 4096),
    (1, 16384),
    (1, 65536),
    (1, 131072),
    (8, 65536),
    (64, 4096),
    (32, 65536),
    (64, 16384),
    (64, 65536),
    (128, 65536),
)
BUCKET_SEGMENTS = (None, 2048, 4096, 8192)


def indexer_logits(batch: int, length: int) -> torch.Tensor:
    """float32 [batch, length] scores of the fused scorer on fp8 keys."""
    from benchmarks.dsa_speed import indexer_inputs
    from dsa._fp8 import quantize_keys_fp8
    from dsa._scores import indexer_scores

    q, k, w = indexer_inputs(batch, length)
    k_fp8, k_scale = quantize_keys_fp8(k)
    scores = indexer_scores(q, k_fp8, w, backend="triton", k_scale=k_scale)
    return scores.view(batch, length)


def measure() -> list[dict[str, Any]]:
    from benchmarks._timing import graph_replay_us
    from dsa import _triton_topk

    rows: list[dict[str, Any]] = []
    for (batch, length), source, order in (
        (shape, source, order)
        for shape in SHAPES
        for source in ("randn", "logits")
        for order in ("index", "score")
    ):
        if source == "randn":
            torch.manual_seed(0)
            scores = torch.randn(batch, length, device="cuda")
        else:
            scores = indexer_logits(batch, length)
        want_mask = torch.empty_like(scores)
        want = _triton_topk.topk_mask(scores, K, want_mask, method="merge", order=order)
        variants = [("merge", None, None), ("histogram", 8, None), ("histogram", 6, None)]
        variants += [
            ("bucket", None, seg) for seg in BUCKET_SEGMENTS if seg is None or 2 * seg <= length
        ]
        if _triton_topk.rows_method_available(scores.device):
            variants.append(("rows", None, None))
        for method, bits, seg in variants:
            mask = torch.empty_like(scores)

            def step(
                method=method, bits=bits, seg=seg, mask=mask, order=order, scores=scores
            ) -> Any:
                return _triton_topk.topk_mask(
                    scores, K, mask, method=method, order=order, radix_bits=bits,
                    segment_length=seg,
                )  # fmt: skip

            got = step()
            torch.cuda.synchronize()
            same = bool(torch.equal(got, want) and torch.equal(mask, want_mask))
            rows.append(
                {"B": batch, "L": length, "rows": source, "order": order, "method": method,
                 "r": bits, "seg": seg, "same": same, "us": graph_replay_us(step)}
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
    lines = [
        f"# Fused DSA top-k + mask by method ({meta['gpu']})",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}. Command: "
        "`python benchmarks/dsa_topk_methods.py`. k=2048, mask written. Rows: randn = Gaussian "
        "float32; logits = the fused scorer's output on fp8 keys (H=64, D=128). CUDA-graph "
        'replays timed with triton.testing.do_bench (median), µs. "same": indices and mask '
        'equal to the merge method\'s. Segment length "default": `_histogram_segment` (about '
        "four programs per SM). The bucket method's last launch selects with 5-bit digits; the "
        "rows method histograms 11, 11 and 10 bits of the key in shared memory.",
        "",
        "| B | L | rows | order | method | digit bits | scores per program | same | µs |",
        "|---:|---:|---|---|---|---:|---:|:---:|---:|",
    ]
    for r in rows:
        bits = "5 (default)" if r["r"] is None else str(r["r"])
        seg = "default" if r["seg"] is None else str(r["seg"])
        if r["method"] in ("merge", "rows"):
            seg = "-"
        if r["method"] == "rows":
            bits = "11, 11, 10"
        lines.append(
            f"| {r['B']} | {r['L']} | {r.get('rows', 'randn')} | {r['order']} | {r['method']} | "
            f"{bits} | {seg} | {'yes' if r['same'] else 'NO'} | {r['us']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import run_table_script

    return run_table_script(__doc__ or "", "dsa_topk_methods.py", measure, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
