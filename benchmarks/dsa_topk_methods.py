"""The fused DSA top-k + mask alone, by method, side by side (CUDA only).

For k=2048 over Gaussian float32 rows, ``dsa._triton_topk.topk_mask`` with the mask written, in
index and score order: the merge method with its default segments, and the histogram method
with 8- and 6-bit digits at its default segment length and at 1024 to 8192 scores per program.
Every variant's indices and mask are checked against the merge method's ("same"); times are
CUDA-graph replays with ``triton.testing.do_bench`` (median), µs.

    python benchmarks/dsa_topk_methods.py [--out FILE.md] [--json FILE.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K = 2048
SHAPES = ((1, 4096), (1, 16384), (1, 65536), (1, 131072), (64, 4096), (64, 65536))
SEGMENTS = (None, 1024, 2048, 4096, 8192)


def graph_us(fn: Any) -> float:
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1e3 * do_bench(graph.replay, warmup=10, rep=60, return_mode="median")


def measure() -> list[dict[str, Any]]:
    from dsa import _triton_topk

    rows: list[dict[str, Any]] = []
    for batch, length in SHAPES:
        torch.manual_seed(0)
        scores = torch.randn(batch, length, device="cuda")
        for order in ("index", "score"):
            want_mask = torch.empty_like(scores)
            want = _triton_topk.topk_mask(scores, K, want_mask, method="merge", order=order)
            variants = [("merge", None, None)] + [
                ("histogram", bits, seg)
                for bits in (8, 6)
                for seg in SEGMENTS
                if seg is None or seg == 1024 or 2 * seg <= length
            ]
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
                    {"B": batch, "L": length, "order": order, "method": method, "r": bits,
                     "seg": seg, "same": same, "us": graph_us(step)}
                )  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def render(rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
    lines = [
        f"# Fused DSA top-k + mask by method ({meta['gpu']})",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}. Command: "
        "`python benchmarks/dsa_topk_methods.py`. k=2048, Gaussian float32 rows, mask written; "
        'CUDA-graph replays timed with triton.testing.do_bench (median), µs. "same": indices '
        'and mask equal to the merge method\'s. Segment length "default": '
        "`_histogram_segment` (about four programs per SM).",
        "",
        "| B | L | order | method | digit bits | scores per program | same | µs |",
        "|---:|---:|---|---|---:|---:|:---:|---:|",
    ]
    for r in rows:
        bits = "5 (default)" if r["r"] is None else str(r["r"])
        seg = "-" if r["method"] == "merge" else ("default" if r["seg"] is None else str(r["seg"]))
        lines.append(
            f"| {r['B']} | {r['L']} | {r['order']} | {r['method']} | {bits} | {seg} | "
            f"{'yes' if r['same'] else 'NO'} | {r['us']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--render", type=Path, help="only render a JSON file an earlier run wrote")
    parser.add_argument("--meta", default="{}", help="with --render: card, versions, date (JSON)")
    args = parser.parse_args(argv)
    if args.render:
        rows, meta = json.loads(args.render.read_text()), json.loads(args.meta)
    else:
        if not torch.cuda.is_available():
            print("dsa_topk_methods.py needs a CUDA GPU", file=sys.stderr)
            return 2
        import triton

        rows = measure()
        meta = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        if args.json:
            args.json.write_text(json.dumps(rows))
    text = render(rows, meta)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
