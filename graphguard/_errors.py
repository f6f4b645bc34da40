"""graphguard's exceptions, one documented tree.

::

    GraphGuardError                      root of everything graphguard raises
    ├── ConfigError (ValueError)          a bad argument or setting, named with its allowed values
    ├── NotCapturedError (RuntimeError)  replay() of a region that holds no graph
    ├── GraphLimitError (RuntimeError)   a graphed step needs more graphs than max_graphs allows
    └── HazardError (RuntimeError)       a capture hazard; .kind, .code, .diagnostic
        ├── HostSyncError                 kind "host-sync"
        ├── PinnedAllocError              kind "pinned-alloc"
        ├── StreamEscapeError             kind "stream-escape"
        ├── PageableCopyError             kind "pageable-copy"
        ├── HostBufferReadError           kind "host-buffer-read"
        ├── RngStateError                 kind "rng-state"
        ├── StaleHostScalarError          kind "stale-host-scalar"
        └── StaleOutputError              kind "stale-output"

Every ``HazardError`` pickles (its only state is the frozen diagnostic), so it crosses process
boundaries (pytest-xdist, multiprocessing) intact.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._diagnostic import Diagnostic

__all__ = [
    "ConfigError",
    "GraphGuardError",
    "GraphLimitError",
    "HazardError",
    "HostBufferReadError",
    "HostSyncError",
    "NotCapturedError",
    "PageableCopyError",
    "PinnedAllocError",
    "ReplayMismatchError",
    "RngStateError",
    "StaleHostScalarError",
    "StaleOutputError",
    "StreamEscapeError",
    "error_class_for",
]


class GraphGuardError(Exception):
    """Root of every exception graphguard raises."""


class ConfigError(GraphGuardError, ValueError):
    """A bad argument or setting; the message names it and the values it accepts."""

    @classmethod
    def bad_choice(cls, name: str, value: Any, allowed: tuple[str, ...]) -> ConfigError:
        choices = ", ".join(repr(a) for a in allowed)
        return cls(f"{name}={value!r} is not valid; allowed values: {choices}")


class NotCapturedError(GraphGuardError, RuntimeError):
    """``replay()`` was called on a region that holds no graph (audit mode, fallback, failure)."""


class GraphLimitError(GraphGuardError, RuntimeError):
    """A graphed step met a new shape class past ``max_graphs`` (``on_graph_limit="error"``)."""


class HazardError(GraphGuardError, RuntimeError):
    """A capture hazard, raised before the illegal call reached CUDA."""

    kind: ClassVar[str] = ""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(str(diagnostic))
        self.diagnostic = diagnostic

    @property
    def code(self) -> str:
        return self.diagnostic.code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.diagnostic,))

    def __str__(self) -> str:
        return str(self.diagnostic)


class HostSyncError(HazardError):
    """The host waits for or reads device data."""

    kind = "host-sync"


class PinnedAllocError(HazardError):
    """Pinned host memory is allocated inside the region."""

    kind = "pinned-alloc"


class StreamEscapeError(HazardError):
    """Work is issued on a stream that the capture does not record."""

    kind = "stream-escape"


class PageableCopyError(HazardError):
    """A host-to-device copy from pageable memory."""

    kind = "pageable-copy"


class HostBufferReadError(HazardError):
    """A copy from pinned host memory is recorded and re-read at every replay."""

    kind = "host-buffer-read"


class RngStateError(HazardError):
    """The random generator is reseeded, or its state read or set, inside the region."""

    kind = "rng-state"


class StaleHostScalarError(HazardError):
    """A Python scalar baked into a captured graph changed before a replay."""

    kind = "stale-host-scalar"


class StaleOutputError(HazardError):
    """A graph output was read after a later replay overwrote it."""

    kind = "stale-output"


class ReplayMismatchError(HazardError):
    """A verified replay differs from the eager step run from the same state."""

    kind = "replay-mismatch"


_BY_KIND: dict[str, type[HazardError]] = {
    cls.kind: cls
    for cls in (
        HostSyncError,
        PinnedAllocError,
        StreamEscapeError,
        PageableCopyError,
        HostBufferReadError,
        RngStateError,
        StaleHostScalarError,
        StaleOutputError,
        ReplayMismatchError,
    )
}


def error_class_for(kind: str) -> type[HazardError]:
    """The ``HazardError`` subclass for a hazard kind."""
    return _BY_KIND[kind]
