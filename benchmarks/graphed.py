"""A graphed step's call time vs a hand-written static-buffer replay and vs eager, side by side.

For each step, three ways of running the same work N times back to back (host wall-clock per
call, device synchronised once per round of N, median of rounds):

- eager: the plain step;
- manual: ``static_x.copy_(x); graph.replay()``, the hand-written CUDA-graph baseline;
- graphed: ``graphguard.graphed(step)(x)``, which also walks the arguments, checks the captured
  scalars and wraps the outputs (goal: <= 1.05x of manual).

It also reports the cost of the stale-scalar check alone, per call, with how many scalars it
tracks. Usage: ``python benchmarks/graphed.py [--out results.md]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import median_time, warm_up


def inference_step(
    width: int, depth: int, batch: int
) -> tuple[Callable[..., Any], torch.Tensor, str]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).cuda().eval()

    @torch.no_grad()
    def step(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return (
        step,
        torch.randn(batch, width, device="cuda"),
        (f"inference MLP {depth}x{width}, batch {batch}"),
    )


def training_step(
    width: int, depth: int, batch: int
) -> tuple[Callable[..., Any], torch.Tensor, str]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss.detach()

    return (
        step,
        torch.randn(batch, width, device="cuda"),
        (f"training MLP {depth}x{width} + SGD, batch {batch}"),
    )


def per_call(fn: Callable[[], Any], n: int, rounds: int) -> float:
    return median_time(fn, reps=rounds, calls=n, clock="host") * 1e6


def bench(
    make: Callable[[], tuple[Callable[..., Any], torch.Tensor, str]], n: int
) -> dict[str, Any]:
    import graphguard

    step, x, name = make()
    inputs = [torch.randn_like(x) for _ in range(4)]
    # manual baseline: warm up on a side stream, capture with static input, copy + replay
    static_x = x.clone()
    warm_up(lambda: step(static_x), 3)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step(static_x)
    fast = graphguard.graphed(step)
    for inp in inputs:
        fast(inp)

    i = 0

    def eager() -> None:
        nonlocal i
        step(inputs[i % 4])
        i += 1

    def manual() -> None:
        nonlocal i
        static_x.copy_(inputs[i % 4], non_blocking=True)
        g.replay()
        i += 1

    def graphed() -> None:
        nonlocal i
        fast(inputs[i % 4])
        i += 1

    res = {"step": name}
    samples: dict[str, list[float]] = {"eager": [], "manual": [], "graphed": []}
    for _ in range(5):  # interleaved rounds
        for key, fn in (("eager", eager), ("manual", manual), ("graphed", graphed)):
            samples[key].append(per_call(fn, n, 3))
    for key, vals in samples.items():
        res[f"{key}_us"] = statistics.median(vals)

    entry = next(iter(fast.graphed._entries.values()))
    leaves = [inputs[0]]
    tracked = len(entry.scalars.items) + len(entry.arg_values)
    res["scalar_check_us"] = (
        median_time(
            lambda: fast.graphed._stale_scalars(entry, leaves),
            reps=1,
            calls=10000,
            clock="host",
            wait=False,
        )
        * 1e6
    )
    res["scalars_tracked"] = tracked
    return res


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/graphed.py needs a CUDA GPU; nothing measured.")
        return 2
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    rows = [
        bench(lambda: inference_step(256, 8, 16), args.n),
        bench(lambda: training_step(256, 4, 16), args.n),
        bench(lambda: inference_step(4096, 4, 512), args.n),
    ]
    lines = [
        "# graphed step vs hand-written replay vs eager",
        "",
        f"- card: {torch.cuda.get_device_name()}",
        f"- torch: {torch.__version__} (CUDA {torch.version.cuda})",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- command: `python benchmarks/graphed.py`; host µs per call, median of 5 interleaved "
        f"rounds of {args.n} calls",
        "",
        "| step | eager (µs) | manual copy+replay (µs) | graphed (µs) | graphed / manual | "
        "eager / graphed (speed-up) | scalar check (µs/call, scalars) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['eager_us']:.1f} | {r['manual_us']:.1f} | {r['graphed_us']:.1f} | "
            f"{r['graphed_us'] / r['manual_us']:.3f}x | {r['eager_us'] / r['graphed_us']:.2f}x | "
            f"{r['scalar_check_us']:.2f} ({r['scalars_tracked']}) |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
