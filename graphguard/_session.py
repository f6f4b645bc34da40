"""Entering and leaving a guarded stretch of code, shared by ``capture``, ``guard`` and ``graphed``.

A guarded stretch (1) holds the process-wide patches (reference-counted), (2) pushes its
``GuardState`` on this context's stack, and (3) makes sure this thread's ``HazardMode`` is on the
torch-function mode stack. Nested guards in one thread share the one mode: entering a second mode
would inspect every call twice. Leaving undoes all three in reverse order, whatever happened in
between (an exception, ``KeyboardInterrupt``).

Entering and leaving are each atomic with respect to Ctrl-C (:func:`deferred_interrupts`), a
region must be left in the thread that entered it, and a forked child starts unguarded.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch

from . import _patches
from ._errors import GraphGuardError
from ._intercept import HazardMode
from ._log import check_env as check_log_env
from ._state import GuardState, current_state, pop_state, push_state, reset_stack

__all__ = ["Guarded", "deferred_interrupts", "guarded", "new_state"]

_local = threading.local()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back SIGINT while graphguard changes process state (main thread; else a no-op).

    A ``KeyboardInterrupt`` between two steps of entering or leaving a region would leave torch
    half patched or a hook registered. The handler is swapped for one that remembers the
    signal; the interrupt is delivered once the state is consistent again.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    try:
        previous = signal.signal(
            signal.SIGINT, lambda signum, frame: pending.append((signum, frame))
        )
    except (ValueError, TypeError):  # pragma: no cover - no signal support here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(*pending[0])


class Guarded:
    """One guarded stretch; a context manager used by every region type."""

    __slots__ = ("_paused_gc", "_thread", "_token", "may_capture", "state")

    def __init__(self, state: GuardState) -> None:
        self.state = state
        self.may_capture = state.region is not None or state.foreign_capture
        self._token: Any = None
        self._thread: int | None = None
        self._paused_gc = False

    def __enter__(self) -> GuardState:
        check_log_env()  # a bad GRAPHGUARD_LOG fails here, every time, not at the first hazard
        with deferred_interrupts():
            # Under a capture graphguard does not own, pause cyclic GC as ``Capture`` does for
            # its own: a collection here could run destructors (CUDA events, pinned buffers)
            # that make calls illegal during capture.
            self._paused_gc = self.state.foreign_capture and gc.isenabled()
            if self._paused_gc:
                gc.disable()
            _patches.acquire()
            self._token = push_state(self.state)
            depth = getattr(_local, "depth", 0)
            if depth == 0:
                mode = HazardMode()
                mode.__enter__()
                _local.mode = mode
            _local.depth = depth + 1
            if self.may_capture:
                _local.mode.capture_states += 1
            self._thread = threading.get_ident()
        return self.state

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread != threading.get_ident():
            raise GraphGuardError(
                "a graphguard region must be left in the thread that entered it "
                f"(entered in thread {self._thread}, left in {threading.get_ident()}); "
                "the region stays active in the entering thread"
            )
        with deferred_interrupts():
            try:
                if self.may_capture:
                    _local.mode.capture_states -= 1
                _local.depth -= 1
                if _local.depth == 0:
                    mode = _local.mode
                    _local.mode = None
                    mode.__exit__(None, None, None)
            finally:
                try:
                    pop_state(self._token, self.state)
                finally:
                    _patches.release()
                    if self._paused_gc:
                        gc.enable()


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
    if mode is not None:
        with contextlib.suppress(Exception):
            mode.__exit__(None, None, None)
    reset_stack()
    _patches.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
