"""Where a capture region's host time goes on the GPU, piece by piece, for one step.

``overhead.py`` compares ``graphguard.capture()`` with a raw ``torch.cuda.graph`` of the same
step as one ratio. This script splits the difference: each row is one way to capture the
warmed-up step (or an empty body), timed on the host from entry to the end of the capture,
alternated with the others in one process; then the top functions of a profile of graphguard's
capture region.

    python benchmarks/capture_cost.py [--step dsa|mlp] [--rounds N] [--out FILE]

Rows:

- the eager step, and an audit region (empty, and around the step);
- raw ``torch.cuda.graph``, empty body and with the step;
- raw capture of the step decorated with ``@graphguard.guard`` (a guard inside a capture it does
  not own: region entry and exit and the per-call checks, without graphguard's own capture);
- ``graphguard.capture()``, empty body and with the step.

Needs CUDA. Prints a Markdown table (card, torch version, date).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _host_us(fn: Callable[[], Any]) -> float:
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=("dsa", "mlp"), default="dsa")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("capture_cost.py needs CUDA", file=sys.stderr)
        return 2
    import overhead
    from _timing import warm_up

    import graphguard

    step, name = (overhead.dsa_like if args.step == "dsa" else overhead.mlp_block)("cuda")
    warm_up(step, 3)
    torch.cuda.synchronize()

    def nothing() -> None:
        pass

    def raw(body: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                body()
            return g

        return run

    guarded_step = graphguard.guard(step)

    def gg(body: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with graphguard.capture() as cap:
                body()
            return cap

        return run

    def audit(body: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with graphguard.capture(mode="audit"):
                return body()

        return run

    rows: list[tuple[str, Callable[[], Any]]] = [
        ("eager step (no capture)", step),
        ("`graphguard.capture(mode='audit')`, empty body", audit(nothing)),
        ("`graphguard.capture(mode='audit')`, the step", audit(step)),
        ("raw torch.cuda.graph, empty body", raw(nothing)),
        ("raw torch.cuda.graph, the step", raw(step)),
        ("raw capture of `@graphguard.guard` around the step", raw(guarded_step)),
        ("graphguard.capture(), empty body", gg(nothing)),
        ("graphguard.capture(), the step", gg(step)),
    ]
    for _, fn in rows:  # first calls pay one-time set-up
        fn()
        fn()
    gc.collect()
    times: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(args.rounds):
        for label, fn in rows:
            times[label].append(_host_us(fn))
    med = {label: statistics.median(v) for label, v in times.items()}

    def profile(body: Callable[[], Any]) -> str:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            body()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        return buf.getvalue().strip()

    raw_step = med["raw torch.cuda.graph, the step"]
    lines = [
        f"# Capture region cost, piece by piece: {name}",
        "",
        f"- card: {torch.cuda.get_device_name(0)}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda})",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python benchmarks/capture_cost.py --step {args.step}`; host time from "
        f"entry to the end of capture_end, device synchronised on both sides; median of "
        f"{args.rounds} alternated rounds",
        "",
        "| how | host µs | vs raw capture of the step |",
        "| --- | ---: | ---: |",
    ]
    for label, _ in rows:
        lines.append(f"| {label} | {med[label]:.0f} | {med[label] / raw_step:.2f}x |")
    for what, body in (("graphguard.capture()", gg(step)), ("audit", audit(step))):
        lines += [
            "",
            f"Profile of 20 {what} regions around the step (top 25 by own time):",
            "",
            "```",
            profile(body),
            "```",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
