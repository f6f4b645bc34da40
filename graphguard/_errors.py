"""graphguard's exceptions, one documented tree.

::

    GraphGuardError                      root of everything graphguard raises
    ├── ConfigError (ValueError)          a bad argument or setting, named with its allowed values
    ├── NotCapturedError (RuntimeError)  replay() of a region that holds no graph
    ├── GraphLimitError (RuntimeError)   a graphed step needs more graphs than max_graphs allows
    ├── DistributedError (RuntimeError)  a distributed job's region ended for another rank's sake
    │   ├── PeerFailedError               another rank's region failed; .failed_rank, .code
    │   └── AgreementTimeoutError         a rank did not arrive within the agreement timeout
    └── HazardError (RuntimeError)       a capture hazard; .kind, .code, .diagnostic
        ├── HostSyncError                 kind "host-sync"
        ├── PinnedAllocError              kind "pinned-alloc"
        ├── StreamEscapeError             kind "stream-escape"
        ├── PageableCopyError             kind "pageable-copy"
        ├── HostBufferReadError           kind "host-buffer-read"
        ├── RngStateError                 kind "rng-state"
        ├── StaleHostScalarError          kind "stale-host-scalar"
        ├── StaleOutputError              kind "stale-output"
        └── CollectiveError               kind "collective"

Every ``HazardError`` pickles (its only state is the frozen diagnostic), so it crosses process
boundaries (pytest-xdist, multiprocessing) intact.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._diagnostic import Diagnostic

__all__ = [
    "AgreementTimeoutError",
    "CollectiveError",
    "ConfigError",
    "DistributedError",
    "GraphGuardError",
    "GraphLimitError",
    "HazardError",
    "HostBufferReadError",
    "HostSyncError",
    "NotCapturedError",
    "PageableCopyError",
    "PeerFailedError",
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


class CollectiveError(HazardError):
    """A torch.distributed call that breaks a capture (barrier, object collective, ...)."""

    kind = "collective"


class DistributedError(GraphGuardError, RuntimeError):
    """This rank ended a guarded region because of another rank (see docs/distributed.md)."""


class PeerFailedError(DistributedError):
    """Another rank's guarded region failed; this rank ends the matching region instead of waiting.

    ``record`` holds what the failing rank posted: ``rank``, ``code`` (``None`` for an error
    that is not a hazard), ``kind``, ``filename``, ``lineno``, ``source_line``, ``api``,
    ``label`` and ``error``.
    """

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = dict(record)

    @property
    def failed_rank(self) -> int:
        return int(self.record["rank"])

    @property
    def code(self) -> str | None:
        code = self.record.get("code")
        return None if code is None else str(code)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.record))


class AgreementTimeoutError(DistributedError):
    """A rank did not reach an agreement point of a guarded region within the timeout."""

    def __init__(self, message: str, missing: list[int]) -> None:
        super().__init__(message)
        self.missing = list(missing)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.missing))


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
        CollectiveError,
        ReplayMismatchError,
    )
}


def error_class_for(kind: str) -> type[HazardError]:
    """The ``HazardError`` subclass for a hazard kind."""
    return _BY_KIND[kind]
