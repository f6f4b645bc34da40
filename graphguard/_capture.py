"""``graphguard.capture()``: a CUDA-graph capture region that refuses hazards before they happen.

Capture mode mirrors ``torch.cuda.graph`` (synchronise, empty the cache, switch to a side
stream, ``capture_begin``) but keeps the pieces in hand, so that when a hazard is found the
capture can be *ended* cleanly instead of being invalidated by the illegal call: that is what
keeps the process usable afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import torch

from . import _patches
from ._diagnostic import Diagnostic, escape_controls, more_scalars, safe_value
from ._errors import ConfigError, GraphGuardError, HazardError, NotCapturedError
from ._frames import trim_traceback
from ._interrupts import (
    PENDING,
    atomic,
    deliver,
    deliver_due_interrupt,
    hold_interrupts,
    release_interrupts,
    take_interrupt,
)
from ._log import region_event
from ._report import Finding, FixedScope, report
from ._scalars import Tracked, watch_optimizers
from ._session import guarded, new_state
from ._state import ON_HAZARD, cuda_available, overrides
from ._tree import flatten
from ._verify import (
    Verify,
    collect_state,
    resolve_verify,
    step_location,
    step_roots,
    verify_finding,
    verify_replay,
)

__all__ = ["MODES", "Capture", "capture", "validate_on_hazard"]

MODES = ("auto", "capture", "audit")
CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")

_capture_streams: dict[int, Any] = {}
_capture_streams_lock = threading.Lock()


def _default_capture_stream() -> Any:
    """One side stream per device for captures (torch.cuda.graph keeps one too)."""
    device = torch.cuda.current_device()
    with _capture_streams_lock:
        stream = _capture_streams.get(device)
        if stream is None:
            stream = _capture_streams[device] = torch.cuda.Stream()
        return stream


#: Capture failures torch reports in words that name no cause a user can act on, with the
#: cause; the note is added to torch's own exception (PEP 678), which is left as it is.
_TORCH_CAPTURE_ERRORS = (
    (
        "CUBLAS_STATUS_NOT_INITIALIZED",
        "cuBLAS makes its handle at a thread's first matrix product, which a CUDA graph "
        "capture cannot contain: run the step once before capturing (a warm-up on a side "
        "stream, as @graphguard.graphed does).",
    ),
    (
        "operation not permitted when stream is capturing",
        "a call inside the capture synchronised with the GPU or touched pinned host memory, "
        "and no graphguard rule names it. The capture was ended and the process stays usable; "
        "run the step under graphguard.capture(mode='audit') or eagerly to find the call.",
    ),
    (
        "Cannot copy between CPU and CUDA tensors during CUDA graph capture",
        "a copy between host and device happened inside a call no graphguard rule names. The "
        "capture was ended and the process stays usable; keep host data out of the step "
        "(static device buffers filled before replay()).",
    ),
)


def explain_torch_error(exc: BaseException) -> None:
    """Add graphguard's reading to a torch error known to come from a capture (once)."""
    if not isinstance(exc, RuntimeError) or not hasattr(exc, "add_note"):
        return
    notes = getattr(exc, "__notes__", ())
    if any(note.startswith("graphguard: ") for note in notes):
        return
    text = str(exc)
    for needle, note in _TORCH_CAPTURE_ERRORS:
        if needle in text:
            exc.add_note("graphguard: " + note)
            return


def _reset_cuda_generators() -> None:
    """Take the CUDA generators out of capture mode after a capture torch could not end.

    ``CUDAGraph::capture_end`` raises before it runs the generators' capture epilogue when the
    capture was invalidated (a call graphguard does not intercept, such as the first cuBLAS
    use of a thread inside the capture). Each generator then stays in capture mode, and every
    later random op in the process raises "Offset increment outside graph capture encountered
    unexpectedly". A clone of a generator's state keeps its seed and offset and is not
    capturing; installing it makes the process usable again.
    """
    for gen in getattr(torch.cuda, "default_generators", ()):
        with contextlib.suppress(Exception):  # an older torch without graph-safe states
            gen.graphsafe_set_state(gen.clone_state())


def _capture_begin_kwargs(pool: Any, capture_error_mode: str) -> dict[str, Any]:
    """Keyword arguments for ``CUDAGraph.capture_begin``, feature-detected (they change often)."""
    try:
        params: Any = inspect.signature(torch.cuda.CUDAGraph.capture_begin).parameters
    except (TypeError, ValueError):  # a C signature: pass only what every release accepts
        params = {}
    kwargs: dict[str, Any] = {}
    if pool is not None:
        kwargs["pool"] = pool
    if "capture_error_mode" in params:
        kwargs["capture_error_mode"] = capture_error_mode
    elif capture_error_mode != "global":
        raise ConfigError(
            f"capture_error_mode={capture_error_mode!r} needs a torch whose "
            f"CUDAGraph.capture_begin accepts it (this one, {torch.__version__}, does not)"
        )
    return kwargs


def validate_on_hazard(on_hazard: object) -> str:
    if on_hazard not in ON_HAZARD:
        raise ConfigError.bad_choice("on_hazard", on_hazard, ON_HAZARD)
    assert isinstance(on_hazard, str)
    return on_hazard


def validate_label(label: object) -> str | None:
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"label={safe_value(label)} is not valid; allowed values: a str or None")
    if label is not None and escape_controls(label) != label:
        raise ConfigError(
            f"label={escape_controls(label)!r} is not valid: it contains control characters "
            "(escape sequences, newlines), which would reach terminals and log files raw; "
            "allowed values: a str of printable characters, or None"
        )
    return label


class Capture:
    """A capture region. Use it through :func:`capture`.

    Attributes after the ``with`` block:

    - ``mode``: "capture" or "audit" (what "auto" resolved to);
    - ``graph``: the ``torch.cuda.CUDAGraph``, or ``None`` (audit mode, fallback, failure);
    - ``hazards``: every diagnostic reported in the region (warn/fallback policies continue);
    - ``fell_back``: whether a hazard ended the capture and the region finished eagerly.
    """

    def __init__(
        self,
        *,
        mode: str = "auto",
        on_hazard: str = "raise",
        label: str | None = None,
        graph: Any = None,
        pool: Any = None,
        stream: Any = None,
        capture_error_mode: str = "global",
        verify: Any = 0,
    ) -> None:
        if mode not in MODES:
            raise ConfigError.bad_choice("mode", mode, MODES)
        self.on_hazard = validate_on_hazard(on_hazard)
        self.label = validate_label(label)
        if capture_error_mode not in CAPTURE_ERROR_MODES:
            raise ConfigError.bad_choice(
                "capture_error_mode", capture_error_mode, CAPTURE_ERROR_MODES
            )
        if graph is not None and not isinstance(graph, torch.cuda.CUDAGraph):
            raise ConfigError(
                f"graph={graph!r} is not valid; allowed values: a torch.cuda.CUDAGraph or None"
            )
        if stream is not None and not isinstance(stream, torch.cuda.Stream):
            raise ConfigError(
                f"stream={stream!r} is not valid; allowed values: a torch.cuda.Stream or None"
            )
        if pool is not None and not isinstance(pool, tuple):
            raise ConfigError(
                f"pool={pool!r} is not valid; allowed values: a handle from "
                f"torch.cuda.graph_pool_handle() or CUDAGraph.pool(), or None"
            )
        self.verify: Verify | None = resolve_verify(verify)
        self._verified = 0
        self.requested_mode = mode
        self.capture_error_mode = capture_error_mode
        self._graph_arg = graph
        self._pool = pool
        self._stream_arg = stream
        self.mode: str | None = None
        self.graph: Any = None
        self.hazards: list[Diagnostic] = []
        self.fell_back = False
        self.capturing = False
        self._entered = False
        self._stream_ctx: Any = None
        self._stream: Any = None
        self._ambient: Any = None
        self._retired_graph: Any = None
        self._gc_was_enabled = False
        self._optimizer_watch: Any = None
        self._scalars: list[Tracked] = []
        self._session: Any = None
        self._held = False
        self._lock = threading.Lock()

    # -- entering ---------------------------------------------------------------------------
    def _resolve_mode(self) -> str:
        if overrides.force_audit:
            return "audit"
        if self.requested_mode == "capture":
            if not torch.cuda.is_available():
                raise ConfigError(
                    "mode='capture' needs a CUDA device and torch.cuda.is_available() is False; "
                    "use mode='auto' (audits without CUDA) or mode='audit'"
                )
            return "capture"
        if self.requested_mode == "audit":
            return "audit"
        return "capture" if cuda_available() else "audit"

    @atomic
    def __enter__(self) -> Capture:
        if self._entered:
            raise GraphGuardError("a graphguard.capture() region can be entered only once")
        self._entered = True
        self.mode = self._resolve_mode()
        region_event(
            "graphguard.capture.start",
            mode=self.mode,
            requested_mode=self.requested_mode,
            label=self.label,
            on_hazard=self.on_hazard,
        )
        self._held = hold_interrupts()
        try:
            if self.mode == "capture":
                self._begin_capture()
            state = new_state(
                on_hazard=self.on_hazard,
                label=self.label,
                region=self if self.mode == "capture" else None,
            )
            if state.region is None:
                state.findings = self.hazards
            self._session = guarded(state)
            self._session.__enter__()
            self._state = state
        except BaseException:
            self._session = None
            try:
                self._end_capture(failed=True)
            finally:
                held, self._held = self._held, False
                release_interrupts(held)
            raise
        if PENDING:
            signum = take_interrupt(sys._getframe(1))
            if signum is not None:  # Ctrl-C while entering: as if it came before the region
                self._leave(failed=True)
                deliver(signum)
        return self

    def _begin_capture(self) -> None:
        graph = self._graph_arg if self._graph_arg is not None else torch.cuda.CUDAGraph()
        kwargs = _capture_begin_kwargs(self._pool, self.capture_error_mode)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        host_empty_cache = getattr(torch._C, "_host_emptyCache", None)
        if host_empty_cache is not None:
            host_empty_cache()
        # A cyclic garbage collection during capture runs destructors at random points, and
        # freeing pinned host memory or CUDA events queries events: in "global" mode that
        # invalidates the capture. Collection is paused for the region and resumed after it.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._ambient = torch.cuda.current_stream()
        self._stream = (
            self._stream_arg if self._stream_arg is not None else _default_capture_stream()
        )
        self._stream_ctx = torch.cuda.stream(self._stream)
        self._stream_ctx.__enter__()
        try:
            graph.capture_begin(**kwargs)
        except BaseException:
            self._stream_ctx.__exit__(None, None, None)
            self._stream_ctx = None
            self._resume_gc()
            raise
        self.graph = graph
        self.capturing = True
        if self.capture_error_mode == "global":
            _patches.begin_global_capture(id(self), self.label, self)
        # Optimizers whose step runs in the capture bake their hyperparameters; replay() checks
        # them (see _scalars).
        self._optimizer_watch = watch_optimizers()
        self._watch = self._optimizer_watch.__enter__()

    # -- leaving ----------------------------------------------------------------------------
    @atomic
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self._session is not None:
            self._session.check_thread()
        try:
            end_error = self._leave(failed=exc_type is not None, exc_info=(exc_type, exc, tb))
            if isinstance(exc, HazardError):
                trim_traceback(exc)
            elif exc is not None:
                explain_torch_error(exc)
            if exc is None and end_error is not None:
                explain_torch_error(end_error)
                raise end_error
            region_event(
                "graphguard.capture.end",
                mode=self.mode,
                label=self.label,
                captured=self.graph is not None,
                fell_back=self.fell_back,
                hazards=len(self.hazards),
            )
        finally:
            if PENDING:
                deliver_due_interrupt()
        return False

    def _leave(self, *, failed: bool, exc_info: Any = (None, None, None)) -> BaseException | None:
        """Leave the guard and end the capture; returns the error ``capture_end`` raised."""
        session, self._session = self._session, None
        try:
            if session is not None:
                session.__exit__(*exc_info)
        except BaseException:
            failed = True  # another rank failed (graphguard._dist): the graph is discarded
            raise
        finally:
            try:
                end_error = self._end_capture(failed=failed)
            finally:
                held, self._held = self._held, False
                release_interrupts(held)
        return end_error

    def _end_capture(self, *, failed: bool) -> BaseException | None:
        """End a recording capture, keep or discard its graph, restore the ambient stream."""
        if self._stream_ctx is None:
            return None
        end_error: BaseException | None = None
        if self._optimizer_watch is not None:
            self._optimizer_watch.__exit__(None, None, None)
            self._optimizer_watch = None
            self._scalars = list(self._watch.items)
        with self._lock:
            if self.capturing:
                self.capturing = False
                _patches.end_global_capture(id(self))
                try:
                    self.graph.capture_end()
                except BaseException as e:  # an illegal call graphguard does not intercept
                    end_error = e
                    _reset_cuda_generators()
                if failed or end_error is not None:
                    self._retire_graph()
        self._stream_ctx.__exit__(None, None, None)
        self._stream_ctx = None
        self._resume_gc()
        # Anything that ran eagerly on the capture stream (a fallback) must be visible to work
        # issued on the ambient stream after the region, as with any side stream.
        self._ambient.wait_stream(self._stream)
        return end_error

    def _resume_gc(self) -> None:
        if self._gc_was_enabled:
            gc.enable()
            self._gc_was_enabled = False

    def _retire_graph(self) -> None:
        # The graph is dropped from the public attribute but kept alive: tensors the region
        # allocated live in its private memory pool, and the user may still hold them.
        self._retired_graph = self.graph
        self.graph = None

    # -- called by the hazard policy ----------------------------------------------------------
    def fall_back(self, diagnostic: Diagnostic) -> str:
        """End the capture now, run what was recorded so far once, and continue eagerly."""
        with self._lock:
            if not self.capturing:
                return "logged"
            self.capturing = False
            _patches.end_global_capture(id(self))
            try:
                self.graph.capture_end()
            except BaseException:  # invalidated earlier by a call graphguard does not see
                _reset_cuda_generators()
                self._retire_graph()
                raise
            # The work before the hazard was recorded, not run; running the recorded prefix
            # once gives its tensors the values the eager continuation expects.
            self.graph.replay()
            self._retire_graph()
            self.fell_back = True
        return "fell-back"

    # -- after the region -----------------------------------------------------------------------
    def replay(self, *, eager: Callable[[], Any] | None = None, outputs: Any = None) -> None:
        """Replay the captured graph.

        Raises ``NotCapturedError`` when the region holds no graph: it ran in audit mode, fell
        back to eager, failed, or has not finished yet. It is never a silent no-op.

        With ``capture(verify=N)`` the first ``N`` replays are checked against ``eager``, a
        callable that runs the region's body again (``lambda: step(x)``): the state it reaches
        is compared after both runs, and its return value against ``outputs`` (the tensors the
        region produced) when given. Without ``eager`` those replays are a ``ConfigError``.
        """
        graph = self.graph
        if graph is None or self.capturing:
            raise NotCapturedError(self._why_no_graph())
        if self._scalars:
            self._check_scalars()
        if self.verify is None or self._verified >= self.verify.replays:
            if eager is not None or outputs is not None:
                raise ConfigError(
                    "replay(eager=..., outputs=...) is for verified replays: create the region "
                    "with capture(verify=N); its first N replays take them"
                )
            graph.replay()
            return
        if not callable(eager):
            raise ConfigError(
                f"capture(verify={self.verify.replays}): replay {self._verified + 1} is verified "
                "and needs the region's body as a callable, replay(eager=lambda: step(x), "
                "outputs=out), to run it eagerly from the same state"
            )
        self._verify_replay(graph, eager, outputs)

    def _verify_replay(self, graph: Any, eager: Callable[[], Any], outputs: Any) -> None:
        assert self.verify is not None
        self._verified += 1
        state = collect_state(step_roots(eager, None, (), {}), device_only=True)
        out_leaves = flatten(outputs, "output")[0] if outputs is not None else None

        def replayed() -> tuple[Any, list[Any]]:
            graph.replay()
            return None, out_leaves if out_leaves is not None else []

        outcome = verify_replay(
            state=state,
            replay=replayed,
            eager=eager,
            options=self.verify,
            allocated_in_capture=set(),
            baked=[t.name for t in self._scalars],
            compare_outputs=outputs is not None,
        )
        if outcome.mismatches:
            location = step_location(eager)
            report(
                verify_finding(
                    f"Capture.replay() of {self.label!r}",
                    self.label,
                    self._verified,
                    outcome,
                    location,
                ),
                FixedScope(on_hazard="raise", label=self.label, phase="replay", findings=[]),
                can_continue=False,
            )

    def _check_scalars(self) -> None:
        """Refuse to replay when a captured optimizer's hyperparameter has changed since."""
        stale = [(t, t.read()) for t in self._scalars]
        stale = [(t, now) for t, now in stale if now != t.captured]
        if not stale:
            return
        first, now = stale[0]
        finding = Finding(
            "GG601",
            "Capture.replay()",
            facts={
                "name": first.name,
                "captured": safe_value(first.captured),
                "current": safe_value(now),
                "more": more_scalars(len(stale)),
            },
            details=tuple(
                (t.name, f"captured {safe_value(t.captured)}, now {safe_value(v)}")
                for t, v in stale
            ),
            location=(first.filename, first.lineno, "<capture region>"),
        )
        # Every policy raises here: there is no body to run eagerly instead of the stale graph.
        scope = FixedScope(on_hazard="raise", label=self.label, phase="replay", findings=[])
        report(finding, scope, can_continue=False)

    def _why_no_graph(self) -> str:
        label = f" {self.label!r}" if self.label else ""
        if not self._entered:
            return f"capture region{label} has not run yet; replay() needs a finished capture"
        if self.capturing:
            return f"capture region{label} is still recording; replay() after the with block"
        if self.mode == "audit":
            return (
                f"capture region{label} ran in audit mode (no CUDA graph was recorded): run the "
                f"step again to repeat it; on a GPU machine mode='auto' captures a graph"
            )
        if self.fell_back:
            return (
                f"capture region{label} fell back to eager at {self.hazards[0].location} "
                f"({self.hazards[0].code}); there is no graph to replay: run the step again"
            )
        return f"capture region{label} failed; there is no graph to replay"

    def __repr__(self) -> str:
        return (
            f"<graphguard.Capture label={self.label!r} mode={self.mode!r} "
            f"captured={self.graph is not None} hazards={len(self.hazards)}>"
        )


def capture(
    *,
    mode: str = "auto",
    on_hazard: str = "raise",
    label: str | None = None,
    graph: Any = None,
    pool: Any = None,
    stream: Any = None,
    capture_error_mode: str = "global",
    verify: Any = 0,
) -> Capture:
    """A guarded CUDA-graph capture region (``with graphguard.capture() as cap:``).

    ``mode="auto"`` captures where CUDA is available and audits elsewhere; ``"capture"`` requires
    CUDA; ``"audit"`` runs the body eagerly on any device and reports what would break or corrupt
    a capture. ``graph``, ``pool``, ``stream`` and ``capture_error_mode`` are torch's own capture
    options. ``on_hazard`` is "raise" (default), "warn" or "fallback"; see ``docs/contract.md``.
    ``verify=N`` checks the first ``N`` replays against the body run eagerly (pass it to
    ``cap.replay(eager=...)``; ``docs/verify.md``).
    """
    return Capture(
        mode=mode,
        on_hazard=on_hazard,
        label=label,
        graph=graph,
        pool=pool,
        stream=stream,
        capture_error_mode=capture_error_mode,
        verify=verify,
    )
