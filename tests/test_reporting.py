"""The one reporting path (graphguard/_report.py): every hazard, whatever saw it, is collected by
``graphguard check``, silenced by ``graphguard.allow()``, logged the same way and judged by the
same policy table; rules own their messages."""

from __future__ import annotations

import contextlib
import json
import string
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch

import graphguard
from benchmarks._timing import warm_up
from graphguard import _patches, _report
from graphguard._cli import main

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"

# graphed's CPU path (eager calls under audit) is what emulates replay without a GPU; on a CUDA
# machine tests/test_graphed_cuda.py covers the real replay.
cpu_path = pytest.mark.skipif(HAS_CUDA, reason="CPU path of graphed")

Around = Callable[[str], contextlib.AbstractContextManager[Any]]


def _hazard_events(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "graphguard.hazard"]


@contextlib.contextmanager
def _reported() -> Iterator[list[graphguard.Diagnostic]]:
    """Every diagnostic that reaches the sinks (as ``graphguard check`` sees them) in the block."""
    seen: list[graphguard.Diagnostic] = []
    remove = _report.add_sink(seen.append)
    try:
        yield seen
    finally:
        remove()


# --- (a) graphguard check collects every hazard of one program ------------------------------------
PROGRAM = """\
import torch
import graphguard

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = 2.0


@graphguard.graphed(warmup=0)
def step(x):
    return x * SCALE  # HAZARD GG601


@graphguard.guard
def log_loss(loss):
    return loss.sum().item()  # HAZARD GG101


x = torch.ones(4, device=DEVICE)
first = step(x)
second = step(x)
kept = first + 1  # HAZARD GG701
log_loss(second)
SCALE = 3.0
step(x)
print("finished")
"""


def test_check_collects_stale_scalar_stale_output_and_host_sync_in_one_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One `graphguard check` run reports GG601, GG701 and GG101 at their lines and exits 1."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "program.py"
    script.write_text(PROGRAM, encoding="utf-8")
    marked = sorted(
        (line.rsplit("# HAZARD ", 1)[1], lineno)
        for lineno, line in enumerate(PROGRAM.splitlines(), start=1)
        if "# HAZARD " in line
    )
    status = main(["check", "--format", "jsonl", "program.py"])
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    diagnostics, summary = objects[:-1], objects[-1]["summary"]
    assert status == 1 and summary["exit_status"] == 1 and summary["completed"]
    assert sorted((d["code"], d["lineno"]) for d in diagnostics) == marked
    assert {d["code"] for d in diagnostics} == {"GG101", "GG601", "GG701"}


# --- (b) graphguard.allow() silences every kind of hazard at its line -----------------------------
def _interceptor_hit(around: Around) -> None:
    x = torch.ones(4, device=DEVICE)
    with graphguard.capture(mode="audit"), around("GG101"):
        x.sum().item()


def _wrapped_api_hit(around: Around) -> None:
    with graphguard.capture(mode="audit"), around("GG502"):
        torch.get_rng_state()


def _stale_scalar_at_replay(around: Around) -> None:
    scale = 2.0

    @graphguard.graphed(warmup=0)
    def step(x: torch.Tensor) -> torch.Tensor:
        return x * scale

    step(torch.ones(2))
    scale = 3.0
    with around("GG601"):
        out = step(torch.ones(2))
    torch.testing.assert_close(out * 1, torch.full((2,), 3.0))


def _stale_output_read(around: Around) -> None:
    @graphguard.graphed(warmup=0)
    def step(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    prev = step(torch.ones(2))
    step(torch.ones(2))
    with around("GG701"):
        prev + 1  # the read is the hazard


def _cross_thread_call(around: Around) -> None:
    if (torch.Stream, "synchronize") not in _patches.installed_targets():
        pytest.skip("torch.Stream methods cannot be wrapped on this interpreter")
    stream = torch.Stream(device="cpu")
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with around("GG107"):
                stream.synchronize()
        except BaseException as e:
            errors.append(e)

    key = id(errors)
    # The audit region keeps the wrappers installed; the registration stands for a capture in
    # torch's "global" error mode running in this thread.
    with graphguard.capture(mode="audit"):
        _patches.begin_global_capture(key, "fake-global-capture", None)
        try:
            worker = threading.Thread(target=other_thread, name="gg-other-thread")
            worker.start()
            worker.join()
        finally:
            _patches.end_global_capture(key)
    if errors:
        raise errors[0]


SITES = [
    pytest.param(_interceptor_hit, "GG101", id="interceptor"),
    pytest.param(_wrapped_api_hit, "GG502", id="wrapped-api"),
    pytest.param(_stale_scalar_at_replay, "GG601", id="stale-scalar", marks=cpu_path),
    pytest.param(_stale_output_read, "GG701", id="stale-output", marks=cpu_path),
    pytest.param(_cross_thread_call, "GG107", id="cross-thread"),
]


@pytest.mark.parametrize(("provoke", "code"), SITES)
def test_each_hazard_site_reports_its_code(provoke: Callable[[Around], None], code: str) -> None:
    """Without allow(), each kind of hazard site raises its rule's error (the default policy)."""
    with pytest.raises(graphguard.HazardError) as info:
        provoke(lambda code: contextlib.nullcontext())
    assert info.value.diagnostic.code == code


@pytest.mark.parametrize(("provoke", "code"), SITES)
def test_allow_silences_the_hazard_at_its_line(
    provoke: Callable[[Around], None], code: str
) -> None:
    """allow(code) around the hazardous line: no error, no log event, nothing reaches a sink."""
    with structlog.testing.capture_logs() as logs, _reported() as reported:
        provoke(graphguard.allow)
    assert reported == []
    assert _hazard_events(logs) == []


@pytest.mark.cuda
def test_allow_silences_stale_scalar_at_capture_replay() -> None:
    """Capture.replay() after the captured lr changed raises GG601, and allow() silences it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4, device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        opt.step()

    warm_up(step, 3)
    with graphguard.capture() as cap:
        step()
    cap.replay()
    opt.param_groups[0]["lr"] = 0.01
    with pytest.raises(graphguard.StaleHostScalarError):
        cap.replay()
    with structlog.testing.capture_logs() as logs, _reported() as reported:
        with graphguard.allow("GG601"):
            cap.replay()
        torch.cuda.synchronize()
    assert reported == [] and _hazard_events(logs) == []


# --- (c) quiet by default with structlog's default configuration ----------------------------------
@pytest.fixture
def structlog_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """structlog as an application that configured nothing has it; restored afterwards."""
    monkeypatch.delenv("GRAPHGUARD_LOG", raising=False)
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


def test_clean_guarded_function_prints_nothing_in_100_calls(
    structlog_defaults: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """A @guard function without hazards, called 100 times, writes nothing to stdout or stderr."""
    x = torch.ones(4, device=DEVICE)

    @graphguard.guard
    def step(x: torch.Tensor) -> torch.Tensor:
        return (x * 2).sum()

    for _ in range(100):
        step(x)
    assert capfd.readouterr() == ("", "")


def test_hazard_in_guarded_function_is_printed(
    structlog_defaults: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """With structlog's defaults a hazard is printed as a graphguard.hazard line with its code."""
    x = torch.ones(4, device=DEVICE)

    @graphguard.guard(on_hazard="warn")
    def step(x: torch.Tensor) -> float:
        return x.sum().item()

    step(x)
    out, err = capfd.readouterr()
    printed = out + err
    assert "graphguard.hazard" in printed and "code=GG101" in printed


# --- (d) the policy table, audit column ---------------------------------------------------------
def _run_in(region: str, policy: str, body: Callable[[], Any]) -> None:
    if region == "capture":
        with graphguard.capture(mode="audit", on_hazard=policy):
            body()
    else:
        graphguard.guard(on_hazard=policy)(body)()


@pytest.mark.parametrize("region", ["capture", "guard"])
def test_raise_policy_in_audit_raises_before_the_call(region: str) -> None:
    """on_hazard='raise' in audit logs an error event and raises; the hazardous call never runs."""
    with torch.random.fork_rng(devices=[]):
        before = torch.initial_seed()
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(graphguard.RngStateError):
                _run_in(region, "raise", lambda: torch.manual_seed(before + 1))
            assert torch.initial_seed() == before
    assert [(e["action"], e["log_level"]) for e in _hazard_events(logs)] == [("raised", "error")]


@pytest.mark.parametrize("region", ["capture", "guard"])
@pytest.mark.parametrize("policy", ["warn", "fallback"])
def test_warn_and_fallback_in_audit_log_then_run_the_call(region: str, policy: str) -> None:
    """on_hazard='warn'/'fallback' in audit log a warning and then run the hazardous call."""
    with torch.random.fork_rng(devices=[]):
        before = torch.initial_seed()
        with structlog.testing.capture_logs() as logs:
            _run_in(region, policy, lambda: torch.manual_seed(before + 1))
            assert torch.initial_seed() == before + 1
    events = _hazard_events(logs)
    assert [(e["action"], e["log_level"]) for e in events] == [("logged", "warning")]
    assert events[0]["phase"] == "audit"


# --- (e) rules own their messages --------------------------------------------------------------
#: Every fact a message template may use. ``_report._render`` passes the first four for every
#: finding; the rest are the ``Finding.facts`` a check site passes for its rule.
FACTS = {
    "api": "the call, as the user wrote it (Finding.api)",
    "tensor": "describe_tensor(): device, shape and dtype, never values",
    "where": "the phase in words (audit, capture, replay)",
    "label": "the region's label",
    "key": "GG101 scalar-argument: the keyword (alpha/value) that took a tensor",
    "which": "GG301: 'the default stream' or 'a side stream'",
    "thread": "cross-thread: the calling thread's name",
    "capturing_thread": "cross-thread: the capturing thread's name",
    "name": "GG601: the scalar's name",
    "captured": "GG601: safe_value() of the value at capture",
    "current": "GG601: safe_value() of the value now",
    "more": "GG601: more_scalars(), the tail naming how many changed",
    "optimizer": "GG602: the optimizer's class name",
    "groups": "GG602: the indices of the param groups that are not capturable",
    "index": "GG701: which output of the step",
    "replay": "GG901: which verified replay of the shape class (1, 2, ...)",
    "path": "GG901: the first differing tensor's path (output[0], model.fc.weight, ...)",
    "difference": "GG901: max abs and rel difference (statistics, never values)",
    "call": "GG701: the call that returned the output",
    "overwritten_by": "GG701: the call whose replay overwrote it",
    "backend": "GG803: the group's backend for CUDA tensors (or its backend string)",
    "env": "GG804 blocking: the blocking-wait environment variable that is set",
    "iterations": "GG805: how many iterations the DDP module has completed",
}


def _template_fields() -> set[str]:
    fields = set()
    for rule in graphguard.RULES.values():
        for _variant, template in rule.messages:
            for _text, field, _spec, _conversion in string.Formatter().parse(template):
                if field is not None:
                    fields.add(field.split(".")[0].split("[")[0])
    return fields


def test_message_templates_use_only_documented_facts() -> None:
    """Every field of every rule's message templates is one of the documented facts."""
    assert _template_fields() <= set(FACTS)


@pytest.mark.parametrize("code", sorted(graphguard.RULES))
def test_every_message_variant_renders_with_the_facts(code: str) -> None:
    """Each variant of each rule formats with a generic fact dict, without KeyError."""
    rule = graphguard.RULES[code]
    facts = {name: f"<{name}>" for name in FACTS}
    for variant, _template in rule.messages:
        text = rule.message(variant, **facts)
        assert text and "{" not in text


@cpu_path
def test_stale_tensor_learning_rate_value_is_never_shown() -> None:
    """GG601 for a 0-dim tensor lr names it but shows neither its old nor its new value."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.123456))

    @graphguard.graphed(warmup=0)
    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss.detach()

    x = torch.randn(8, 4)
    step(x)
    step(x)
    opt.param_groups[0]["lr"].fill_(0.654321)
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(graphguard.StaleHostScalarError) as info,
    ):
        step(x)
    shown = str(info.value.diagnostic) + "\n" + repr(_hazard_events(logs))
    assert "param_groups[0]['lr']" in shown
    assert "0.123456" not in shown and "0.654321" not in shown
