"""Ctrl-C inside a guarded region: held back where it would tear graphguard's or torch's state."""

from __future__ import annotations

import _signal as _signal_c
import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, TypeVar

import torch
import torch.overrides
import torch.utils._python_dispatch

from ._state import PENDING

__all__ = [
    "PENDING",
    "atomic",
    "deliver",
    "deliver_at_call",
    "deliver_due_interrupt",
    "hold_interrupts",
    "release_interrupts",
    "reset_after_fork",
    "take_interrupt",
]

# A ``KeyboardInterrupt`` can be raised at any bytecode of the main thread, including the first
# instruction of an ``__exit__`` (before any ``try`` in it exists) or the instruction after a hook
# was registered and before its handle was stored. Swapping the SIGINT handler inside ``__enter__``
# and ``__exit__`` cannot cover those points, so while a region is active in the main thread
# graphguard's own handler is installed: it looks at the interrupted frames and, when one of them
# is a function marked :func:`atomic` (entering or leaving a region, registering a hook), it
# records the interrupt instead of raising it. The outermost atomic function delivers it when the
# state is consistent again: ``__exit__`` after everything is undone, ``__enter__`` after undoing
# the entry (as if the interrupt had arrived before the region). Elsewhere (the region's body) the
# interrupt goes to the handler that was installed before, unchanged.
_ATOMIC_CODES: set[CodeType] = set()
_main_ident = threading.main_thread().ident
_holders = 0
_previous_handler: Any = None
# The C functions behind ``signal.getsignal``/``signal.signal``, without their enum conversions
# (which cost more than the system call): entering and leaving a region swaps the handler.
_getsignal = getattr(_signal_c, "getsignal", signal.getsignal)
_setsignal = getattr(_signal_c, "signal", signal.signal)

F = TypeVar("F", bound=Callable[..., Any])


def atomic(fn: F) -> F:
    """Mark ``fn``: a Ctrl-C arriving while it (or anything it calls) runs is held back."""
    _ATOMIC_CODES.add(fn.__code__)
    return fn


def _hold_during_reports() -> None:
    # Reporting a hazard reads source lines (``linecache`` opens the file), formats and logs: an
    # interrupt landing there would leave a file for the garbage collector or a torn log line.
    # It is held until the region ends, like one landing while the region is entered or left.
    # The weakref callback that forgets a dead host tensor runs wherever the collector runs it;
    # CPython drops an exception raised in a weakref callback, so an interrupt landing there
    # would be lost: it is held too.
    from ._emulation import _forget, call_site_names_host
    from ._report import report

    atomic(report)
    atomic(call_site_names_host)
    atomic(_forget)


_hold_during_reports()


# torch dispatches a call to a torch-function mode in Python through
# ``with _pop_mode_temporarily():`` (``torch.overrides``, ``torch.utils._python_dispatch``): the
# generator pops the mode and its ``finally`` pushes it back. A Ctrl-C landing in the generator
# between the pop and its ``try``, or in the context manager's ``__enter__``/``__exit__`` before the
# generator is resumed, leaves the generator suspended: its ``finally`` then runs whenever the
# garbage collector closes it, and pushes the mode back at an arbitrary later point, after the
# region has ended. Those frames are atomic too, so the mode stack is never torn.
_MODE_SWAP_CODES: set[CodeType] = {
    getattr(fn, "__wrapped__", fn).__code__
    for fn in (
        getattr(torch.overrides, "_pop_mode_temporarily", None),
        getattr(torch.utils._python_dispatch, "_pop_mode_temporarily", None),
    )
    if fn is not None
}
_ATOMIC_CODES |= _MODE_SWAP_CODES
_CONTEXT_MANAGER_CODES = {
    contextlib._GeneratorContextManager.__enter__.__code__,
    contextlib._GeneratorContextManager.__exit__.__code__,
}


def _swaps_mode(frame: FrameType) -> bool:
    """Is ``frame`` a ``@contextmanager``'s enter/exit around a mode-swapping generator?"""
    manager = frame.f_locals.get("self")
    return getattr(getattr(manager, "gen", None), "gi_code", None) in _MODE_SWAP_CODES


def _in_atomic(frame: FrameType | None) -> bool:
    while frame is not None:
        code = frame.f_code
        if code in _ATOMIC_CODES or (code in _CONTEXT_MANAGER_CODES and _swaps_mode(frame)):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _in_atomic(frame):
        PENDING.append(signum)
        return
    _call_previous(signum, frame)


def _call_previous(signum: int, frame: FrameType | None) -> None:
    handler = _previous_handler if _holders else signal.getsignal(signal.SIGINT)
    if handler is _on_sigint or handler is None or handler == signal.SIG_DFL:
        raise KeyboardInterrupt
    if callable(handler):
        handler(signum, frame)


def hold_interrupts() -> bool:
    """Install the frame-aware SIGINT handler for one more region (main thread; else no-op)."""
    global _holders, _previous_handler
    if threading.get_ident() != _main_ident:
        return False
    if _holders == 0:
        try:
            current = _getsignal(signal.SIGINT)
            if current is not _on_sigint:
                _previous_handler = current
            if callable(current):
                _setsignal(signal.SIGINT, _on_sigint)
        except (ValueError, TypeError):  # pragma: no cover - no signal support here
            return False
    _holders += 1
    return True


def release_interrupts(held: bool) -> None:
    """Undo one :func:`hold_interrupts`; the last one puts the previous handler back."""
    global _holders
    if not held:
        return
    _holders -= 1
    if _holders == 0 and _getsignal(signal.SIGINT) is _on_sigint:
        _setsignal(signal.SIGINT, _previous_handler)


def take_interrupt(frame: FrameType | None) -> int | None:
    """The held-back interrupt, if it is due now: in the main thread, with no atomic caller."""
    if not PENDING or threading.get_ident() != _main_ident or _in_atomic(frame):
        return None
    signum = PENDING[0]
    PENDING.clear()
    return signum


def deliver(signum: int) -> None:
    """Raise a held-back interrupt the way the application's handler would have."""
    _call_previous(signum, sys._getframe(1))


def deliver_at_call() -> None:
    """From a dispatched torch call: deliver a held-back interrupt if no atomic caller waits."""
    signum = take_interrupt(sys._getframe(1))
    if signum is not None:
        _call_previous(signum, sys._getframe(1))


def deliver_due_interrupt() -> None:
    """From the end of an ``__exit__``: deliver a held-back interrupt if no atomic caller waits."""
    signum = take_interrupt(sys._getframe(2))
    if signum is not None:
        _call_previous(signum, sys._getframe(2))


def reset_after_fork() -> None:
    """In a forked child: no region is active, so nothing is held and the handler goes back."""
    global _holders, _main_ident
    _main_ident = threading.get_ident()
    PENDING.clear()
    if _holders:
        _holders = 0
        with contextlib.suppress(Exception):
            if signal.getsignal(signal.SIGINT) is _on_sigint:
                signal.signal(signal.SIGINT, _previous_handler)
