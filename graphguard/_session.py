"""Entering and leaving a guarded stretch of code, shared by ``capture``, ``guard`` and ``graphed``.

A guarded stretch (1) holds the process-wide patches (reference-counted), (2) pushes its
``GuardState`` on this context's stack, and (3) makes sure this thread's ``HazardMode`` is on the
torch-function mode stack. Nested guards in one thread share the one mode: entering a second mode
would inspect every call twice. Leaving undoes all three in reverse order, whatever happened in
between (an exception, ``KeyboardInterrupt``).
"""

from __future__ import annotations

import gc
import os
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import _patches
from ._intercept import HazardMode
from ._log import _check_env as check_log_env
from ._state import GuardState, current_state, pop_state, push_state

__all__ = ["Overrides", "guarded", "overrides", "trim_traceback"]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep

_local = threading.local()


@dataclass
class Overrides:
    """Process-wide settings used by ``graphguard check``: audit everything, collect hazards."""

    force_audit: bool = False
    collect: bool = False


overrides = Overrides()


@contextmanager
def guarded(state: GuardState) -> Iterator[GuardState]:
    check_log_env()  # a bad GRAPHGUARD_LOG fails here, not at the first hazard
    # Under a capture graphguard does not own, pause cyclic GC as ``Capture`` does for its own:
    # a collection here could run destructors (CUDA events, pinned buffers) that make calls
    # illegal during capture.
    paused_gc = state.foreign_capture and gc.isenabled()
    if paused_gc:
        gc.disable()
    _patches.acquire()
    try:
        token = push_state(state)
        try:
            depth = getattr(_local, "depth", 0)
            if depth == 0:
                mode = HazardMode()
                mode.__enter__()
                _local.mode = mode
            _local.depth = depth + 1
            may_capture = state.region is not None or state.foreign_capture
            if may_capture:
                _local.mode.capture_states += 1
            try:
                yield state
            finally:
                if may_capture:
                    _local.mode.capture_states -= 1
                _local.depth -= 1
                if _local.depth == 0:
                    mode = _local.mode
                    _local.mode = None
                    mode.__exit__(None, None, None)
        finally:
            pop_state(token)
    finally:
        _patches.release()
        if paused_gc:
            gc.enable()


def new_state(
    *,
    on_hazard: str,
    label: str | None,
    region: object | None = None,
) -> GuardState:
    """A guard state for a region starting now, inheriting what an enclosing guard knows."""
    enclosing = current_state()
    cuda = torch.cuda.is_available()
    if region is None and enclosing is not None:
        region = enclosing.region
    foreign = False
    if region is None and cuda and enclosing is None:
        foreign = torch.cuda.is_current_stream_capturing()
    elif enclosing is not None:
        foreign = enclosing.foreign_capture
    return GuardState(
        on_hazard=on_hazard,
        label=label,
        region=region,  # type: ignore[arg-type]
        foreign_capture=foreign,
        emulate=not cuda,
        collect=overrides.collect,
        host_ids=enclosing.host_ids if enclosing is not None else {},
    )


def trim_traceback(exc: BaseException) -> None:
    """Drop graphguard's and torch's frames from the tail of ``exc``'s traceback.

    The user's frames (outermost first) are kept; the interceptor frames between the user's call
    and the raise are removed, so the traceback ends at the user's line.
    """
    tb = exc.__traceback__
    kept: list[types.TracebackType] = []
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith((_PKG_DIR, _TORCH_DIR)):
            kept.append(tb)
        tb = tb.tb_next
    new_tb = None
    for entry in reversed(kept):
        new_tb = types.TracebackType(new_tb, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    if new_tb is not None:
        exc.__traceback__ = new_tb
