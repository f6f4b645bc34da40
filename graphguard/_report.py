"""The one way out for every hazard: allow-list, diagnostic, sinks, log event, then the policy.

Every finding, whatever saw it (the torch-function interceptor, a wrapped torch API, a stale
scalar at replay, a stale graph output, another thread's call during a global capture), ends in
:func:`report`. That is the only place that consults ``graphguard.allow()``, builds the
diagnostic, notifies the sinks of ``graphguard check`` and the pytest plugin, logs the
``graphguard.hazard`` event, honours collect mode and applies the policy.

Policies (``on_hazard``), by phase:

========  ==================================  ===============================================
policy    audit (eager, no capture)           capture (a graphguard capture is recording)
========  ==================================  ===============================================
raise     raise before the call               raise before the call; the capture is ended
                                              cleanly by the region and its graph discarded
warn      log, then run the call              log, end the capture cleanly, run the recorded
                                              prefix once and continue eagerly (as fallback)
fallback  log, then run the call              same as warn
========  ==================================  ===============================================

Under a capture graphguard does not own (a plain ``torch.cuda.graph`` around a ``@guard``
function) every policy raises: only the owner can end that capture, and letting the call through
would invalidate it and poison the process. Findings whose call cannot be skipped or replaced
(``can_continue=False``: a cross-thread call during a global capture, a stale replay) raise under
every policy, except in collect mode.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._diagnostic import Diagnostic, describe_tensor, escape_controls, make_diagnostic
from ._errors import error_class_for
from ._log import get_logger
from ._rules import RULES
from ._state import is_allowed, overrides

__all__ = ["Finding", "Region", "Scope", "add_sink", "report"]


@dataclass(frozen=True)
class Finding:
    """What a check site knows about one hazard: facts, never prose (the rule owns the text)."""

    code: str
    api: str
    #: Which of the rule's message templates fits (``Rule.messages``).
    variant: str = "default"
    tensor: Any = None
    facts: Mapping[str, object] = field(default_factory=dict)
    details: tuple[tuple[str, str], ...] = ()
    #: (filename, lineno, function) when the hazard's line is known without a frame walk.
    location: tuple[str, int, str] | None = None
    #: On a machine without CUDA, what to return instead of running a call that cannot run here.
    emulate: Callable[[], Any] | None = None


class Region(Protocol):
    """What the reporting path needs from the region a hazard happened in.

    Implemented by ``Capture`` (a capture region) and ``Graphed`` (a graphed step).
    """

    @property
    def label(self) -> str | None: ...

    @property
    def capturing(self) -> bool:
        """True while a CUDA capture owned by graphguard is recording."""
        ...

    @property
    def hazards(self) -> list[Diagnostic]:
        """Every hazard reported for the region, repeats included, in order."""
        ...

    def fall_back(self, diagnostic: Diagnostic) -> str:
        """Stop relying on the graph and continue eagerly; returns the logged action."""
        ...


class Scope(Protocol):
    """Where a finding was made: the policy, the phase and who to tell."""

    on_hazard: str
    label: str | None
    region: Region | None
    emulate: bool
    findings: list[Diagnostic]

    @property
    def phase(self) -> str: ...


@dataclass
class FixedScope:
    """A scope outside any guard: a replay, a stale output read, another thread's call."""

    on_hazard: str
    label: str | None
    phase: str
    region: Region | None = None
    emulate: bool = False
    findings: list[Diagnostic] = field(default_factory=list)


_sinks: list[Callable[[Diagnostic], None]] = []
_sinks_lock = threading.Lock()


def add_sink(sink: Callable[[Diagnostic], None]) -> Callable[[], None]:
    """Call ``sink(diagnostic)`` for every reported (not allowed) hazard; returns a remover.

    Used by ``graphguard check`` and the pytest plugin to collect hazards process-wide.
    """
    with _sinks_lock:
        _sinks.append(sink)

    def remove() -> None:
        with _sinks_lock:
            if sink in _sinks:
                _sinks.remove(sink)

    return remove


def channel_sink(diagnostic: Diagnostic) -> None:
    """In a child process of a checked program: append the hazard to the check's channel file.

    One ``write`` of one line to a file opened with ``O_APPEND``, so lines from concurrent
    processes never interleave; a process that ends abruptly (``os._exit``) loses nothing.
    """
    import os

    from ._state import CHECK_CHANNEL_ENV, CHECK_PID_ENV

    path = os.environ.get(CHECK_CHANNEL_ENV)
    if not path or os.environ.get(CHECK_PID_ENV) == str(os.getpid()):
        return  # the checking process collects its own hazards in memory
    append_record(path, {"diagnostic": diagnostic.to_dict()})


def append_record(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line to the channel file with one ``O_APPEND`` write."""
    import json
    import os

    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def _where(phase: str, emulate: bool) -> str:
    if phase == "capture":
        return "during CUDA-graph capture"
    if phase == "replay":
        return "at replay"
    if emulate:
        return (
            "in the guarded region (audit on a machine without CUDA: CPU tensors stand for "
            "device tensors)"
        )
    return "in the guarded region (audit mode)"


def _render(finding: Finding, scope: Scope) -> str:
    facts: dict[str, object] = {
        "api": finding.api,
        "tensor": describe_tensor(finding.tensor),
        "where": _where(scope.phase, scope.emulate),
        "label": scope.label,
    }
    facts.update(finding.facts)
    return RULES[finding.code].message(finding.variant, **facts)


def _log(diagnostic: Diagnostic, action: str, level: str, **extra: Any) -> None:
    """Emit ``graphguard.hazard``; a broken logger never replaces the hazard or the user's call."""
    emit(level, "graphguard.hazard", **{**diagnostic.to_dict(), "action": action, **extra})


def emit(level: str, event: str, **fields: Any) -> None:
    """One graphguard event, control characters escaped; a failing processor or stream never
    turns into the user's error."""
    with contextlib.suppress(Exception):
        getattr(get_logger(), level)(event, **{k: _escaped(v) for k, v in fields.items()})


def _escaped(value: Any) -> Any:
    """Log fields with control characters escaped: a console renderer writes them raw."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {escape_controls(k): _escaped(v) for k, v in value.items()}
    return value


def _notify(diagnostic: Diagnostic) -> None:
    for sink in list(_sinks):
        try:
            sink(diagnostic)
        except Exception:  # a broken sink must not break the user's call
            with contextlib.suppress(Exception):
                get_logger().exception("graphguard.sink_failed", sink=repr(sink))


def report(finding: Finding, scope: Scope, *, can_continue: bool = True) -> Diagnostic | None:
    """Report ``finding`` under ``scope``'s policy, before the hazardous call runs.

    Returns ``None`` when the finding is allowed, the diagnostic when the call should go ahead
    (logged, collected, or the region fell back), and raises the kind's ``HazardError``
    otherwise.
    """
    rule = RULES[finding.code]
    if is_allowed(rule.code, rule.kind):
        return None
    phase = scope.phase
    diagnostic = make_diagnostic(
        rule,
        finding.api,
        _render(finding, scope),
        phase=phase,
        label=scope.label,
        tensor=finding.tensor,
        details=finding.details,
        location=finding.location,
    )
    scope.findings.append(diagnostic)
    if _sinks:
        _notify(diagnostic)

    if overrides.collect:
        _log(diagnostic, "collected", "warning")
        return diagnostic
    region = scope.region
    if scope.on_hazard == "raise" or not can_continue:
        _log(diagnostic, "raised", "error")
        raise error_class_for(rule.kind)(diagnostic)
    if phase == "capture" and region is None:
        _log(diagnostic, "raised", "error", reason="foreign-capture")
        raise error_class_for(rule.kind)(diagnostic)
    if region is not None and phase in ("capture", "replay"):
        _log(diagnostic, region.fall_back(diagnostic), "warning")
        return diagnostic
    _log(diagnostic, "logged", "warning")
    return diagnostic


def _register_channel_sink() -> None:
    from ._state import _checked_child

    if _checked_child():
        add_sink(channel_sink)


_register_channel_sink()
