"""Decode-step speed of the DSA lightning indexer: eager (branchy and branchless), graph, compile.

The timed step is one decode step of ``dsa.DSAIndexer`` at H=64, D=128, k=2048 in bf16: scores,
top-k and the index-mask update, with the -inf mask fill inside the step. Five variants:

- eager unpatched: the branchy seed update; it syncs with the host twice per step, by design;
- eager patched: the branchless update;
- graph replay (PyTorch): the patched step captured once in a CUDA graph, then replayed;
- graph replay (Triton scorer): the same, with the fused Triton scorer (``backend="triton"``);
- compile: ``torch.compile`` of the patched step (compile time is not timed).

Every variant but the Triton one runs the pure-PyTorch scorer (``backend="torch"``), so those
columns stay comparable with runs made before the Triton scorer existed.

Each row also shows the memory-bandwidth floor for reading the bf16 key cache once
(B * L * D * 2 bytes over the bandwidth measured by a large device-to-device copy) and the
published H200 anchor (DeepGEMM fp8 scores + SGLang fast top-k) for the same (B, L).

``--triton-sweep`` adds a table of the scorer alone (``indexer_scores`` captured in a CUDA graph,
no top-k): the PyTorch path and every Triton launch configuration in ``dsa._triton.CONFIGS``,
the default one marked.

Usage::

    python benchmarks/dsa_speed.py [--quick] [--reps N] [--out table.md] [--json raw.json]
                                   [--triton-sweep]
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
from dsa import DSAIndexer, indexer_scores
from dsa import _triton as dsa_triton

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
# Past this much wall time, skip further torch.compile runs so a full run stays short.
COMPILE_BUDGET_S = 150.0

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


def bench_config(
    batch: int, length: int, timer: Timer, *, compile_mode: str, allow_compile: bool
) -> dict[str, Any]:
    gen = torch.Generator(device="cuda").manual_seed(batch * 1_000_003 + length)
    q = torch.randn(batch, 1, HEADS, DIM, generator=gen, device="cuda").bfloat16()
    k = torch.randn(batch, length, DIM, generator=gen, device="cuda").bfloat16()
    w = (torch.randn(batch, 1, HEADS, generator=gen, device="cuda") * (HEADS * DIM) ** -0.5).to(
        torch.bfloat16
    )
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    mask = torch.empty(batch, 1, length, device="cuda")
    patched = DSAIndexer(HEADS, DIM, TOPK, backend="torch")
    unpatched = DSAIndexer(HEADS, DIM, TOPK, patched=False, backend="torch")

    row: dict[str, Any] = {"B": batch, "L": length}
    row["eager_unpatched_us"] = 1e3 * timer(lambda: unpatched(q, k, w, seq_lens, mask))
    row["eager_patched_us"] = 1e3 * timer(lambda: patched(q, k, w, seq_lens, mask))

    graph = capture_graph(lambda: patched(q, k, w, seq_lens, mask))
    row["graph_replay_us"] = 1e3 * timer(graph.replay)
    del graph

    row["graph_replay_triton_us"] = None
    if not dsa_triton.triton_available(q, k, w):
        row["triton_note"] = "n/a (triton unavailable)"
    else:
        try:
            fused = DSAIndexer(HEADS, DIM, TOPK, backend="triton")
            # capture_graph warms up eagerly first, which compiles the kernel outside capture.
            graph = capture_graph(lambda: fused(q, k, w, seq_lens, mask))
            row["triton_config"] = dsa_triton.default_config(batch, length, q.device).name
            row["graph_replay_triton_us"] = 1e3 * timer(graph.replay)
            del graph
            # Sanity check, not a test: the fused scorer must select (nearly) the same keys.
            picked = torch.isfinite(fused(q, k, w, seq_lens, mask.clone()).mask)
            expected = torch.isfinite(patched(q, k, w, seq_lens, mask.clone()).mask)
            overlap = float((picked & expected).sum() / expected.sum().clamp_min(1))
            row["triton_selection_overlap"] = overlap
            if overlap < 0.99:
                row["graph_replay_triton_us"] = None
                row["triton_note"] = f"n/a (selects other keys: overlap {overlap:.3f})"
        except Exception as exc:  # report and go on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:80]
            row["triton_note"] = f"n/a ({reason})"

    row["compile_us"] = None
    if not allow_compile:
        row["compile_note"] = "n/a (time budget for compiles spent)"
    else:
        try:
            compiled = torch.compile(patched, mode=compile_mode)
            began = time.perf_counter()
            for _ in range(3):  # compile and settle, untimed
                compiled(q, k, w, seq_lens, mask)
            torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - began
            # Sanity check, not a test: the compiled step must select (nearly) the same keys.
            picked = torch.isfinite(compiled(q, k, w, seq_lens, mask.clone()).mask)
            expected = torch.isfinite(patched(q, k, w, seq_lens, mask.clone()).mask)
            overlap = float((picked & expected).sum() / expected.sum().clamp_min(1))
            row["compile_selection_overlap"] = overlap
            if overlap < 0.99:
                raise RuntimeError(f"compiled step selects other keys (overlap {overlap:.3f})")
            row["compile_us"] = 1e3 * timer(lambda: compiled(q, k, w, seq_lens, mask))
        except Exception as exc:  # report and go on: compile support varies by version
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:80]
            row["compile_note"] = f"n/a ({reason})"
    return row


def bench_scorer_sweep(batch: int, length: int, timer: Timer) -> dict[str, Any]:
    """Scorer alone (graph replay, no top-k): PyTorch path and every Triton config."""
    gen = torch.Generator(device="cuda").manual_seed(batch * 1_000_003 + length)
    q = torch.randn(batch, 1, HEADS, DIM, generator=gen, device="cuda").bfloat16()
    k = torch.randn(batch, length, DIM, generator=gen, device="cuda").bfloat16()
    w = (torch.randn(batch, 1, HEADS, generator=gen, device="cuda") * (HEADS * DIM) ** -0.5).to(
        torch.bfloat16
    )
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    limit = seq_lens.view(batch, 1)
    sweep: dict[str, Any] = {"B": batch, "L": length}
    graph = capture_graph(lambda: indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch"))
    sweep["torch_us"] = 1e3 * timer(graph.replay)
    del graph
    default = dsa_triton.default_config(batch, length, q.device)
    sweep["default"] = default.name
    reference = indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch")
    configs: dict[str, float | str] = {}
    for cfg in dsa_triton.CONFIGS:
        try:
            got = dsa_triton.fused_scores(q, k, w, limit, config=cfg)
            err = float((got - reference).norm() / reference.norm())
            if not err < 1e-2:
                configs[cfg.name] = f"wrong (rel err {err:.2e})"
                continue
            graph = capture_graph(
                lambda cfg=cfg: dsa_triton.fused_scores(q, k, w, limit, config=cfg)
            )
            configs[cfg.name] = 1e3 * timer(graph.replay)
            del graph
        except Exception as exc:  # report and go on
            configs[cfg.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:60]
    sweep["configs"] = configs
    return sweep


def render_sweep(sweeps: list[dict[str, Any]]) -> str:
    names = [cfg.name for cfg in dsa_triton.CONFIGS]
    lines = [
        "",
        "## Scorer alone (graph replay of the scorer only, no top-k), µs",
        "",
        "Configs are BLOCK_L x blocks per program, warps, stages; * marks the default.",
        "",
        "| B | L | PyTorch | " + " | ".join(names) + " |",
        "|---:|---:|---:|" + "---:|" * len(names),
    ]
    for sw in sweeps:
        cells = []
        for name in names:
            value = sw["configs"].get(name, "n/a")
            cell = f"{value:.1f}" if isinstance(value, float) else str(value)
            cells.append(cell + ("*" if name == sw["default"] else ""))
        lines.append(
            f"| {sw['B']} | {sw['L']} | {sw['torch_us']:.1f} | " + " | ".join(cells) + " |"
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
    lines = [
        "# DSA indexer decode step (H=64, D=128, k=2048, bf16)",
        "",
        f"- GPU: {meta['gpu']}",
        f"- torch {meta['torch']}, CUDA {meta['cuda']}, {meta['date_utc']}",
        f"- measured copy bandwidth: {meta['bandwidth_gbs']:.0f} GB/s; timer: {meta['timer']}",
        "- step = scores + top-k + mask update (fresh -inf fill inside); times are medians in µs",
        "",
        "| B | L | eager unpatched | eager patched | graph replay (PyTorch) "
        "| graph replay (Triton scorer) | torch.compile "
        "| bf16 K-read floor | H200 anchor | replay vs unpatched |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = r["eager_unpatched_us"] / r["graph_replay_us"]
        lines.append(
            f"| {r['B']} | {r['L']} | {r['eager_unpatched_us']:.1f} | {r['eager_patched_us']:.1f} "
            f"| {r['graph_replay_us']:.1f} "
            f"| {fmt_us(r['graph_replay_triton_us'], r.get('triton_note'))} "
            f"| {fmt_us(r['compile_us'], r.get('compile_note'))} "
            f"| {r['floor_us']:.1f} | {fmt_us(r['h200_anchor_us'])} | {speedup:.2f}x |"
        )
    lines += [
        "",
        "The floor is the time to read the bf16 key cache once at the measured bandwidth; the "
        "anchor is the published fused fp8 kernel pair on an H200, for scale. At small B the "
        "eager columns are bound by host-side dispatch and launches, so they move with host CPU "
        "speed and load between runs; graph replay and large-B numbers are device-bound.",
        "",
        "Scorer backends: every column but one runs the pure-PyTorch scorer "
        '(`backend="torch"`: bmm, relu, weighted bmm, masked fill); "graph replay (Triton '
        'scorer)" runs the same step with the fused Triton scorer (`backend="triton"`). Top-k '
        'and the mask update are the same PyTorch code in both. "replay vs unpatched" compares '
        "graph replay (PyTorch) with eager unpatched.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {1, 64}, L in {4096, 65536}")
    parser.add_argument("--reps", type=int, default=100, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per variant")
    parser.add_argument(
        "--timer",
        choices=("auto", "events"),
        default="auto",
        help="auto: triton.testing.do_bench if importable, else CUDA events",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"',
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument(
        "--triton-sweep",
        action="store_true",
        help="also time the scorer alone: PyTorch and every Triton launch configuration",
    )
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)

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
    }  # fmt: skip
    batches = BATCHES_QUICK if args.quick else BATCHES_FULL
    lengths = LENGTHS_QUICK if args.quick else LENGTHS_FULL

    rows = []
    for batch in batches:
        for length in lengths:
            allow_compile = not args.no_compile and time.perf_counter() - began < COMPILE_BUDGET_S
            row = bench_config(
                batch, length, timer, compile_mode=args.compile_mode, allow_compile=allow_compile
            )
            torch.cuda.empty_cache()  # each (B, L) allocates afresh; keep the pool small
            if args.no_compile:
                row["compile_note"] = "n/a (--no-compile)"
            row["floor_us"] = batch * length * DIM * 2 / (bandwidth * 1e9) * 1e6
            row["h200_anchor_us"] = H200_ANCHOR_US.get((batch, length))
            rows.append(row)
            print(
                f"B={batch:<3} L={length:<6} unpatched {row['eager_unpatched_us']:8.1f}  "
                f"patched {row['eager_patched_us']:8.1f}  replay {row['graph_replay_us']:8.1f}  "
                f"replay triton {fmt_us(row['graph_replay_triton_us'], row.get('triton_note'))}"
                f" ({row.get('triton_config', '-')})  "
                f"compile {fmt_us(row['compile_us'], row.get('compile_note'))} µs",
                file=sys.stderr,
                flush=True,
            )

    sweeps: list[dict[str, Any]] = []
    if args.triton_sweep and dsa_triton.triton_available():
        for batch in batches:
            for length in lengths:
                sweeps.append(bench_scorer_sweep(batch, length, timer))
                torch.cuda.empty_cache()
                print(f"sweep {sweeps[-1]}", file=sys.stderr, flush=True)

    table = render(rows, meta)
    if sweeps:
        table += render_sweep(sweeps)
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    if args.json:
        meta["wall_s"] = time.perf_counter() - began
        payload = {"meta": meta, "rows": rows, "scorer_sweep": sweeps}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
