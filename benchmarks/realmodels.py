#!/usr/bin/env python3
"""graphguard on real third-party model steps, judged against plain ``torch.cuda.graph``.

For every case of ``tests/realmodel_cases.py`` (transformers LMs, generation pieces, timm,
torchvision, a nanoGPT-style loop; configs with random weights, no downloads), each phase runs in
its own fresh process (a failed raw capture can leave a CUDA context unusable):

- raw: warm-up, plain ``torch.cuda.graph`` capture, replays compared with an eager twin;
- capture: the same under ``graphguard.capture(mode="capture")``;
- audit: the warmed-up step once under ``graphguard.capture(mode="audit", on_hazard="warn")``.

A case is legal when the raw capture succeeded and every replay matched eager. On a legal case a
graphguard report is a false positive; on an illegal one a silence is a false negative. The
script prints a markdown table (card, torch/transformers/timm/torchvision versions, date) and
writes it to ``--out``.

    python benchmarks/realmodels.py --out benchmarks/results/realmodels-h100.md
    python benchmarks/realmodels.py --cpu --out /tmp/realmodels-cpu.md   # audit only, no GPU
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

import realmodel_cases as rc  # noqa: E402


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "transformers", "timm", "torchvision", "graphguard"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _card() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (CPU audit only)"
    return torch.cuda.get_device_name(0)


def _site(h: dict[str, Any]) -> str:
    path = h["file"]
    for marker in ("site-packages" + os.sep, os.sep + "tests" + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{h['code']} at {path}:{h['line']} ({h['function']})"


def _graphguard_cell(r: dict[str, Any]) -> str:
    if r["outcome"] in ("setup-error", "crash", "timeout"):
        return f"{r['outcome']}: {r.get('error', '')}"[:160]
    parts = [_site(h) for h in r.get("hazards", [])[:2]]
    if r["outcome"] == "error":
        parts.append("error: " + r.get("error", "")[:120])
    if not parts:
        parts.append("silent")
    if "replay_match" in r:
        parts.append("replay = eager" if r["replay_match"] else "**replay differs**")
    return "; ".join(parts)


def _raw_cell(r: dict[str, Any]) -> str:
    if r["outcome"] == "ok":
        if r.get("replay_match"):
            return "captured, replay = eager"
        diff = r.get("max_abs_diff")
        state = r.get("state_rel_diff")
        extra = f" (max abs diff {diff:.3g})" if isinstance(diff, float) else ""
        extra += f" (parameter update rel. diff {state:.3g})" if isinstance(state, float) else ""
        return "captured, **replay differs**" + extra
    return f"{r['outcome']}: {r.get('error', '')}"[:160]


def _verdict(case: rc.ModelCase, raw: dict[str, Any] | None, phases: dict[str, Any]) -> str:
    if raw is None:  # CPU: the case's own label stands in for the raw judgement
        legal = case.legal
    elif raw["outcome"] not in ("ok", "error"):
        return "not judged (raw " + raw["outcome"] + ")"
    else:
        legal = rc.raw_is_legal(raw)
    verdicts = []
    for name, r in phases.items():
        if r["outcome"] in ("setup-error", "crash", "timeout"):
            verdicts.append(f"{name}: not run")
            continue
        reported = bool(r.get("hazards"))
        if legal and (reported or r["outcome"] != "ok" or r.get("replay_match") is False):
            verdicts.append(f"{name}: FALSE POSITIVE")
        elif not legal and not reported:
            verdicts.append(f"{name}: FALSE NEGATIVE")
        elif not legal:
            first = r["hazards"][0]
            got = (first["code"], first["file"], first["line"], first["function"])
            expected = {(h.code, *h.site.resolve()) for h in case.expect}
            if expected and got not in expected:
                verdicts.append(f"{name}: reported elsewhere")
    return "; ".join(verdicts) or "ok"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--cases", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--cpu", action="store_true", help="audit phase only, on the CPU")
    ap.add_argument("--jobs", type=int, default=0, help="processes at a time (default: cores/2)")
    ap.add_argument("--timeout", type=float, default=150.0, help="per-process limit in seconds")
    a = ap.parse_args()

    names = [n for n in a.cases.split(",") if n] or [c.name for c in rc.CASES]
    unknown = sorted(set(names) - set(rc.BY_NAME))
    if unknown:
        ap.error(f"unknown cases: {', '.join(unknown)}")
    device = "cpu" if a.cpu else "cuda"
    phases = ("audit",) if a.cpu else ("raw", "capture", "audit")
    skipped = {n: rc.BY_NAME[n].missing() for n in names if rc.BY_NAME[n].missing()}
    runnable = [n for n in names if n not in skipped]
    jobs = a.jobs or max(1, min(8, (os.cpu_count() or 2) // 2))

    t0 = time.time()
    results = rc.run_many([(n, p) for n in runnable for p in phases], device, jobs, a.timeout)
    seconds = time.time() - t0

    v = _versions()
    lines = [
        "# graphguard on real model steps",
        "",
        f"{datetime.date.today().isoformat()}, {_card()}; torch {v['torch']}, transformers "
        f"{v['transformers']}, timm {v['timm']}, torchvision {v['torchvision']}, graphguard "
        f"{v['graphguard']}. {len(runnable)} cases, {jobs} processes at a time, "
        f"{seconds:.0f} s. Generated by `benchmarks/realmodels.py`.",
        "",
        "| case | expected | raw `torch.cuda.graph` | graphguard capture | graphguard audit "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        case = rc.BY_NAME[n]
        if n in skipped:
            lines.append(
                f"| {n} | {case.verdict} | not run: needs {', '.join(skipped[n])} | | | skipped |"
            )
            continue
        raw = None if a.cpu else results[(n, "raw")]
        graphguard = {p: results[(n, p)] for p in phases if p != "raw"}
        cells = [
            n,
            case.verdict,
            "n/a (CPU)" if raw is None else _raw_cell(raw),
            "n/a (CPU)" if a.cpu else _graphguard_cell(graphguard["capture"]),
            _graphguard_cell(graphguard["audit"]),
            _verdict(case, raw, graphguard),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Cases: " + "; ".join(f"`{c.name}`: {c.what}" for c in rc.CASES if c.name in names),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
