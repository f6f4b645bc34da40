"""The public contract: names, exceptions, arguments, policies and replay semantics (CPU)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import textwrap

import pytest
import structlog
import torch
from _env import child_env

import graphguard
from graphguard import _errors, _patches


def test_all_matches_public_names() -> None:
    """__all__ lists exactly the public names the package defines, sorted."""
    public = {n for n in dir(graphguard) if not n.startswith("_")} | {"__version__"}
    modules = {n for n in public if type(getattr(graphguard, n)).__name__ == "module"}
    assert set(graphguard.__all__) == public - modules
    assert len(graphguard.__all__) == len(set(graphguard.__all__))


def test_exception_tree() -> None:
    """HazardError is a GraphGuardError and a RuntimeError; ConfigError is a ValueError."""
    assert issubclass(graphguard.HazardError, graphguard.GraphGuardError)
    assert issubclass(graphguard.HazardError, RuntimeError)
    assert issubclass(graphguard.ConfigError, graphguard.GraphGuardError)
    assert issubclass(graphguard.ConfigError, ValueError)
    assert issubclass(graphguard.NotCapturedError, RuntimeError)
    for kind in graphguard.KINDS:
        cls = _errors.error_class_for(kind)
        assert issubclass(cls, graphguard.HazardError) and cls.kind == kind


def test_hazard_error_pickles_with_its_diagnostic(ctx) -> None:
    """A HazardError survives pickling with an equal diagnostic and the same class."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        ctx.x.sum().item()
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is type(info.value)
    assert clone.diagnostic == info.value.diagnostic
    assert str(clone) == str(info.value)


def test_diagnostic_is_frozen(ctx) -> None:
    """Diagnostics are immutable records."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        ctx.x.sum().item()
    with pytest.raises(AttributeError):
        info.value.diagnostic.code = "GG999"  # type: ignore[misc]


def test_message_reads_like_a_compiler_error(ctx) -> None:
    """The message has code and title, file:line with the source line, why, fix and docs."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        _ = ctx.x.sum().item()  # the line under test
    text = str(info.value)
    d = info.value.diagnostic
    assert text.splitlines()[0] == f"GG101 [host-sync] {d.title}"
    assert f"{__file__}:{d.lineno} in test_message_reads_like_a_compiler_error" in text
    assert "_ = ctx.x.sum().item()  # the line under test" in text
    assert "= why:" in text and "= fix:" in text and "docs/rules/GG101.md" in text


def test_traceback_ends_in_user_code(ctx) -> None:
    """Internal graphguard and torch frames are trimmed from the raised error's traceback."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        ctx.x.sum().item()
    files = [entry.path for entry in info.traceback]
    assert not any("graphguard/" in str(f) and "tests" not in str(f) for f in files)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "fast"}, "mode"),
        ({"on_hazard": "ignore"}, "on_hazard"),
        ({"capture_error_mode": "local"}, "capture_error_mode"),
        ({"label": 3}, "label"),
        ({"graph": object()}, "graph"),
        ({"stream": "s0"}, "stream"),
        ({"pool": 7}, "pool"),
    ],
)
def test_bad_capture_arguments_raise_config_error(kwargs: dict, name: str) -> None:
    """capture() rejects a bad value with ConfigError naming the argument and allowed values."""
    with pytest.raises(graphguard.ConfigError, match=rf"^{name}=.*allowed values"):
        graphguard.capture(**kwargs)


def test_capture_mode_without_cuda_is_a_config_error() -> None:
    """mode='capture' on a machine without CUDA says why and what to use instead."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with (
        pytest.raises(graphguard.ConfigError, match="mode='auto'"),
        graphguard.capture(mode="capture"),
    ):
        pass


def test_bad_guard_arguments_raise_config_error() -> None:
    """guard() validates its options when decorating, not at the first call."""
    with pytest.raises(graphguard.ConfigError, match="on_hazard="):
        graphguard.guard(on_hazard="explode")
    with pytest.raises(graphguard.ConfigError, match="callable"):
        graphguard.guard()(42)


def test_auto_mode_without_cuda_audits_and_logs_choice(ctx) -> None:
    """mode='auto' resolves to audit without CUDA, and the chosen mode is logged."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with structlog.testing.capture_logs() as logs, graphguard.capture(label="s") as cap:
        ctx.x * 2
    assert cap.mode == "audit"
    start = [e for e in logs if e["event"] == "graphguard.capture.start"]
    assert start and start[0]["mode"] == "audit" and start[0]["requested_mode"] == "auto"


def test_replay_after_audit_region_raises_not_captured(ctx) -> None:
    """cap.replay() after an audit-mode region raises NotCapturedError, never a silent no-op."""
    with graphguard.capture(mode="audit") as cap:
        ctx.x * 2
    assert cap.graph is None
    with pytest.raises(graphguard.NotCapturedError, match="audit mode"):
        cap.replay()


def test_replay_before_region_raises_not_captured() -> None:
    """cap.replay() before the region ran says so."""
    cap = graphguard.capture(mode="audit")
    with pytest.raises(graphguard.NotCapturedError, match="has not run yet"):
        cap.replay()


def test_region_cannot_be_entered_twice(ctx) -> None:
    """A capture object is one region; re-entering it is an error."""
    cap = graphguard.capture(mode="audit")
    with cap:
        pass
    with pytest.raises(graphguard.GraphGuardError, match="only once"), cap:
        pass


@pytest.mark.parametrize("policy", ["warn", "fallback"])
def test_warn_and_fallback_in_audit_log_and_continue(policy: str, ctx) -> None:
    """In audit mode warn/fallback log each hazard and run the body to the end."""
    with (
        structlog.testing.capture_logs() as logs,
        graphguard.capture(mode="audit", on_hazard=policy) as cap,
    ):
        a = ctx.x.sum().item()
        b = ctx.x[ctx.x > 0]
    assert a == pytest.approx(ctx.x.sum().item())
    assert torch.equal(b, ctx.x[ctx.x > 0])
    assert [d.code for d in cap.hazards] == ["GG101", "GG105"]
    events = [e for e in logs if e["event"] == "graphguard.hazard"]
    assert [e["action"] for e in events] == ["logged", "logged"]
    assert all(e["log_level"] == "warning" for e in events)


def test_warn_emulates_cuda_only_calls_on_cpu(ctx) -> None:
    """Without CUDA, warn continues past calls that cannot run here by emulating them on CPU."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        torch.cuda.synchronize()
        pinned = torch.empty(4, pin_memory=True)
        moved = torch.ones(3).cuda()
        copy = torch.arange(3.0).pin_memory()
    assert pinned.shape == (4,) and moved.device.type == "cpu" and copy.tolist() == [0, 1, 2]
    assert [d.code for d in cap.hazards] == ["GG107", "GG201", "GG401", "GG201"]


def test_cuda_only_api_is_reported_before_torchs_error(ctx) -> None:
    """On CPU, torch.cuda.synchronize() is reported as host-sync, not torch's CUDA error."""
    with pytest.raises(graphguard.HostSyncError), graphguard.capture(mode="audit"):
        torch.cuda.synchronize()


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("Stream.synchronize", "GG107"),
        ("Stream.query", "GG107"),
        ("Event.synchronize", "GG107"),
        ("Event.query", "GG107"),
        ("Event.elapsed_time", "GG107"),
    ],
)
def test_stream_and_event_methods_are_intercepted(
    method: str, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stream and Event syncs/queries are reported before they run.

    They are wrapped only in a process that sees a CUDA device (without one no such object can
    be made): this process is made to count as one. The method is called unbound with a
    stand-in instance: the interceptor must decide before the method body runs.
    """
    monkeypatch.setattr(_patches, "cuda_available", lambda: True)
    cls_name, name = method.split(".")
    cls = getattr(torch.cuda, cls_name)
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        args = (object(),) if name != "elapsed_time" else (object(), object())
        getattr(cls, name)(*args)
    assert info.value.code == code
    assert info.value.diagnostic.function == "test_stream_and_event_methods_are_intercepted"


def test_cuda_stream_and_event_types_are_not_written_without_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a CUDA device no torch.cuda stream or event exists, so a region leaves their
    types alone (a type write slows every later attribute read of its instances)."""
    monkeypatch.setattr(_patches, "cuda_available", lambda: False)
    before = {name: vars(torch.cuda.Event).get(name) for name in ("synchronize", "query")}
    with graphguard.capture(mode="audit"):
        assert _patches.is_installed()
        now = {name: vars(torch.cuda.Event).get(name) for name in ("synchronize", "query")}
        assert now == before
    if not torch.cuda.is_available():  # what makes the wrappers pointless on such a machine
        for make in (torch.cuda.Event, torch.cuda.Stream):
            with pytest.raises(RuntimeError):
                make()


def test_allow_skips_a_known_hazard_at_one_call_site(ctx) -> None:
    """graphguard.allow() permits named codes or kinds inside its block only."""
    with graphguard.capture(mode="audit") as cap:
        with graphguard.allow("GG101"):
            ctx.x.sum().item()
        with graphguard.allow("host-sync"):
            ctx.x.tolist()
    assert cap.hazards == []
    with (
        pytest.raises(graphguard.HostSyncError),
        graphguard.capture(mode="audit"),
        graphguard.allow("GG105"),
    ):
        ctx.x.sum().item()


def test_allow_rejects_unknown_codes() -> None:
    """allow() names the valid codes and kinds when given an unknown one."""
    with pytest.raises(graphguard.ConfigError, match="GG101"), graphguard.allow("GG999"):
        pass


def test_host_tensor_created_in_region_is_not_a_device_tensor() -> None:
    """In CPU audit, a tensor built in the region without a device is a genuine host tensor."""
    with graphguard.capture(mode="audit") as cap:
        steps = torch.tensor([3, 4])
        total = int(steps.sum()) + steps[0].item()
    assert total == 10 and cap.hazards == []


def test_guard_reports_label_and_phase(ctx) -> None:
    """A guarded function's diagnostics carry its label (the qualname by default) and phase."""

    @graphguard.guard
    def train_step(x):
        return x.sum().item()

    with pytest.raises(graphguard.HostSyncError) as info:
        train_step(ctx.x)
    assert info.value.diagnostic.label.endswith("train_step")
    assert info.value.diagnostic.phase == "audit"


def test_guard_with_options_keeps_function_metadata(ctx) -> None:
    """@guard(...) keeps the wrapped function's name and docstring and returns its result."""

    @graphguard.guard(on_hazard="warn", label="fwd")
    def forward(x):
        """Doubles x."""
        return x * 2

    assert forward.__name__ == "forward" and forward.__doc__ == "Doubles x."
    assert torch.equal(forward(ctx.x), ctx.x * 2)


def test_json_logs_are_opt_in_and_local(tmp_path, ctx) -> None:
    """enable_json_logs writes JSON lines without configuring structlog globally."""
    import json

    before = structlog.get_config()
    path = tmp_path / "events.jsonl"
    graphguard.enable_json_logs(path)
    try:
        with pytest.raises(graphguard.HazardError), graphguard.capture(mode="audit", label="j"):
            ctx.x.sum().item()
    finally:
        graphguard.disable_json_logs()
    assert structlog.get_config() == before
    events = [json.loads(line) for line in path.read_text().splitlines()]
    hazard = [e for e in events if e["event"] == "graphguard.hazard"]
    assert hazard and hazard[0]["code"] == "GG101" and hazard[0]["level"] == "error"
    assert hazard[0]["label"] == "j" and re.match(r"\d{4}-\d\d-\d\dT", hazard[0]["timestamp"])


def test_bad_log_environment_fails_at_region_start(monkeypatch, ctx) -> None:
    """An invalid GRAPHGUARD_LOG is a ConfigError when a guard starts, not at a hazard."""
    from graphguard import _log

    monkeypatch.setenv("GRAPHGUARD_LOG", "yes")
    monkeypatch.setattr(_log, "_env_applied", None)

    @graphguard.guard(on_hazard="warn")
    def step(x):
        return x * 2

    with pytest.raises(graphguard.ConfigError, match="GRAPHGUARD_LOG"):
        step(ctx.x)
    # Every region start re-reads it: the second region is refused too, not run silently.
    with pytest.raises(graphguard.ConfigError, match="GRAPHGUARD_LOG"):
        step(ctx.x)


_UNCAUGHT = {
    "capture": """
        with graphguard.capture(mode="audit"):
            x.sum().item()  # HAZARD
    """,
    "guard": """
        @graphguard.guard
        def step(t):
            return t.sum().item()  # HAZARD

        step(x)
    """,
    "graphed": """
        @graphguard.graphed
        def step(t):
            return t.sum().item()  # HAZARD

        step(x)
    """,
}


@pytest.mark.parametrize("entry", sorted(_UNCAUGHT))
def test_uncaught_hazard_traceback_ends_in_user_code(entry, tmp_path) -> None:
    """Python's own report of an uncaught HazardError: the last frame is the user's hazard line,
    then the diagnostic; no graphguard frame in between (capture, guard and graphed alike)."""
    script = tmp_path / "prog.py"
    body = textwrap.dedent(_UNCAUGHT[entry])
    script.write_text(
        "import structlog, logging, torch, graphguard\n"
        "structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))\n"
        'x = torch.ones(2, device="cuda" if torch.cuda.is_available() else "cpu")\n' + body
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=child_env()
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    start = lines.index("Traceback (most recent call last):")
    files = [line for line in lines[start:] if line.startswith('  File "')]
    assert files and all(str(script) in f for f in files), done.stderr
    last = max(i for i, line in enumerate(lines) if line.startswith('  File "'))
    assert "# HAZARD" in lines[last + 1]
    assert any(line.startswith("graphguard._errors.HostSyncError: GG101") for line in lines[last:])


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_a_known_torch_capture_error_gets_one_note_naming_its_cause() -> None:
    """torch's own capture failures pass through unchanged, with graphguard's reading added
    as a note (once, however many regions they cross); other errors get none."""
    message = "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`"
    with (
        pytest.raises(RuntimeError) as info,
        graphguard.capture(mode="audit"),
        graphguard.capture(mode="audit"),
    ):
        raise RuntimeError(message)
    assert str(info.value) == message
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith("graphguard: cuBLAS makes its handle")
    with pytest.raises(RuntimeError) as info, graphguard.capture(mode="audit"):
        raise RuntimeError("operation not permitted when stream is capturing")
    assert "no graphguard rule names it" in info.value.__notes__[0]
    with pytest.raises(RuntimeError) as info, graphguard.capture(mode="audit"):
        raise RuntimeError("some other failure")
    assert not getattr(info.value, "__notes__", [])
    with pytest.raises(ValueError) as other, graphguard.capture(mode="audit"):
        raise ValueError(message)  # not a torch runtime error: left alone
    assert not getattr(other.value, "__notes__", [])
