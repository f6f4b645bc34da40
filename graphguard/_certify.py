"""``graphguard certify``: certify the DSA index-mask step, graphguard's reference workload.

Four claims, each checked, never assumed:

1. semantics: the unpatched (branchy) and patched (branchless) mask updates give identical
   masks on the edge cases of ``docs/dsa.md`` and on random draws;
2. refusal: under graphguard the unpatched step is refused with ``host-sync`` diagnostics naming
   its validation line and its branch line, in audit mode (any machine) and under real capture
   (GPU), and the process stays healthy afterwards;
3. replay (GPU only): the patched ``DSAIndexer`` step is captured once and replayed across
   ``seq_lens`` draws (0, 1, k-1, k, k+1, L_max) with masks equal to eager;
4. the certificate records device, torch version, shapes and timings.

Exit status 0 only when every claim that can run on this machine holds; without a GPU claim 3
is reported as not run, and says why.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

__all__ = ["Certificate", "certify", "main"]


@dataclass
class Check:
    name: str
    status: str  # "passed", "failed" or "not run"
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Certificate:
    device: str
    torch_version: str
    cuda: str | None
    python: str
    graphguard_version: str
    date: str
    shapes: dict[str, Any]
    checks: list[Check]
    timings_us: dict[str, float]

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["certified"] = self.ok
        return data


# --- claim 1: semantics --------------------------------------------------------------------------
def _edge_cases(device: torch.device) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, mask, idx) pairs from the DSA edge-case list."""
    inf = float("-inf")
    L = 16
    cases = []
    mixed = torch.tensor([[0, -1, -5, L, L + 7, 3], [15, 15, -1, -1, 0, 0]], device=device)
    cases.append(("mixed 0/-1/-5/L/L+7", torch.full((2, L), inf, device=device), mixed))
    cases.append(
        (
            "all sentinels",
            torch.full((1, L), inf, device=device),
            torch.full((1, 4), -1, device=device),
        )
    )
    cases.append(
        (
            "position 0 and sentinels",
            torch.full((1, L), inf, device=device),
            torch.tensor([[0, -1, -1, -1]], device=device),
        )
    )
    prefilled = torch.full((2, L), inf, device=device)
    prefilled[:, ::3] = 0.0
    cases.append(
        ("pre-filled mask", prefilled, torch.tensor([[1, 2, -1], [4, L, 5]], device=device))
    )
    arbitrary = torch.linspace(-3, 3, 2 * L, device=device).view(2, L)
    cases.append(
        (
            "mask with arbitrary values",
            arbitrary,
            torch.tensor([[0, 7, -2], [L - 1, L + 1, 3]], device=device),
        )
    )
    cases.append(
        (
            "k >= L",
            torch.full((1, 8), inf, device=device),
            torch.arange(-2, 12, device=device).view(1, 14),
        )
    )
    cases.append(
        (
            "multi-token rows",
            torch.full((2, 2, L), inf, device=device),
            torch.tensor([[[0, 5], [-1, 6]], [[L, 1], [2, 2]]], device=device),
        )
    )
    return cases


def _check_semantics(device: torch.device, draws: int, seed: int) -> Check:
    import dsa

    mismatches = []
    n = 0
    for name, mask, idx in _edge_cases(device):
        a = dsa.update_index_mask_unpatched(mask.clone(), idx)
        b = dsa.update_index_mask(mask.clone(), idx)
        n += 1
        if not torch.equal(a, b):
            mismatches.append(name)
    gen = torch.Generator().manual_seed(seed)
    for i in range(draws):
        B, L, k = 1 + i % 4, 8 + 13 * i, 1 + (5 * i) % 40
        base = torch.where(torch.rand(B, L, generator=gen) < 0.3, 0.0, float("-inf"))
        idx = torch.randint(-3, L + 4, (B, k), generator=gen)
        a = dsa.update_index_mask_unpatched(base.clone().to(device), idx.to(device))
        b = dsa.update_index_mask(base.clone().to(device), idx.to(device))
        n += 1
        if not torch.equal(a, b):
            mismatches.append(f"random draw {i}")
    # the whole step in both forms
    for i in range(max(1, draws // 8)):
        g = torch.Generator().manual_seed(seed + 100 + i)
        B, T, H, D, L, k = 3, 1, 4, 16, 64, 8
        q = torch.randn(B, T, H, D, generator=g).to(device)
        kc = torch.randn(B, L, D, generator=g).to(device)
        w = torch.randn(B, T, H, generator=g).to(device)
        lens = torch.tensor([L, 5, 0]).to(device)
        a = dsa.DSAIndexer(H, D, k, patched=False)(q, kc, w, lens)
        b = dsa.DSAIndexer(H, D, k, patched=True)(q, kc, w, lens)
        n += 1
        if not (torch.equal(a.mask, b.mask) and torch.equal(a.indices, b.indices)):
            mismatches.append(f"indexer step {i}")
    if mismatches:
        return Check("semantics", "failed", f"unpatched != patched on: {', '.join(mismatches)}")
    return Check(
        "semantics",
        "passed",
        f"identical on {n} inputs (edge cases and random draws)",
        {"inputs": n},
    )


# --- claim 2: refusal ----------------------------------------------------------------------------
def _small_step_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 1, 4, 16, generator=g).to(device)
    k = torch.randn(2, 64, 16, generator=g).to(device)
    w = torch.randn(2, 1, 4, generator=g).to(device)
    return q, k, w, torch.tensor([64, 3]).to(device)


def _lines_named(hazards: list[Any]) -> set[int]:
    import dsa

    where = dsa.unpatched_hazard_lines()
    return {h.lineno for h in hazards if h.filename == where.file and h.kind == "host-sync"}


def _check_refusal_audit(device: torch.device) -> Check:
    import dsa
    import graphguard

    where = dsa.unpatched_hazard_lines()
    expected = {where.validation, where.branch}
    inputs = _small_step_inputs(device)
    with graphguard.capture(mode="audit", on_hazard="warn", label="dsa-unpatched") as cap:
        dsa.DSAIndexer(4, 16, 8, patched=False)(*inputs)
    named = _lines_named(cap.hazards)
    with graphguard.capture(mode="audit", label="dsa-patched") as clean:
        dsa.DSAIndexer(4, 16, 8, patched=True)(*inputs)
    data = {
        "hazards": [f"{h.code} {h.location}" for h in cap.hazards],
        "patched_hazards": len(clean.hazards),
    }
    if named != expected or clean.hazards:
        return Check(
            "refusal (audit)",
            "failed",
            f"expected host-sync at lines {sorted(expected)}, got {sorted(named)}; "
            f"patched form reported {len(clean.hazards)}",
            data,
        )
    return Check(
        "refusal (audit)",
        "passed",
        f"host-sync at {where.file}:{where.validation} (validation) and :{where.branch} "
        f"(branch); the patched form reports nothing",
        data,
    )


def _healthy() -> str | None:
    """None if ordinary CUDA work, RNG and a fresh capture work; else what failed."""
    try:
        torch.randn(8, device="cuda").sum().item()
        torch.rand(4, device="cuda")
        x = torch.ones(8, device="cuda")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = x * 2
        g.replay()
        torch.cuda.synchronize()
        if not torch.equal(y, x * 2):
            return "fresh capture replayed a wrong result"
    except Exception as e:  # the point is to report, not to crash
        return f"{type(e).__name__}: {e}"
    return None


def _check_refusal_capture() -> Check:
    import dsa
    import graphguard

    where = dsa.unpatched_hazard_lines()
    device = torch.device("cuda")
    inputs = _small_step_inputs(device)
    step = dsa.DSAIndexer(4, 16, 8, patched=False)
    step(*inputs)  # warm-up, eagerly
    torch.cuda.synchronize()
    problems = []
    try:
        with graphguard.capture(label="dsa-unpatched"):
            step(*inputs)
        problems.append("the unpatched step was captured without a report")
    except graphguard.HostSyncError as e:
        if e.diagnostic.lineno != where.validation:
            problems.append(f"raise named line {e.diagnostic.lineno}, not {where.validation}")
    expected_out = step(*inputs)
    with graphguard.capture(on_hazard="fallback", label="dsa-unpatched") as cap:
        out = step(*inputs)
    torch.cuda.synchronize()
    if _lines_named(cap.hazards) != {where.validation, where.branch}:
        problems.append(f"fallback run named {sorted(_lines_named(cap.hazards))}")
    if not torch.equal(out.mask, expected_out.mask):
        problems.append("the fallback result differs from eager")
    health = _healthy()
    if health:
        problems.append(f"process unhealthy afterwards: {health}")
    data = {"hazards": [f"{h.code} {h.location}" for h in cap.hazards]}
    if problems:
        return Check("refusal (capture)", "failed", "; ".join(problems), data)
    return Check(
        "refusal (capture)",
        "passed",
        "raised at the validation line under real capture; with fallback both lines were "
        "named, the result equalled eager, and CUDA work, RNG and a new capture still ran",
        data,
    )


# --- claim 3: replay -----------------------------------------------------------------------------
def _finite_pattern(mask: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(mask)


def _time_us(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    times.sort()
    return times[len(times) // 2]


def _check_replay(shapes: dict[str, Any], timings: dict[str, float], reps: int) -> Check:
    import dsa
    import graphguard

    B, H, D, k, L = shapes["B"], shapes["H"], shapes["D"], shapes["k"], shapes["L_max"]
    dev = torch.device("cuda")
    q = torch.randn(B, 1, H, D, device=dev, dtype=torch.bfloat16)
    kc = torch.randn(B, L, D, device=dev, dtype=torch.bfloat16)
    w = torch.randn(B, 1, H, device=dev, dtype=torch.float32)
    lens = torch.full((B,), L, device=dev, dtype=torch.long)
    mask = torch.empty(B, 1, L, device=dev)
    step = dsa.DSAIndexer(H, D, k)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(q, kc, w, lens, mask)
    torch.cuda.current_stream().wait_stream(side)
    with graphguard.capture(label="dsa-patched") as cap:
        out = step(q, kc, w, lens, mask)
    draws = [0, 1, k - 1, k, k + 1, L]
    bad = []
    gen = torch.Generator().manual_seed(3)
    for i, n in enumerate(draws):
        row_lens = torch.tensor(
            [n] + [int(v) for v in torch.randint(0, L + 1, (B - 1,), generator=gen)]
        )
        row_lens[-1] = 0 if B > 1 else row_lens[-1]  # always one padding row
        q.copy_(torch.randn_like(q))
        kc.copy_(torch.randn_like(kc))
        w.copy_(torch.randn_like(w))
        lens.copy_(row_lens.to(dev))
        cap.replay()
        ref = step(q, kc, w, lens)
        torch.cuda.synchronize()
        if not torch.equal(_finite_pattern(out.mask), _finite_pattern(ref.mask)):
            bad.append(f"draw {i} (seq_len {n})")
        expected_count = torch.clamp(lens, max=k)
        if not torch.equal(_finite_pattern(out.mask).sum(-1).squeeze(-1), expected_count):
            bad.append(f"draw {i}: selected counts != min(seq_len, k)")
    timings["eager_patched_step"] = _time_us(lambda: step(q, kc, w, lens, mask), reps)
    timings["graph_replay"] = _time_us(cap.replay, reps)
    if bad:
        return Check("replay", "failed", "replay differs from eager at " + ", ".join(bad))
    return Check(
        "replay",
        "passed",
        f"captured once at B={B} L_max={L}; {len(draws)} replays with seq_lens "
        f"{draws} (and a padding row) matched eager masks",
        {"draws": draws},
    )


# --- the whole certificate -----------------------------------------------------------------------
def certify(
    *, quick: bool = False, seed: int = 0, progress: Callable[[str], None] | None = None
) -> Certificate:
    """Run every claim this machine can run and return the certificate."""
    import graphguard

    say = progress or (lambda _msg: None)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shapes = {"B": 4, "H": 64, "D": 128, "k": 2048, "L_max": 4096 if quick else 16384}
    timings: dict[str, float] = {}
    checks = []
    say("1/3 semantics of unpatched vs patched update")
    t0 = time.perf_counter()
    checks.append(_check_semantics(device, draws=16 if quick else 64, seed=seed))
    say("2/3 refusal of the unpatched step under graphguard")
    checks.append(_check_refusal_audit(device))
    if cuda:
        checks.append(_check_refusal_capture())
    say("3/3 capture once, replay across seq_lens draws" if cuda else "3/3 replay needs a GPU")
    if cuda:
        checks.append(_check_replay(shapes, timings, reps=20 if quick else 100))
    else:
        checks.append(
            Check(
                "replay",
                "not run",
                "needs a CUDA GPU: real capture and replay cannot run on this machine",
            )
        )
    timings["certify_wall"] = (time.perf_counter() - t0) * 1e6
    return Certificate(
        device=torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        torch_version=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        graphguard_version=graphguard.__version__,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        shapes=shapes if cuda else {"audit": "B=2 T=1 H=4 D=16 L=64 k=8"},
        checks=checks,
        timings_us={k: round(v, 1) for k, v in timings.items()},
    )


def _hazard_summary(cert: Certificate) -> list[str]:
    """Hazards the refusal claims provoked: by code (with the first occurrence) and by file."""
    seen = [h for c in cert.checks for h in c.data.get("hazards", [])]
    if not seen:
        return []
    by_code: dict[str, list[str]] = {}
    by_file: dict[str, int] = {}
    for entry in seen:
        code, location = entry.split(" ", 1)
        by_code.setdefault(code, []).append(location)
        file = location.rsplit(":", 1)[0]
        by_file[file] = by_file.get(file, 0) + 1
    codes = ", ".join(f"{c} x{len(v)} (first at {v[0]})" for c, v in sorted(by_code.items()))
    files = ", ".join(f"{f} x{n}" for f, n in sorted(by_file.items()))
    return [f"  hazards provoked, by code: {codes}", f"  hazards provoked, by file: {files}"]


def render(cert: Certificate) -> str:
    lines = [
        "graphguard certificate: DSA index-mask step",
        f"  device: {cert.device}   torch {cert.torch_version}   CUDA {cert.cuda or '-'}   "
        f"python {cert.python}   graphguard {cert.graphguard_version}   {cert.date}",
        f"  shapes: {cert.shapes}",
    ]
    for check in cert.checks:
        mark = {"passed": "PASS", "failed": "FAIL", "not run": "SKIP"}[check.status]
        lines.append(f"  [{mark}] {check.name}: {check.detail}")
    if cert.timings_us:
        lines.append(
            "  timings (µs; step timings are medians): "
            + ", ".join(f"{k}={v}" for k, v in cert.timings_us.items())
        )
    lines.extend(_hazard_summary(cert))
    skipped = [c.name for c in cert.checks if c.status == "not run"]
    note = f" ({', '.join(skipped)} not run: needs a GPU)" if skipped else ""
    lines.append(f"  result: {'CERTIFIED' if cert.ok else 'NOT CERTIFIED'}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphguard certify", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a machine-readable certificate")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer draws")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    show = sys.stderr.isatty() and not args.json
    from ._cli import _cli_logging  # the refusal claims provoke hazards on purpose: keep them quiet

    with _cli_logging(verbose=False):
        cert = certify(
            quick=args.quick,
            seed=args.seed,
            progress=(lambda m: print(f"... {m}", file=sys.stderr)) if show else None,
        )
    print(json.dumps(cert.to_dict(), indent=2) if args.json else render(cert))
    return 0 if cert.ok else 1
