"""Where a guarded region's cost goes: each piece of region entry/exit in front of a CPU step.

Each row times the DSA CPU step (the one of ``overhead.py``'s CPU rows) run right after one
piece of what a region does, against the same step alone, alternated in one process; and the
piece alone, timed in a loop. A piece can cost the step after it more than its own time: that
difference is what this script shows. Two reference rows run code unrelated to graphguard (ten
different standard-library calls; one call repeated) in front of the step, for comparison.

    python benchmarks/region_cost.py [--rounds N] [--step dsa|mlp]

A second table times the step under a forwarding torch-function mode, under graphguard's mode
pushed by hand (the per-call checks without any region) and in an audit region.

Runs in a child process that sees no CUDA device (as the audit CPU rows do), on one thread,
timed in that thread's CPU time. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def pieces() -> list[tuple[str, Callable[[], Any]]]:
    import torch

    import graphguard
    from graphguard import _interrupts, _patches, _session, _state
    from graphguard._intercept import HazardMode

    mode = HazardMode()
    groups = _patches._region_groups()

    def of(owner_is: Callable[[Any], bool]) -> Callable[[], None]:
        chosen = [g for g in groups if owner_is(g.slots[0].owner)]

        def write() -> None:
            for g in chosen:
                g.install()
            for g in reversed(chosen):
                g.uninstall()

        return write

    def nothing() -> None:
        pass

    def wrappers() -> None:
        _patches.acquire()
        _patches.release()

    def sigint() -> None:
        _interrupts.release_interrupts(_interrupts.hold_interrupts())

    def state_and_mode() -> None:
        state = _session.new_state(on_hazard="raise", label=None)
        token = _state.push_state(state)
        torch._C._push_on_torch_function_stack(mode)
        _session._pop_our_mode(mode)
        _state.pop_state(token, state)

    def tensor_type_write() -> None:
        torch.Tensor.pin_memory = torch._C.TensorBase.pin_memory  # type: ignore[method-assign]
        del torch.Tensor.pin_memory

    def empty_region() -> None:
        with graphguard.capture(mode="audit"):
            pass

    import datetime
    import fractions
    import functools
    import json
    import math
    import operator
    import re
    import textwrap

    def varied() -> None:  # code that has nothing to do with graphguard or torch
        math.sqrt(2.0)
        os.path.join("a", "b")
        json.dumps(1)
        operator.add(1, 2)
        functools.reduce(operator.add, (1, 2))
        datetime.timedelta(seconds=1)
        textwrap.dedent(" a")
        fractions.Fraction(1, 2)
        re.escape("a.")
        sorted([3, 1])

    def repeated() -> None:
        for _ in range(40):
            math.sqrt(2.0)

    return [
        ("nothing (the step alone)", nothing),
        ("reference: ten different standard-library calls", varied),
        ("reference: one standard-library call, 40 times", repeated),
        ("all wrappers: install + remove", wrappers),
        ("  module namespaces only", of(lambda o: isinstance(o, types.ModuleType))),
        ("  types only (torch.Event, torch.Stream)", of(lambda o: isinstance(o, type))),
        ("write + delete torch.Tensor.pin_memory", tensor_type_write),
        ("SIGINT handler swap", sigint),
        ("guard state + torch-function mode push/pop", state_and_mode),
        ("empty audit region", empty_region),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--step", choices=("dsa", "mlp"), default="dsa")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        import subprocess

        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        cmd = [sys.executable, __file__, "--child", "--rounds", str(args.rounds)]
        return subprocess.call([*cmd, "--step", args.step], env=env)

    import platform

    import overhead
    import structlog
    import torch

    torch.set_num_threads(1)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    step, name = (overhead.dsa_small if args.step == "dsa" else overhead.mlp_cpu)()
    rows = pieces()

    def after(piece: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            piece()
            return step()

        return run

    times = overhead.side_by_side(*(after(p) for _, p in rows), rounds=args.rounds, calls=40)
    alone = times[0]
    print(f"# Region cost in front of a step: {name}")
    print()
    print(f"- CPU: {overhead._cpu_model()} ({os.cpu_count()} logical CPUs), one thread")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}")
    print(f"- command: `python benchmarks/region_cost.py --step {args.step}`")
    print()
    print("| piece | own time | step after it | step alone | difference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (label, piece), t in zip(rows, times, strict=True):
        own = timeit.timeit(piece, number=20000) / 20000 * 1e6
        print(f"| {label} | {own:.1f} µs | {t:.0f} µs | {alone:.0f} µs | {t - alone:+.0f} µs |")
    print()
    print("| the step under | time | ratio to the step alone |")
    print("| --- | ---: | ---: |")
    under = _under(step, args.rounds)
    for label, t in zip(_UNDER, under, strict=True):
        print(f"| {label} | {t:.0f} µs | {t / under[0]:.2f}x |")
    return 0


_UNDER = (
    "nothing",
    "a torch-function mode that only forwards each call",
    "graphguard's mode and guard state, pushed by hand (no region: the per-call checks only)",
    "a graphguard audit region",
)


def _under(step: Callable[[], Any], rounds: int) -> list[float]:
    import overhead
    import torch

    import graphguard
    from graphguard import _state
    from graphguard._intercept import HazardMode
    from graphguard._session import new_state

    mode, state = HazardMode(), new_state(on_hazard="raise", label=None)

    def checks_only() -> Any:
        token = _state.push_state(state)
        torch._C._push_on_torch_function_stack(mode)
        try:
            return step()
        finally:
            torch._C._pop_torch_function_stack()
            _state.pop_state(token, state)

    def audited() -> Any:
        with graphguard.capture(mode="audit"):
            return step()

    sides = (step, overhead._bare_mode(step), checks_only, audited)
    return overhead.side_by_side(*sides, rounds=rounds, calls=40)


if __name__ == "__main__":
    raise SystemExit(main())
