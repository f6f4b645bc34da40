"""Audit's verdicts against what torch itself did under a raw capture on a GPU.

``benchmarks/measure_rules.py`` runs each of its cases (one short body each) inside a plain
``torch.cuda.graph`` on a GPU, and ``benchmarks/results/measure-rules-h200.md`` records what torch
did: an error, a process left unusable, or a capture that worked. Here every measured case runs
under graphguard's audit, and the verdict must match the measurement: a hazard reported exactly
when torch refused the capture, nothing reported when torch captured it. So a rule that torch
contradicts (a false alarm, or a miss) fails CI, with the measured row in the message.

Without CUDA (CI) the case's tensors are CPU tensors standing for device tensors, as audit
emulates them; with CUDA they are device tensors and audit runs the body eagerly (no capture,
so no body can poison the process). "Captured" rows whose replay differs from eager are random
draws or the capture query itself, which are legal.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import graphguard
from benchmarks._timing import warm_up

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "benchmarks" / "results" / "measure-rules-h200.md"
HAS_CUDA = torch.cuda.is_available()


def _cases() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location(
        "measure_rules", ROOT / "benchmarks" / "measure_rules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.CASES)


def _measured() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in TABLE.read_text().splitlines():
        match = re.fullmatch(r"\| `(.*)` \| (.*) \| (.*) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


CASES = _cases()
MEASURED = _measured()

# Cases the CPU emulation cannot stand for, each for a reason its docs state; strict, so that
# the marker goes when the reason does.
CPU_LIMITS = {
    "torch.Stream.synchronize()": "the body builds a CUDA stream, which a CPU-only torch cannot",
    "pageable.copy_(device, non_blocking=True)": (
        "the host buffer is made before the region, and a CPU tensor made there stands for a "
        "device tensor (docs/audit.md, limits)"
    ),
}


def _params() -> list[Any]:
    params = []
    for name in CASES:
        marks = []
        if name not in MEASURED:
            # a row written for the next GPU run: nothing to hold audit to yet
            marks.append(
                pytest.mark.skip(reason=f"not measured on a GPU yet (not in {TABLE.name})")
            )
        elif not HAS_CUDA and name in CPU_LIMITS:
            marks.append(pytest.mark.xfail(strict=True, reason=CPU_LIMITS[name]))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _load_body(name: str, tmp_path: Path) -> Any:
    """The case's body as a function in a real file: audit reads call sites' source lines."""
    path = tmp_path / "measured_case.py"
    path.write_text(f"def body(torch, x, W, H, P, EV, M):\n    {CASES[name]}\n    return out\n")
    spec = importlib.util.spec_from_file_location(f"measured_case_{abs(hash(name))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.body


def _inputs() -> dict[str, Any]:
    """measure_rules.py's inputs, on the device where there is one."""
    device = "cuda" if HAS_CUDA else "cpu"
    weight = torch.nn.Parameter(torch.randn(8, device=device))
    weight.grad = torch.randn(8, device=device)
    return {
        "torch": torch,
        "x": torch.randn(1024, device=device),
        "W": weight,
        "H": torch.empty(1024),
        "P": torch.empty(1024, pin_memory=HAS_CUDA),
        "EV": torch.Event(device=device),
        "M": {},
    }


def test_the_table_holds_no_row_of_a_removed_case() -> None:
    """Every measured row belongs to a case measure_rules.py still has (a renamed case would
    otherwise leave its measurement unchecked)."""
    stale = [name for name in MEASURED if name not in CASES]
    assert stale == [], f"rows of {TABLE.name} with no case in measure_rules.py: {stale}"


@pytest.mark.parametrize("name", _params())
def test_audit_reports_exactly_what_torch_refused(name: str, tmp_path: Path) -> None:
    what, usable = MEASURED[name]
    refused = not what.startswith("captured")
    body = _load_body(name, tmp_path)
    inputs = _inputs()
    if HAS_CUDA:
        # As measure_rules.py does before its capture: two eager calls, so that what a body
        # builds once (a module kept in M, a cuBLAS handle) exists before the region.
        warm_up(lambda: body(**inputs), k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with graphguard.capture(mode="audit", on_hazard="warn", label=name) as cap:
            body(**inputs)
    reported = [f"{d.code} ({d.api})" for d in cap.hazards]
    measured = f"torch under raw capture: {what}; process usable after: {usable}"
    assert bool(reported) == refused, f"{name}: audit reported {reported or 'nothing'}; {measured}"
