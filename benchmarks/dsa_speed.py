"""Decode-step speed of the DSA lightning indexer, per backend (PyTorch, Triton, fp8, index order).

The timed step is one decode step of ``dsa.DSAIndexer`` at H=64, D=128, k=2048: scores, top-k
and the index mask (the -inf fill inside the step), captured once in a CUDA graph and replayed.
Four backends, side by side in one run, on the same inputs:

- PyTorch: ``backend="torch"`` (bf16 bmm scorer, ``torch.topk``, fill + branchless update);
- Triton: ``backend="triton"`` with a bf16 key cache (fused scorer, then the fused top-k + mask
  of ``default_method``: Triton kernels, or the one-block-per-row CUDA kernel for large batches
  of long rows);
- Triton + fp8: the same on an e4m3 key cache with one float32 scale per key (132 bytes per key;
  the cache is quantised once, outside the step, as a serving stack stores it);
- Triton, index order: the Triton step with ``order="index"``: the same picks and mask, the
  picks by position, so the fused kernel skips its sort of the k picks.

Each row also shows the time to read the bf16 key cache once (B * L * D * 2 bytes) and the fp8
one (B * L * (D + 4) bytes) at the bandwidth of a large device-to-device copy, the published H200
anchor (DeepGEMM fp8 scores + SGLang fast top-k) and the goal of issue 14 for the four default
rows. Sanity checks, not tests: the Triton picks must equal the PyTorch picks on at least 99%
(rounding differs between the scorers), and the fp8 column reports its top-k set overlap with
the bf16 Triton selection on these random inputs.

Default: B in {1, 64} x L in {4096, 65536} (about a minute on an H200). ``--full`` adds B in
{8, 32} and L=16384. ``--eager`` adds eager timings of the PyTorch step (branchy seed form and
branchless), which sync with the host or are bound by dispatch. ``--triton-sweep`` adds the
scorer alone for every launch configuration in ``dsa._triton.CONFIGS``, on bf16 and on fp8
keys; ``--topk-sweep`` the fused top-k + mask alone for 4, 8 and 16 warps and 1, 2, 4 and 8
segments per row.

Usage::

    python benchmarks/dsa_speed.py [--full] [--eager] [--reps N] [--out table.md]
                                   [--json raw.json] [--triton-sweep] [--topk-sweep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import median_time, warm_up
from dsa import DSAIndexer, indexer_scores, quantize_keys_fp8
from dsa import _triton as dsa_triton
from dsa import _triton_topk as dsa_topk

HEADS, DIM, TOPK = 64, 128, 2048
BATCHES_FULL, LENGTHS_FULL = (1, 8, 32, 64), (4096, 16384, 65536)
BATCHES_QUICK, LENGTHS_QUICK = (1, 64), (4096, 65536)
# Published H200 decode latency in µs, DeepGEMM fp8 scores + SGLang fast top-k (dsa.md).
H200_ANCHOR_US = {
    (1, 4096): 17.0, (1, 16384): 19.0, (1, 65536): 42.0,
    (8, 4096): 19.0, (8, 16384): 26.0, (8, 65536): 63.0,
    (32, 4096): 24.0, (32, 16384): 42.0, (32, 65536): 118.0,
    (64, 4096): 30.0, (64, 16384): 62.0, (64, 65536): 185.0,
}  # fmt: skip
# Goals of issue 14, graph replay of the whole step on an H200.
GOAL_US = {(1, 4096): 20.0, (1, 65536): 45.0, (64, 4096): 35.0, (64, 65536): 200.0}
BACKENDS = ("torch", "triton", "triton_fp8", "triton_index", "triton_fp8_index")
BACKEND_TITLES = {
    "torch": "PyTorch",
    "triton": "Triton",
    "triton_fp8": "Triton + fp8",
    "triton_index": "Triton, index order",
    "triton_fp8_index": "Triton + fp8, index order",
}

Timer = Callable[[Callable[[], object]], float]


def event_timer(reps: int, warmup: int) -> Timer:
    """Median of `reps` CUDA-event timings of fn, in ms, after `warmup` untimed calls."""

    def time_ms(fn: Callable[[], object]) -> float:
        return median_time(fn, reps=reps, warmup=warmup, clock="device") * 1e3

    return time_ms


def do_bench_timer(reps: int, warmup: int) -> Timer | None:
    """triton.testing.do_bench (median, L2 flushed between calls) sized to about `reps` calls."""
    try:
        from triton.testing import do_bench
    except Exception:
        return None
    rough = event_timer(reps=5, warmup=warmup)

    def time_ms(fn: Callable[[], object]) -> float:
        estimate = max(rough(fn), 1e-3)
        budget_ms = max(estimate * reps, 1.0)
        warm_ms = max(estimate * warmup, 1.0)
        try:
            return float(do_bench(fn, warmup=warm_ms, rep=budget_ms, return_mode="median"))
        except TypeError:  # older triton: no return_mode
            return float(do_bench(fn, warmup=warm_ms, rep=budget_ms, quantiles=[0.5]))

    return time_ms


def measure_bandwidth_gbs() -> float:
    """Device memory bandwidth from a 1 GiB device-to-device copy (read + write), in GB/s."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = event_timer(reps=20, warmup=3)(lambda: dst.copy_(src))
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


def capture_graph(step: Callable[[], object]) -> torch.cuda.CUDAGraph:
    warm_up(step, 3)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _picks(out: Any) -> torch.Tensor:
    return torch.isfinite(out.mask)


def _overlap(picked: torch.Tensor, expected: torch.Tensor) -> float:
    return float((picked & expected).sum() / expected.sum().clamp_min(1))


def indexer_inputs(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 q [B, 1, H, D], k [B, L, D] and w [B, 1, H] on the GPU: Gaussian, from a generator
    seeded by the shape, so every benchmark that times a shape sees the same inputs."""
    gen = torch.Generator(device="cuda").manual_seed(batch * 1_000_003 + length)
    q = torch.randn(batch, 1, HEADS, DIM, generator=gen, device="cuda").bfloat16()
    k = torch.randn(batch, length, DIM, generator=gen, device="cuda").bfloat16()
    w = (torch.randn(batch, 1, HEADS, generator=gen, device="cuda") * (HEADS * DIM) ** -0.5).to(
        torch.bfloat16
    )
    return q, k, w


def bench_config(batch: int, length: int, timer: Timer, *, eager: bool) -> dict[str, Any]:
    q, k, w = indexer_inputs(batch, length)
    k_fp8, k_scale = quantize_keys_fp8(k)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    mask = torch.empty(batch, 1, length, device="cuda")
    plain = DSAIndexer(HEADS, DIM, TOPK, backend="torch")
    fused = DSAIndexer(HEADS, DIM, TOPK, backend="triton")
    by_index = DSAIndexer(HEADS, DIM, TOPK, backend="triton", order="index")
    steps: dict[str, Callable[[], Any]] = {
        "torch": lambda: plain(q, k, w, seq_lens, mask),
        "triton": lambda: fused(q, k, w, seq_lens, mask),
        "triton_fp8": lambda: fused(q, k_fp8, w, seq_lens, mask, k_scale=k_scale),
        "triton_index": lambda: by_index(q, k, w, seq_lens, mask),
        "triton_fp8_index": lambda: by_index(q, k_fp8, w, seq_lens, mask, k_scale=k_scale),
    }

    row: dict[str, Any] = {"B": batch, "L": length, "us": {}, "notes": {}}
    picks: dict[str, torch.Tensor] = {}
    for name, step in steps.items():
        try:
            picks[name] = _picks(step())  # eager first: compiles the Triton kernels
            graph = capture_graph(step)
            row["us"][name] = 1e3 * timer(graph.replay)
            del graph
        except Exception as exc:  # report and go on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:80]
            row["us"][name] = None
            row["notes"][name] = f"n/a ({reason})"
    if "torch" in picks and "triton" in picks:
        overlap = _overlap(picks["triton"], picks["torch"])
        row["triton_overlap_vs_torch"] = overlap
        if overlap < 0.99:
            row["us"]["triton"] = None
            row["notes"]["triton"] = f"n/a (selects other keys: overlap {overlap:.3f})"
    if "triton" in picks and "triton_fp8" in picks:
        row["fp8_overlap_vs_bf16"] = _overlap(picks["triton_fp8"], picks["triton"])
    if dsa_triton.triton_available(q, k, w):
        row["triton_scorer_config"] = dsa_triton.default_config(batch, length, q.device).name

    if eager:
        unpatched = DSAIndexer(HEADS, DIM, TOPK, patched=False, backend="torch")
        row["eager_unpatched_us"] = 1e3 * timer(lambda: unpatched(q, k, w, seq_lens, mask))
        row["eager_patched_us"] = 1e3 * timer(steps["torch"])
    return row


def bench_scorer_sweep(batch: int, length: int, timer: Timer, keys: str = "bf16") -> dict[str, Any]:
    """Scorer alone (graph replay, no top-k): PyTorch path and every Triton config, on bf16
    keys or on fp8 keys with their scales (``keys="fp8"``)."""
    q, k, w = indexer_inputs(batch, length)
    scale = None
    if keys == "fp8":
        k, scale = quantize_keys_fp8(k)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    limit = seq_lens.view(batch, 1)
    sweep: dict[str, Any] = {"B": batch, "L": length, "keys": keys}
    graph = capture_graph(
        lambda: indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch", k_scale=scale)
    )
    sweep["torch_us"] = 1e3 * timer(graph.replay)
    del graph
    default = dsa_triton.default_config(batch, length, q.device, fp8=scale is not None)
    sweep["default"] = default.name
    reference = indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch", k_scale=scale)
    configs: dict[str, float | str] = {}
    for cfg in dsa_triton.CONFIGS:
        try:
            got = dsa_triton.fused_scores(q, k, w, limit, config=cfg, k_scale=scale)
            err = float((got - reference).norm() / reference.norm())
            if not err < 1e-2:
                configs[cfg.name] = f"wrong (rel err {err:.2e})"
                continue
            graph = capture_graph(
                lambda cfg=cfg: dsa_triton.fused_scores(q, k, w, limit, config=cfg, k_scale=scale)
            )
            configs[cfg.name] = 1e3 * timer(graph.replay)
            del graph
        except Exception as exc:  # report and go on
            configs[cfg.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:60]
    sweep["configs"] = configs
    return sweep


TOPK_WARPS = (4, 8, 16)
TOPK_SEGMENTS = (1, 2, 4, 8)


def bench_topk_sweep(batch: int, length: int, timer: Timer) -> dict[str, Any]:
    """The fused top-k + mask alone (graph replay) for each warp count and segment count."""
    gen = torch.Generator(device="cuda").manual_seed(batch * 1_000_003 + length)
    scores = torch.randn(batch, 1, length, generator=gen, device="cuda")
    mask = torch.empty_like(scores)
    has_keys = torch.empty(batch, 1, dtype=torch.uint8, device="cuda")
    expected = dsa_topk.topk_mask(scores, TOPK, segments=1)
    sweep: dict[str, Any] = {
        "B": batch,
        "L": length,
        "default_segments": dsa_topk.default_segments(batch, length, TOPK, scores.device),
        "us": {},
    }
    for warps in TOPK_WARPS:
        for segments in TOPK_SEGMENTS:
            if segments > 1 and length < 2 * segments * TOPK:
                continue
            name = f"w{warps}-s{segments}"

            def step(warps: int = warps, segments: int = segments) -> torch.Tensor:
                return dsa_topk.topk_mask(
                    scores, TOPK, mask, segments=segments, has_keys=has_keys, num_warps=warps
                )

            try:
                if not torch.equal(step(), expected):
                    sweep["us"][name] = "wrong picks"
                    continue
                graph = capture_graph(step)
                sweep["us"][name] = 1e3 * timer(graph.replay)
                del graph
            except Exception as exc:  # report and go on
                sweep["us"][name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:60]
    return sweep


def render_topk_sweep(sweeps: list[dict[str, Any]]) -> str:
    names = [f"w{w}-s{s}" for w in TOPK_WARPS for s in TOPK_SEGMENTS]
    lines = [
        "",
        "## Fused top-k + mask alone (graph replay, float32 scores, k=2048), µs",
        "",
        "Columns: warps per program, segments per row (s1: one launch); * marks the default.",
        "",
        "| B | L | " + " | ".join(names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for sw in sweeps:
        cells = []
        for name in names:
            value = sw["us"].get(name, "-")
            cell = f"{value:.1f}" if isinstance(value, float) else str(value)
            segments = int(name.split("-s")[1])
            default_warps = dsa_topk._warps(
                dsa_topk._chunk(-(-sw["L"] // sw["default_segments"])),
                dsa_topk._next_power_of_two(TOPK),
            )
            if segments == sw["default_segments"] and name.startswith(f"w{default_warps}-"):
                cell += "*"
            cells.append(cell)
        lines.append(f"| {sw['B']} | {sw['L']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_sweep(sweeps: list[dict[str, Any]]) -> str:
    names = [cfg.name for cfg in dsa_triton.CONFIGS]
    lines = [
        "",
        "## Scorer alone (graph replay of the scorer only, no top-k), µs",
        "",
        "Configs are BLOCK_L x blocks per program, warps, stages (the persistent grid: BLOCK_L,"
        " warps, stages, programs per SM); * marks the default. fp8 keys: e4m3 with a float32"
        " scale per key.",
        "",
        "| keys | B | L | PyTorch | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(names),
    ]
    for sw in sweeps:
        cells = []
        for name in names:
            value = sw["configs"].get(name, "n/a")
            cell = f"{value:.1f}" if isinstance(value, float) else str(value)
            cells.append(cell + ("*" if name == sw["default"] else ""))
        lines.append(
            f"| {sw.get('keys', 'bf16')} | {sw['B']} | {sw['L']} | {sw['torch_us']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return str(triton.__version__)


def fmt_us(value: float | None, note: str | None = None) -> str:
    return f"{value:.1f}" if value is not None else (note or "n/a")


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    titles = [BACKEND_TITLES[name] for name in BACKENDS]
    eager = any("eager_unpatched_us" in r for r in rows)
    extra_head = " | eager unpatched | eager patched" if eager else ""
    lines = [
        "# DSA indexer decode step, graph replay per backend (H=64, D=128, k=2048)",
        "",
        f"- card: {meta['gpu']}",
        f"- torch {meta['torch']}, CUDA {meta['cuda']}, triton {meta['triton']}",
        f"- date: {meta['date_utc']}",
        f"- measured copy bandwidth: {meta['bandwidth_gbs']:.0f} GB/s; timer: {meta['timer']}",
        "- step = scores + top-k + index mask (the -inf fill inside); medians in µs; the "
        "fused top-k: `default_method` (rows of fewer than 8k scores: the merge method; "
        "longer rows: the rows method, one CUDA block per row, where there are at least 3/8 "
        "as many rows as SMs, else the bucket method; the Triton methods select with "
        f"{meta['radix_bits']}-bit digits)",
        "",
        "| B | L | " + " | ".join(titles) + extra_head + " | bf16 K-read floor "
        "| fp8 K-read floor | H200 anchor | goal | best | meets goal | fp8 top-k overlap |",
        "|---:|---:|"
        + "---:|" * len(titles)
        + ("---:|---:|" if eager else "")
        + "---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        cells = [fmt_us(r["us"].get(name), r["notes"].get(name)) for name in BACKENDS]
        timed = [r["us"][name] for name in BACKENDS if r["us"].get(name) is not None]
        best = min(timed) if timed else None
        goal = r.get("goal_us")
        meets = "" if goal is None or best is None else ("yes" if best <= goal else "no")
        overlap = r.get("fp8_overlap_vs_bf16")
        extra = (
            f" | {r['eager_unpatched_us']:.1f} | {r['eager_patched_us']:.1f}"
            if "eager_unpatched_us" in r
            else (" | n/a | n/a" if eager else "")
        )
        lines.append(
            f"| {r['B']} | {r['L']} | "
            + " | ".join(cells)
            + extra
            + f" | {r['floor_bf16_us']:.1f} | {r['floor_fp8_us']:.1f}"
            f" | {fmt_us(r['h200_anchor_us'])} | {fmt_us(goal, '-')} | {fmt_us(best)} | {meets}"
            f" | {'n/a' if overlap is None else f'{overlap:.4f}'} |"
        )
    lines += [
        "",
        "Floors: the time to read the key cache once at the measured copy bandwidth (bf16: "
        "B * L * 256 bytes; fp8: B * L * 132 bytes). Anchor: the published fused fp8 kernel "
        'pair on an H200. Goal: issue 14, on an H200. "best" is the fastest backend of the '
        'row. "fp8 top-k overlap": the share of the bf16 Triton selection that the fp8 '
        "Triton selection keeps on these random Gaussian inputs (see docs/dsa.md for a "
        "measurement over more draws).",
        "",
        "PyTorch: bf16 bmm scorer, torch.topk, -inf fill and branchless scatter update. Triton: "
        "the fused scorer, then the fused top-k (a radix select; see dsa/_triton_topk.py for "
        "its methods), which sorts the picks and writes the whole mask row. Triton + fp8: "
        "the same on e4m3 keys with a float32 scale per key, the queries quantised to e4m3 "
        "in the scorer (a power-of-two scale per head). Index order: the step with "
        '`order="index"` (the picks by position: no sort of the k picks).',
    ]
    return "\n".join(lines) + "\n"


def render_document(payload: dict[str, Any]) -> str:
    """The whole markdown of a run from its raw results (the --json payload): the step table,
    then the scorer and top-k sweeps when the run made them."""
    table = render(payload["rows"], payload["meta"])
    if payload.get("scorer_sweep"):
        table += render_sweep(payload["scorer_sweep"])
    if payload.get("topk_sweep"):
        table += render_topk_sweep(payload["topk_sweep"])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the default grid, B in {1, 64} x L in {4096, 65536}"
    )
    parser.add_argument(
        "--full", action="store_true", help="B in {1, 8, 32, 64} x L in {4096, 16384, 65536}"
    )
    parser.add_argument(
        "--eager", action="store_true", help="also time the PyTorch step eagerly, both forms"
    )
    parser.add_argument("--reps", type=int, default=100, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per variant")
    parser.add_argument(
        "--timer",
        choices=("auto", "events"),
        default="auto",
        help="auto: triton.testing.do_bench if importable, else CUDA events",
    )
    parser.add_argument(
        "--triton-sweep",
        action="store_true",
        help="also time the scorer alone: PyTorch and every Triton launch configuration, "
        "on bf16 and on fp8 keys",
    )
    parser.add_argument(
        "--topk-sweep",
        action="store_true",
        help="also time the fused top-k alone for each warp count and segment count",
    )
    parser.add_argument(
        "--radix-bits",
        type=int,
        choices=dsa_topk.RADIX_WIDTHS,
        help="digit width of the fused top-k's radix select for this run "
        "(sets dsa._triton_topk.DEFAULT_RADIX_BITS; default: the library's)",
    )
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if args.radix_bits is not None:
        dsa_topk.DEFAULT_RADIX_BITS = args.radix_bits

    if not torch.cuda.is_available():
        print("dsa_speed.py needs a CUDA GPU; torch.cuda.is_available() is False.", file=sys.stderr)
        return 2

    began = time.perf_counter()
    timer: Timer | None = None
    timer_name = "cuda events"
    if args.timer == "auto":
        timer = do_bench_timer(args.reps, args.warmup)
        timer_name = "triton.testing.do_bench (median)" if timer else timer_name
    if timer is None:
        timer = event_timer(args.reps, args.warmup)
    timer_name += f", ~{args.reps} reps"

    bandwidth = measure_bandwidth_gbs()
    torch.cuda.empty_cache()
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "bandwidth_gbs": bandwidth,
        "timer": timer_name,
        "heads": HEADS, "head_dim": DIM, "topk": TOPK, "dtype": "bfloat16",
        "triton": triton_version(),
        "radix_bits": dsa_topk.DEFAULT_RADIX_BITS,
    }  # fmt: skip
    batches = BATCHES_FULL if args.full else BATCHES_QUICK
    lengths = LENGTHS_FULL if args.full else LENGTHS_QUICK

    rows = []
    for batch in batches:
        for length in lengths:
            row = bench_config(batch, length, timer, eager=args.eager)
            torch.cuda.empty_cache()  # each (B, L) allocates afresh; keep the pool small
            row["floor_bf16_us"] = batch * length * DIM * 2 / (bandwidth * 1e9) * 1e6
            row["floor_fp8_us"] = batch * length * (DIM + 4) / (bandwidth * 1e9) * 1e6
            row["h200_anchor_us"] = H200_ANCHOR_US.get((batch, length))
            row["goal_us"] = GOAL_US.get((batch, length))
            rows.append(row)
            times = "  ".join(
                f"{name} {fmt_us(row['us'].get(name), row['notes'].get(name))}" for name in BACKENDS
            )
            print(f"B={batch:<3} L={length:<6} {times} µs", file=sys.stderr, flush=True)

    sweeps: list[dict[str, Any]] = []
    if args.triton_sweep and dsa_triton.triton_available():
        for batch in batches:
            for length in lengths:
                for keys in ("bf16", "fp8"):
                    sweeps.append(bench_scorer_sweep(batch, length, timer, keys))
                torch.cuda.empty_cache()
                print(f"sweep {sweeps[-1]}", file=sys.stderr, flush=True)

    topk_sweeps: list[dict[str, Any]] = []
    if args.topk_sweep and dsa_triton.triton_available():
        for batch in batches:
            for length in lengths:
                topk_sweeps.append(bench_topk_sweep(batch, length, timer))
                torch.cuda.empty_cache()
                print(f"topk sweep {topk_sweeps[-1]}", file=sys.stderr, flush=True)

    table = render_document(
        {"meta": meta, "rows": rows, "scorer_sweep": sweeps, "topk_sweep": topk_sweeps}
    )
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    if args.json:
        meta["wall_s"] = time.perf_counter() - began
        payload = {"meta": meta, "rows": rows, "scorer_sweep": sweeps, "topk_sweep": topk_sweeps}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
