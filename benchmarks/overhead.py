"""What graphguard costs, measured side by side in one run on one GPU.

Four ratios, for two steps (a small MLP/attention block, forward and backward; and a DSA-like
top-k mask step):

1. capture: ``graphguard.capture()`` vs raw ``torch.cuda.graph`` of the same step (goal <= 1.5x);
2. replay: ``cap.replay()`` vs raw ``graph.replay()`` (goal <= 1.01x);
3. import: an eager step in a process that imported graphguard (no guard active) vs a process
   that did not (goal <= 1.01x); each side runs in its own subprocess, alternated;
4. audit: an eager step inside ``graphguard.capture(mode="audit")`` vs plain eager (goal <= 1.5x).

Times are host wall-clock medians with the device synchronised (capture, eager) or CUDA-event
medians over many back-to-back replays (replay). Usage:

    python benchmarks/overhead.py [--out results.md] [--reps N]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._timing import median_time, warm_up  # noqa: E402


def mlp_block(dev: str) -> tuple[Callable[[], Any], str]:
    torch.manual_seed(0)
    d = 256
    attn = torch.nn.MultiheadAttention(d, 4, batch_first=True).to(dev)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d)
    ).to(dev)
    norm = torch.nn.LayerNorm(d).to(dev)
    x = torch.randn(8, 64, d, device=dev)

    def step() -> Any:
        h = norm(x)
        h = h + attn(h, h, h, need_weights=False)[0]
        out = h + mlp(norm(h))
        out.sum().backward()
        return out

    return step, "MLP+attention block fwd+bwd (B=8, S=64, d=256)"


def dsa_like(dev: str) -> tuple[Callable[[], Any], str]:
    import dsa

    B, H, D, L, k = 4, 64, 128, 8192, 2048
    q = torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(B, L, D, device=dev, dtype=torch.bfloat16)
    w = torch.randn(B, 1, H, device=dev)
    lens = torch.full((B,), L, device=dev)
    mask = torch.empty(B, 1, L, device=dev)
    indexer = dsa.DSAIndexer(H, D, k)

    def step() -> Any:
        return indexer(q, kc, w, lens, mask)

    return step, f"DSA index-mask step (B={B}, L={L}, H={H}, D={D}, k={k})"


def warm(step: Callable[[], Any]) -> None:
    warm_up(step, 3)
    torch.cuda.synchronize()


def host_time(fn: Callable[[], Any], reps: int) -> float:
    """Median wall-clock µs of fn() with the device synchronised after each call."""
    return median_time(fn, reps=reps, clock="host") * 1e6


def replay_time(replay: Callable[[], Any], n: int, rounds: int) -> float:
    """Median over rounds of (µs for n back-to-back replays) / n, from CUDA events."""
    return median_time(replay, reps=rounds, calls=n, clock="device") * 1e6


def replay_host_time(replay: Callable[[], Any], n: int, rounds: int) -> float:
    """Median host µs per replay call (launch cost, which is what graphguard adds)."""
    return median_time(replay, reps=rounds, calls=n, clock="host", wait=False) * 1e6


def measure(make: Callable[[str], tuple[Callable[[], Any], str]], reps: int) -> dict[str, Any]:
    import graphguard

    step, name = make("cuda")
    warm(step)
    res: dict[str, Any] = {"step": name}

    def raw_capture() -> torch.cuda.CUDAGraph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        return g

    def gg_capture() -> Any:
        with graphguard.capture() as cap:
            step()
        return cap

    for _ in range(2):
        raw_capture()
        gg_capture()
    gc.collect()
    raw_c, gg_c = [], []
    for _ in range(reps // 4 or 1):  # interleaved, so drift hits both sides alike
        raw_c.append(host_time(raw_capture, 1))
        gg_c.append(host_time(gg_capture, 1))
    res["capture_raw_us"] = statistics.median(raw_c)
    res["capture_gg_us"] = statistics.median(gg_c)

    g = raw_capture()
    cap = gg_capture()
    n = 200
    for _ in range(3):
        replay_time(g.replay, 20, 1)
        replay_time(cap.replay, 20, 1)
    raw_r, gg_r, raw_h, gg_h = [], [], [], []
    for _ in range(5):
        raw_r.append(replay_time(g.replay, n, 3))
        gg_r.append(replay_time(cap.replay, n, 3))
        raw_h.append(replay_host_time(g.replay, n, 3))
        gg_h.append(replay_host_time(cap.replay, n, 3))
    res["replay_raw_us"] = statistics.median(raw_r)
    res["replay_gg_us"] = statistics.median(gg_r)
    res["replay_host_raw_us"] = statistics.median(raw_h)
    res["replay_host_gg_us"] = statistics.median(gg_h)

    def audited() -> Any:
        with graphguard.capture(mode="audit"):
            return step()

    plain_e, audit_e = [], []
    for _ in range(reps // 10 or 1):
        plain_e.append(host_time(step, 10))
        audit_e.append(host_time(audited, 10))
    res["eager_us"] = statistics.median(plain_e)
    res["audit_us"] = statistics.median(audit_e)
    return res


def eager_only(which: str, with_graphguard: bool, reps: int) -> float:
    if with_graphguard:
        import graphguard  # noqa: F401
    step, _ = (mlp_block if which == "mlp" else dsa_like)("cuda")
    warm(step)
    return host_time(step, reps)


def import_ratio(which: str, reps: int, rounds: int = 5) -> tuple[float, float]:
    without, with_ = [], []
    for _ in range(rounds):
        for flag, bucket in (("0", without), ("1", with_)):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--eager-only",
                    which,
                    "--with-graphguard",
                    flag,
                    "--reps",
                    str(reps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            bucket.append(float(out.stdout.strip().splitlines()[-1]))
    print(
        f"import rounds ({which}): without {sorted(without)}, with {sorted(with_)}", file=sys.stderr
    )
    # Best of the rounds: interference from the machine only ever adds time, and the two
    # processes run identical torch code (no attribute is patched while no guard is active).
    return min(without), min(with_)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--out")
    parser.add_argument("--json")
    parser.add_argument("--eager-only")
    parser.add_argument("--with-graphguard", default="0")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/overhead.py needs a CUDA GPU; nothing measured.")
        return 2
    if args.eager_only:
        print(eager_only(args.eager_only, args.with_graphguard == "1", args.reps))
        return 0
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    rows = []
    for key, make in (("mlp", mlp_block), ("dsa", dsa_like)):
        res = measure(make, args.reps)
        res["import_without_us"], res["import_with_us"] = import_ratio(key, args.reps)
        rows.append(res)

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.3f}x"

    lines = [
        "# graphguard overhead",
        "",
        f"- card: {torch.cuda.get_device_name()}",
        f"- torch: {torch.__version__} (CUDA {torch.version.cuda})",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- command: `python benchmarks/overhead.py`",
        "",
        "| step | measure | without graphguard (µs) | with graphguard (µs) | ratio | goal |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        s = r["step"]
        lines += [
            f"| {s} | capture region | {r['capture_raw_us']:.1f} | {r['capture_gg_us']:.1f} | "
            f"{ratio(r['capture_raw_us'], r['capture_gg_us'])} | <= 1.5x |",
            f"| {s} | replay, device time per replay | {r['replay_raw_us']:.2f} | "
            f"{r['replay_gg_us']:.2f} | "
            f"{ratio(r['replay_raw_us'], r['replay_gg_us'])} | <= 1.01x |",
            f"| {s} | replay, host time per call | {r['replay_host_raw_us']:.2f} | "
            f"{r['replay_host_gg_us']:.2f} | "
            f"{ratio(r['replay_host_raw_us'], r['replay_host_gg_us'])} | (info) |",
            f"| {s} | eager step, graphguard imported, no guard (best process of 5) | "
            f"{r['import_without_us']:.1f} | "
            f"{r['import_with_us']:.1f} | "
            f"{ratio(r['import_without_us'], r['import_with_us'])} | <= 1.01x |",
            f"| {s} | eager step in audit mode | {r['eager_us']:.1f} | {r['audit_us']:.1f} | "
            f"{ratio(r['eager_us'], r['audit_us'])} | <= 1.5x |",
        ]
    lines += [
        "",
        "The import row compares separate processes (one imports graphguard, one does not), "
        "alternated five times, best round of each; no torch attribute differs between them "
        "while no guard is active (tests/test_patch_lifecycle.py checks identity). Per-round "
        "numbers of this host-bound eager step spread widely on both sides; they are in the log.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
