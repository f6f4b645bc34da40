"""Every hazard in the table is caught in audit mode, with its kind and the user's line."""

from __future__ import annotations

import pytest
import structlog
import torch
from hazard_cases import CASES, CLEAN, Case, Ctx

import graphguard

CPU_CASES = [c for c in CASES if c.cpu]
CPU_CLEAN = [c for c in CLEAN if c.cpu]


def _assert_points_at_case(err: graphguard.HazardError, case: Case) -> None:
    d = err.diagnostic
    assert (d.code, d.kind) == (case.code, case.kind)
    assert err.code == case.code and err.kind == case.kind
    assert d.filename == case.fn.__code__.co_filename
    assert d.lineno == case.line
    assert d.function == case.fn.__name__
    assert d.source_line.endswith("# HAZARD") or "# HAZARD" in d.source_line


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.name)
def test_capture_audit_raises_with_users_line(case: Case, ctx: Ctx) -> None:
    """Inside capture(mode="audit") each hazard raises its kind's error naming the hazard line."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        case.fn(ctx)
    assert type(info.value) is graphguard._errors.error_class_for(case.kind)
    _assert_points_at_case(info.value, case)


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.name)
def test_guard_decorator_raises_with_users_line(case: Case, ctx: Ctx) -> None:
    """A @guard-decorated step reports the same hazard at the same line."""
    step = graphguard.guard(case.fn)
    with pytest.raises(graphguard.HazardError) as info:
        step(ctx)
    _assert_points_at_case(info.value, case)


@pytest.mark.parametrize("case", CPU_CLEAN, ids=lambda c: c.name)
def test_clean_code_is_never_reported(case: Case, ctx: Ctx) -> None:
    """Legal capture code runs untouched under the guard and produces no diagnostics."""
    with structlog.testing.capture_logs() as logs, graphguard.capture(mode="audit") as cap:
        out = case.fn(ctx)
    assert cap.hazards == []
    assert not [e for e in logs if e["event"] == "graphguard.hazard"]
    expected = case.fn(ctx)
    if isinstance(expected, torch.Tensor) and case.name != "dropout-rand":
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.name)
def test_hazard_is_logged_as_structured_event(case: Case, ctx: Ctx) -> None:
    """Each hazard is one graphguard.hazard event with the diagnostic's fields and no values."""
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(graphguard.HazardError),
        graphguard.capture(mode="audit", label="step"),
    ):
        case.fn(ctx)
    events = [e for e in logs if e["event"] == "graphguard.hazard"]
    assert len(events) == 1
    event = events[0]
    assert event["code"] == case.code and event["kind"] == case.kind
    assert event["lineno"] == case.line and event["label"] == "step"
    assert event["phase"] == "audit" and event["thread"] == "MainThread"
    for key in ("api", "message", "hint", "filename", "function", "source_line", "docs"):
        assert event[key]
    assert not any(isinstance(v, torch.Tensor) for v in event.values())
    values = {f"{v:.4f}" for v in ctx.x[:8].tolist()}
    assert not any(v in repr(event) for v in values), "a tensor value leaked into the event"
