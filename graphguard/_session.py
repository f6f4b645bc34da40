"""Entering and leaving a guarded stretch of code, shared by ``capture``, ``guard`` and ``graphed``.

A guarded stretch (1) holds the process-wide patches (reference-counted), (2) pushes its
``GuardState`` on this context's stack, and (3) makes sure this thread's ``HazardMode`` is on the
torch-function mode stack. Nested guards in one thread share the one mode: entering a second mode
would inspect every call twice. Leaving undoes all three in reverse order, whatever happened in
between (an exception, ``KeyboardInterrupt``).

Entering and leaving are each atomic with respect to Ctrl-C (``_interrupts.atomic``), a
region must be left in the thread that entered it, and a forked child starts unguarded.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from types import TracebackType
from typing import Any

import torch

from . import _dist, _emulation, _interrupts, _patches
from ._diagnostic import safe_value
from ._errors import ConfigError, GraphGuardError
from ._intercept import CompileAwareMode, HazardMode, keep_out_of_compiled_frames
from ._interrupts import (
    PENDING,
    atomic,
    deliver,
    deliver_due_interrupt,
    hold_interrupts,
    release_interrupts,
    take_interrupt,
)
from ._log import check_env as check_log_env
from ._state import GuardState, cuda_available, current_state, pop_state, push_state, reset_stack

__all__ = ["Guarded", "guarded", "mark_host", "new_state"]

_local = threading.local()
#: ``TorchFunctionMode.__enter__`` without its Python frame (torch >= 2.1 has the C function).
_push_mode = getattr(torch._C, "_push_on_torch_function_stack", None) or (
    lambda mode: mode.__enter__()
)


_stack_len = torch._C._len_torch_function_stack
_stack_at = torch._C._get_function_stack_at
_pop_mode = torch._C._pop_torch_function_stack


def _pop_our_mode(mode: Any) -> None:
    """Take the region's torch-function mode off the thread's mode stack.

    torch dispatches each call to the mode by popping it and pushing it back
    (``torch.overrides._pop_mode_temporarily``); a Ctrl-C landing between the two leaves the
    stack without the mode, and nothing is left to pop then.
    """
    depth = _stack_len()
    if depth and _stack_at(depth - 1) is mode:  # the usual case: it is on top
        _pop_mode()
        return
    stack = torch.overrides._get_current_function_mode_stack()
    if any(m is mode for m in stack):
        mode.__exit__(None, None, None)


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
                # Where torch.compile may run the region's code, a mode that stays out of what
                # dynamo traces (CompileAwareMode); HazardMode otherwise.
                if "torch._dynamo" in sys.modules:
                    kind: type[HazardMode] = CompileAwareMode
                    keep_out_of_compiled_frames()
                else:
                    kind = HazardMode
                spare = getattr(_local, "spare", None)
                mode = spare if type(spare) is kind else kind()
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
    cuda = cuda_available()
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
    elif state.emulate:
        _emulation.add_declared_host(state)
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
    _interrupts.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def mark_host(*tensors: torch.Tensor) -> None:
    """Declare CPU tensors made before a region as host tensors in the GPU run too.

    Audit on a machine without CUDA takes every tensor made before the region for a device
    tensor (a CPU tensor stands for a CUDA one there), so reading a genuine host table made
    earlier, such as a scheduler's sigma table moved to the host, is reported on CPU only. After
    ``graphguard.mark_host(table)`` audit treats ``table``, and results computed from host
    tensors alone, as host tensors, in every region until ``table`` is freed. Where CUDA is
    available it changes nothing: real devices decide there. Raises ``ConfigError`` for
    anything but CPU tensors.
    """
    if not tensors:
        raise ConfigError("mark_host() needs at least one CPU tensor")
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"mark_host() takes CPU tensors, got {safe_value(t)}")
        if t.device.type != "cpu":
            raise ConfigError(
                f"mark_host() declares CPU tensors that stay on the host in the GPU run; got a "
                f"tensor on {t.device}"
            )
    state = current_state()
    for t in tensors:
        _emulation.declare_host(t)
        if state is not None and state.emulate:
            _emulation.mark_host(state, t)
