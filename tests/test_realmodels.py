"""Real third-party model steps: graphguard judges them the way a CUDA-graph capture does.

CPU tests run each case of ``realmodel_cases.py`` in audit mode (CPU tensors stand for device
tensors): a legal step is silent, an illegal one is reported at the library line (or the marked
line) the case names. The ``cuda`` tests judge legality against plain ``torch.cuda.graph`` in a
fresh process per phase: raw capture with replays equal to eager means legal, and graphguard must
then be silent in capture and audit mode; a raw failure means graphguard must report, at the
case's line.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import structlog
import torch
from realmodel_cases import (
    CASES,
    PHASES,
    WARMUP,
    ModelCase,
    build_nanogpt,
    prepare,
    raw_is_legal,
    run_many,
)

import graphguard

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LEGAL = [c for c in CASES if c.legal]
ILLEGAL = [c for c in CASES if not c.legal]


def _need(case: ModelCase) -> None:
    missing = case.missing()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not importable here)")


def _expected_sites(case: ModelCase) -> set[tuple[str, str, int, str]]:
    return {(h.code, *h.site.resolve()) for h in case.expect}


def _reported(d: Any) -> tuple[str, str, int, str]:
    return (d.code, os.path.realpath(d.filename), d.lineno, d.function)


def _hazard_events(logs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{e['code']} {e['filename']}:{e['lineno']} ({e['api']})"
        for e in logs
        if e["event"] == "graphguard.hazard"
    ]


# --- CPU: audit mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", LEGAL, ids=lambda c: c.name)
def test_legal_step_is_silent_in_audit_capture(case: ModelCase) -> None:
    """A step plain torch captures and replays correctly raises and logs nothing under audit."""
    _need(case)
    step = prepare(case, DEVICE)
    with structlog.testing.capture_logs() as logs, graphguard.capture(mode="audit") as cap:
        step.run()
    assert _hazard_events(logs) == []
    assert cap.hazards == []


@pytest.mark.parametrize("case", LEGAL, ids=lambda c: c.name)
def test_legal_step_is_silent_under_guard(case: ModelCase) -> None:
    """The same legal step decorated with @graphguard.guard runs without a diagnostic."""
    _need(case)
    step = prepare(case, DEVICE)
    with structlog.testing.capture_logs() as logs:
        graphguard.guard(step.run)()
    assert _hazard_events(logs) == []


@pytest.mark.parametrize("case", LEGAL, ids=lambda c: c.name)
def test_audit_computes_what_eager_computes(case: ModelCase) -> None:
    """Audit mode's emulation leaves a legal step's outputs equal to an unguarded twin's."""
    _need(case)
    audited, eager = prepare(case, DEVICE), prepare(case, DEVICE)
    for ma, mb in zip(audited.modules, eager.modules, strict=True):
        mb.load_state_dict(ma.state_dict())
    with graphguard.capture(mode="audit", on_hazard="warn"):
        got = audited.run()
    torch.testing.assert_close(got, eager.run())


@pytest.mark.parametrize("case", ILLEGAL, ids=lambda c: c.name)
def test_illegal_step_is_reported_at_its_line_in_audit(case: ModelCase) -> None:
    """An illegal step raises in audit mode with the case's code, file, line and function."""
    _need(case)
    step = prepare(case, DEVICE)
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        step.run()
    assert _reported(info.value.diagnostic) in _expected_sites(case)


@pytest.mark.parametrize("case", ILLEGAL, ids=lambda c: c.name)
def test_illegal_step_is_reported_at_its_line_under_guard(case: ModelCase) -> None:
    """The illegal step decorated with @graphguard.guard reports the same code at the same line."""
    _need(case)
    step = prepare(case, DEVICE)
    with pytest.raises(graphguard.HazardError) as info:
        graphguard.guard(step.run)()
    assert _reported(info.value.diagnostic) in _expected_sites(case)


def test_nanogpt_loop_logging_outside_the_step_is_silent() -> None:
    """A nanoGPT loop reading loss.item() after each guarded step, not inside it, is silent."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    step = build_nanogpt(device)
    train_step = graphguard.guard(step.run)
    losses = []
    with structlog.testing.capture_logs() as logs:
        for it in range(WARMUP):
            step.before_step(it)
            (loss,) = train_step()
            losses.append(loss.item())
    assert _hazard_events(logs) == []
    assert len(losses) == WARMUP and all(v == v for v in losses)


# --- CUDA: judged against plain torch.cuda.graph ------------------------------------------------
@pytest.fixture(scope="module")
def gpu_results() -> dict[tuple[str, str], dict[str, Any]]:
    """Every phase of every runnable case, each in a fresh process, several at a time."""
    names = [c.name for c in CASES if not c.missing()]
    jobs = max(1, min(8, (os.cpu_count() or 2) // 2))
    return run_many([(n, p) for n in names for p in PHASES], "cuda", jobs, timeout=240)


def _gpu(results: dict[tuple[str, str], dict[str, Any]], case: ModelCase, phase: str) -> Any:
    _need(case)
    return results[(case.name, phase)]


def _assert_judged_like_raw(case: ModelCase, raw: dict[str, Any], got: dict[str, Any]) -> None:
    assert raw["outcome"] in ("ok", "error"), raw
    if raw_is_legal(raw):
        assert got["hazards"] == [], got
        if got["phase"] != "audit":
            assert got["outcome"] == "ok" and got["replay_match"] is True, got
    else:
        assert got["hazards"], got
        first = got["hazards"][0]
        reported = (first["code"], first["file"], first["line"], first["function"])
        assert reported in _expected_sites(case), got


@pytest.mark.cuda
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_raw_torch_confirms_the_cases_verdict(
    case: ModelCase, gpu_results: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """Plain torch.cuda.graph captures and replays exactly the cases marked legal."""
    raw = _gpu(gpu_results, case, "raw")
    assert raw_is_legal(raw) == case.legal, raw


@pytest.mark.cuda
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_capture_mode_agrees_with_raw_torch(
    case: ModelCase, gpu_results: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """graphguard.capture is silent with replays equal to eager where raw torch is, else reports."""
    raw, got = _gpu(gpu_results, case, "raw"), _gpu(gpu_results, case, "capture")
    _assert_judged_like_raw(case, raw, got)


@pytest.mark.cuda
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_guard_in_plain_capture_agrees_with_raw_torch(
    case: ModelCase, gpu_results: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """A @guard step inside plain torch.cuda.graph is silent where raw torch is, else reports."""
    raw, got = _gpu(gpu_results, case, "raw"), _gpu(gpu_results, case, "guard")
    _assert_judged_like_raw(case, raw, got)


@pytest.mark.cuda
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_audit_on_gpu_agrees_with_raw_torch(
    case: ModelCase, gpu_results: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """Audit mode on CUDA tensors reports exactly where raw torch fails, at the case's line."""
    raw, got = _gpu(gpu_results, case, "raw"), _gpu(gpu_results, case, "audit")
    assert got["outcome"] == "ok", got
    _assert_judged_like_raw(case, raw, got)


@pytest.mark.cuda
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_process_is_healthy_after_graphguard_capture(
    case: ModelCase, gpu_results: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """After graphguard's capture, legal or refused, ordinary CUDA work still runs."""
    got = _gpu(gpu_results, case, "capture")
    assert got.get("healthy_after") is True, got
