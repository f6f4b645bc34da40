"""Entering and leaving a guarded stretch of code, shared by ``capture``, ``guard`` and ``graphed``.

A guarded stretch (1) holds the process-wide patches (reference-counted), (2) pushes its
``GuardState`` on this context's stack, and (3) makes sure this thread's ``HazardMode`` is on the
torch-function mode stack. Nested guards in one thread share the one mode: entering a second mode
would inspect every call twice. Leaving undoes all three in reverse order, whatever happened in
between (an exception, ``KeyboardInterrupt``).

Entering and leaving are each atomic with respect to Ctrl-C (:func:`atomic`, see below), a
region must be left in the thread that entered it, and a forked child starts unguarded.
"""

from __future__ import annotations

import _signal as _signal_c
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType
from typing import Any, TypeVar

import torch
import torch.overrides
import torch.utils._python_dispatch

from . import _dist, _patches
from ._errors import GraphGuardError
from ._intercept import HazardMode
from ._log import check_env as check_log_env
from ._state import PENDING, GuardState, current_state, pop_state, push_state, reset_stack

__all__ = [
    "PENDING",
    "Guarded",
    "atomic",
    "deliver",
    "deliver_at_call",
    "deliver_due_interrupt",
    "guarded",
    "hold_interrupts",
    "new_state",
    "release_interrupts",
    "take_interrupt",
]

_local = threading.local()
#: ``TorchFunctionMode.__enter__`` without its Python frame (torch >= 2.1 has the C function).
_push_mode = getattr(torch._C, "_push_on_torch_function_stack", None) or (
    lambda mode: mode.__enter__()
)


def _pop_our_mode(mode: Any) -> None:
    """Take the region's torch-function mode off the thread's mode stack.

    torch dispatches each call to the mode by popping it and pushing it back
    (``torch.overrides._pop_mode_temporarily``); a Ctrl-C landing between the two leaves the
    stack without the mode, and nothing is left to pop then.
    """
    stack = torch.overrides._get_current_function_mode_stack()
    if any(m is mode for m in stack):
        mode.__exit__(None, None, None)


# --- Ctrl-C ---------------------------------------------------------------------------------------
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
    from ._emulation import call_site_names_host
    from ._report import report

    atomic(report)
    atomic(call_site_names_host)


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


class Guarded:
    """One guarded stretch; a context manager used by every region type."""

    __slots__ = (
        "_acquired",
        "_counted",
        "_held",
        "_paused_gc",
        "_pushed",
        "_thread",
        "_token",
        "may_capture",
        "state",
    )

    def __init__(self, state: GuardState) -> None:
        self.state = state
        self.may_capture = state.region is not None or state.foreign_capture
        self._token: Any = None
        self._thread: int | None = None
        self._paused_gc = False
        self._held = False
        self._acquired = False
        self._pushed = False
        self._counted = False

    @atomic
    def __enter__(self) -> GuardState:
        check_log_env()  # a bad GRAPHGUARD_LOG fails here, every time, not at the first hazard
        self._held = hold_interrupts()
        try:
            # Under a capture graphguard does not own, pause cyclic GC as ``Capture`` does for
            # its own: a collection here could run destructors (CUDA events, pinned buffers)
            # that make calls illegal during capture.
            self._paused_gc = self.state.foreign_capture and gc.isenabled()
            if self._paused_gc:
                gc.disable()
            _patches.acquire()
            self._acquired = True
            self._token = push_state(self.state)
            self._pushed = True
            _dist.region_enter(self.state)  # torch.distributed jobs only (docs/distributed.md)
            depth = getattr(_local, "depth", 0)
            if depth == 0:
                mode = getattr(_local, "spare", None) or HazardMode()
                mode.capture_states = 0
                _push_mode(mode)
                _local.mode = mode
            _local.depth = depth + 1
            self._counted = True
            if self.may_capture:
                _local.mode.capture_states += 1
            self._thread = threading.get_ident()
        except BaseException:
            self._leave()
            raise
        if PENDING:
            signum = take_interrupt(sys._getframe(1))
            if signum is not None:  # Ctrl-C while entering: as if it came before the region
                self._leave()
                deliver(signum)
        return self.state

    @atomic
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.check_thread()
        try:
            _dist.region_exit(self.state, exc, PENDING)  # ranks agree (docs/distributed.md)
        finally:
            self._leave()
            if PENDING:
                deliver_due_interrupt()

    def check_thread(self) -> None:
        """Refuse to leave the region from a thread other than the one that entered it."""
        if self._thread is not None and self._thread != threading.get_ident():
            raise GraphGuardError(
                "a graphguard region must be left in the thread that entered it "
                f"(entered in thread {self._thread}, left in {threading.get_ident()}); "
                "nothing was changed: the region is still active in the entering thread, "
                "which must leave it"
            )

    def _leave(self) -> None:
        """Undo whatever ``__enter__`` did, in reverse order; safe to call once per entry."""
        try:
            if self._counted:
                self._counted = False
                if self.may_capture:
                    _local.mode.capture_states -= 1
                _local.depth -= 1
                if _local.depth == 0:
                    mode = _local.mode
                    _local.mode = None
                    _pop_our_mode(mode)
                    _local.spare = mode  # the thread's next outermost region reuses it
        finally:
            try:
                if self._pushed:
                    self._pushed = False
                    pop_state(self._token, self.state)
            finally:
                try:
                    if self._acquired:
                        self._acquired = False
                        _patches.release()
                finally:
                    if self._paused_gc:
                        self._paused_gc = False
                        gc.enable()
                    self._thread = None
                    held, self._held = self._held, False
                    release_interrupts(held)


def guarded(state: GuardState) -> Guarded:
    return Guarded(state)


def new_state(
    *,
    on_hazard: str,
    label: str | None,
    region: Any = None,
) -> GuardState:
    """A guard state for a region starting now, inheriting what an enclosing guard knows."""
    enclosing = current_state()
    cuda = torch.cuda.is_available()
    own_region = region is not None
    if region is None and enclosing is not None:
        region = enclosing.region
    foreign = False
    if region is None and cuda and enclosing is None:
        foreign = torch.cuda.is_current_stream_capturing()
    elif enclosing is not None:
        foreign = enclosing.foreign_capture
    state = GuardState(
        on_hazard=on_hazard,
        label=label,
        region=region,
        foreign_capture=foreign,
        emulate=not cuda,
    )
    if enclosing is not None:
        state.host_ids = enclosing.host_ids
        state.stands_for_capture = enclosing.stands_for_capture
    if own_region:
        state.findings = region.hazards
    elif enclosing is not None:
        state.findings = enclosing.findings
    return state


def _after_fork_in_child() -> None:
    """The child of a fork is not the guarded step: drop every guard, patch and mode."""
    mode = getattr(_local, "mode", None)
    _local.depth = 0
    _local.mode = None
    _local.spare = None
    if mode is not None:
        with contextlib.suppress(Exception):
            mode.__exit__(None, None, None)
    reset_stack()
    _patches.reset_after_fork()
    global _holders, _main_ident
    _main_ident = threading.get_ident()
    PENDING.clear()
    if _holders:
        _holders = 0
        with contextlib.suppress(Exception):
            if signal.getsignal(signal.SIGINT) is _on_sigint:
                signal.signal(signal.SIGINT, _previous_handler)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
