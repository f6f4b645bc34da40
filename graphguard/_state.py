"""Who is guarded right now: the per-context guard stack, the allow-list and global captures.

Everything here is per thread (``ContextVar``), except the registry of captures running in
torch's default "global" error mode, which other threads must see: in that mode any thread's
unsafe CUDA call breaks the capture.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._errors import ConfigError
from ._rules import KINDS, RULES

#: Ctrl-Cs held back while an atomic function ran (main thread only; see ``_session``). Read as a
#: plain global, with no call, so testing it is not itself a point where an interrupt can land.
PENDING: list[int] = []

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._diagnostic import Diagnostic
    from ._report import Region

__all__ = [
    "ON_HAZARD",
    "GuardState",
    "Overrides",
    "active_global_captures",
    "allow",
    "current_state",
    "is_allowed",
    "overrides",
    "pop_state",
    "push_state",
    "reset_stack",
]

ON_HAZARD = ("raise", "warn", "fallback")


@dataclass
class Overrides:
    """Process-wide settings used by ``graphguard check``: audit everything, collect hazards."""

    force_audit: bool = False
    collect: bool = False


overrides = Overrides()

#: Set by ``graphguard check`` for the program it runs: a file every process of the program
#: appends its hazards to (JSON lines), and the pid of the checking process.
CHECK_CHANNEL_ENV = "GRAPHGUARD_CHECK_CHANNEL"
CHECK_PID_ENV = "GRAPHGUARD_CHECK_PID"


def _checked_child() -> bool:
    """Whether this process is a child (spawned, exec'd) of a program ``graphguard check`` runs."""
    import os

    pid = os.environ.get(CHECK_PID_ENV, "")
    return bool(os.environ.get(CHECK_CHANNEL_ENV)) and pid != str(os.getpid())


if _checked_child():
    overrides.force_audit = overrides.collect = True


@dataclass
class GuardState:
    """One active guard: its policy, where it runs and what it found."""

    on_hazard: str
    label: str | None
    #: The graphguard capture this guard runs in, if any.
    region: Region | None = None
    #: True when a capture not owned by graphguard (plain ``torch.cuda.graph``) is recording.
    foreign_capture: bool = False
    #: Audit on a machine without CUDA: CPU tensors stand for device tensors.
    emulate: bool = False
    #: In audit phase, the region stands for a capture: "am I being captured?" answers True.
    #: False for runs that are genuinely eager on the GPU (a graphed step's warm-up).
    stands_for_capture: bool = True
    #: Hazards found in this guard and the guards nested in it (one list, shared inward).
    findings: list[Diagnostic] = field(default_factory=list)
    #: Tensors known to be genuine host tensors while emulating (id -> weakref).
    host_ids: dict[int, Any] = field(default_factory=dict)
    thread_name: str = field(default_factory=lambda: threading.current_thread().name)

    @property
    def phase(self) -> str:
        """ "capture" (a capture is recording), "eager" (it fell back) or "audit" (none)."""
        if self.region is not None:
            return "capture" if self.region.capturing else "eager"
        return "capture" if self.foreign_capture else "audit"


_cuda: list[bool] = []


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, asked once per process (at the first region, not at
    import): regions ask it at every entry, and the answer does not change in a process."""
    if not _cuda:
        _cuda.append(torch.cuda.is_available())
    return _cuda[0]


_STACK: ContextVar[tuple[GuardState, ...]] = ContextVar("graphguard_guards", default=())
_ALLOWED: ContextVar[frozenset[str]] = ContextVar("graphguard_allowed", default=frozenset())


def current_state() -> GuardState | None:
    """The innermost active guard in this thread/context, or ``None``."""
    stack = _STACK.get()
    return stack[-1] if stack else None


def push_state(state: GuardState) -> Any:
    return _STACK.set((*_STACK.get(), state))


def pop_state(token: Any, state: GuardState) -> None:
    """Remove ``state`` from this context's stack, whatever was pushed or popped since.

    Regions may end out of order (one opened in a generator and closed after its enclosing
    region): removing by identity never brings back a region that already ended.
    """
    _STACK.set(tuple(s for s in _STACK.get() if s is not state))


def reset_stack() -> None:
    """Forget every guard of this context (used in a forked child)."""
    _STACK.set(())


@contextmanager
def allow(*codes_or_kinds: str) -> Iterator[None]:
    """Allow known hazards inside the block: rule codes (``"GG402"``) or kinds (``"host-sync"``).

    Allowed hazards are neither raised nor logged. Use it at the one call site that is known to
    be safe, never around a whole step.
    """
    if not codes_or_kinds:
        raise ConfigError("allow() needs at least one rule code or hazard kind")
    normalized = set()
    for item in codes_or_kinds:
        if not isinstance(item, str):
            raise ConfigError(f"allow() takes rule codes or kinds as strings, got {item!r}")
        key = item.upper() if item.upper() in RULES else item
        if key not in RULES and key not in KINDS:
            raise ConfigError(
                f"allow({item!r}): unknown rule code or kind; codes: {', '.join(RULES)}; "
                f"kinds: {', '.join(KINDS)}"
            )
        normalized.add(key)
    token = _ALLOWED.set(_ALLOWED.get() | normalized)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def is_allowed(code: str, kind: str) -> bool:
    allowed = _ALLOWED.get()
    return bool(allowed) and (code in allowed or kind in allowed)


# --- captures in "global" error mode, visible to every thread ---------------------------------
_global_lock = threading.Lock()
_global_captures: dict[int, tuple[str, str | None, Any]] = {}


def register_global_capture(key: int, label: str | None, region: Any) -> bool:
    """Note a capture in "global" error mode; whether ``key`` was new."""
    with _global_lock:
        new = key not in _global_captures
        _global_captures[key] = (threading.current_thread().name, label, region)
        return new


def unregister_global_capture(key: int) -> bool:
    """Forget the capture noted under ``key``; whether it was noted."""
    with _global_lock:
        return _global_captures.pop(key, None) is not None


def active_global_captures() -> list[tuple[str, str | None, Any]]:
    """(thread name, label, region) of every capture in "global" mode now recording."""
    if not _global_captures:  # lock-free fast path: the common case is none
        return []
    with _global_lock:
        return list(_global_captures.values())
