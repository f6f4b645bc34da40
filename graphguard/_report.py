"""What happens once a hazard is found: allow-list, diagnostic, log event, then the policy.

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
would invalidate it and poison the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._diagnostic import Diagnostic, make_diagnostic
from ._errors import error_class_for
from ._log import get_logger
from ._rules import RULES
from ._state import GuardState, is_allowed

__all__ = ["add_sink", "log_hazard", "report"]

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


def _notify(diagnostic: Diagnostic) -> None:
    for sink in list(_sinks):
        try:
            sink(diagnostic)
        except Exception:  # a broken sink must not break the user's call
            get_logger().exception("graphguard.sink_failed", sink=repr(sink))


def log_hazard(
    diagnostic: Diagnostic, *, action: str, level: str = "warning", **extra: Any
) -> None:
    """Emit the ``graphguard.hazard`` event: the diagnostic's fields, never tensor values."""
    fields = diagnostic.to_dict()
    fields.update(extra)
    getattr(get_logger(), level)("graphguard.hazard", action=action, **fields)


def report(
    state: GuardState,
    code: str,
    api: str,
    message: str,
    *,
    tensor: Any = None,
    details: tuple[tuple[str, str], ...] = (),
) -> bool:
    """Report a hazard under ``state``'s policy.

    Returns ``True`` when the call should go ahead (allowed, logged, or fell back), and raises the
    kind's ``HazardError`` otherwise. Always called before the hazardous call runs.
    """
    rule = RULES[code]
    if is_allowed(rule.code, rule.kind):
        return True
    phase = state.effective_phase
    diagnostic = make_diagnostic(
        rule, api, message, phase=phase, label=state.label, tensor=tensor, details=details
    )
    state.findings.append(diagnostic)
    if _sinks:
        _notify(diagnostic)

    if state.collect:
        log_hazard(diagnostic, action="collected")
        return True
    if state.on_hazard == "raise":
        log_hazard(diagnostic, action="raised", level="error")
        raise error_class_for(rule.kind)(diagnostic)
    if phase == "capture":
        if state.region is None:
            log_hazard(diagnostic, action="raised", level="error", reason="foreign-capture")
            raise error_class_for(rule.kind)(diagnostic)
        log_hazard(diagnostic, action="fell-back")
        state.region.fall_back(diagnostic)
        return True
    log_hazard(diagnostic, action="logged")
    return True
