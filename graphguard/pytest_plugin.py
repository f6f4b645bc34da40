"""pytest plugin: run test bodies under graphguard and fail them with the hazard's diagnostic.

Installed with graphguard (entry point ``pytest11``); it does nothing until asked:

- ``@pytest.mark.graph_safe`` on a test (or class, or module via ``pytestmark``) runs the test
  body inside ``graphguard.capture(mode="audit", label=<test id>)``. Options:
  ``@pytest.mark.graph_safe(mode="audit" | "auto" | "capture", allow=["GG402", "rng-state"])``.
  ``mode="audit"`` (the default) runs the body eagerly on any machine and reports what would
  break a capture. ``"auto"`` and ``"capture"`` record the body into a real CUDA graph where CUDA
  is available (``"auto"`` audits elsewhere, ``"capture"`` skips the test): the body is then
  recorded, not run, so such tests check capturability, not values.
- The ``graph_safe`` fixture applies the same guard to the test that requests it, and gives the
  test a handle (``graph_safe.region`` is the running ``graphguard.Capture``).
- ``--graph-safe`` on the command line, or ``graph_safe = true`` in the ini file, guards every
  test of the suite. A test opts out with ``@pytest.mark.graph_safe(enabled=False)``.

Only the test function's call is guarded: fixtures, setup and teardown run as usual. On a machine
without CUDA, audit mode lets CPU tensors stand for device tensors: those made before the body
(by fixtures, at module level) count as device tensors, while CPU tensors the body itself creates
without a device are host tensors. Make a test's inputs in a fixture to check them as device data.

A hazard fails the test with the diagnostic (code, the test's file and line with its source, why,
the fix, the docs page) after the test's own frames, without graphguard's, torch's or pytest's.

Known, safe hazards are allowed where they happen, never for a whole region if avoidable:

- at one call site: ``with graphguard.allow("GG402"): x_dev.copy_(pinned, non_blocking=True)``;
- for one whole test: ``@pytest.mark.graph_safe(allow=["GG402"])`` (codes or kinds).

Assertions on values belong outside the guarded body or under ``graphguard.allow("host-sync")``:
``assert out.sum().item() == 3`` is itself a host read, and is reported as one.
"""

from __future__ import annotations

import contextlib
import linecache
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import _pytest
import pluggy
import pytest

from ._capture import MODES, Capture, capture
from ._diagnostic import Diagnostic
from ._errors import HazardError
from ._frames import is_internal
from ._rules import KINDS, RULES
from ._state import allow

__all__ = ["GraphSafe", "graph_safe"]

MARKER = "graph_safe"
_MARKER_KWARGS = frozenset({"mode", "allow", "enabled"})
_GUARDED = pytest.StashKey["GraphSafe"]()
# pytest's and pluggy's own frames (the hook calls around the test) are never the user's.
_PYTEST_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (_pytest.__file__, pluggy.__file__)
    if path is not None
)


@dataclass
class GraphSafe:
    """How a test is guarded; the ``graph_safe`` fixture's value."""

    mode: str = "audit"
    allow: tuple[str, ...] = ()
    #: The ``graphguard.Capture`` around the test body, while and after it runs.
    region: Capture | None = None
    #: Hazards reported in the body (the first one fails the test unless allowed).
    hazards: list[Diagnostic] = field(default_factory=list)


class _MarkerError(Exception):
    """A ``graph_safe`` marker with arguments the plugin does not accept."""


# --- configuration --------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("graphguard")
    group.addoption(
        "--graph-safe",
        action="store_true",
        default=False,
        dest="graph_safe",
        help="run every test body under graphguard's audit guard; a capture hazard fails the test",
    )
    parser.addini(
        "graph_safe",
        type="bool",
        default=False,
        help="run every test body under graphguard's audit guard (like --graph-safe)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(mode='audit', allow=(), enabled=True): run the test body inside a graphguard "
        "region; a CUDA-graph capture hazard fails the test with its diagnostic",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    if _suite_wide(config):
        return "graphguard: every test body runs under graph_safe (audit)"
    return None


def _suite_wide(config: pytest.Config) -> bool:
    return bool(config.getoption("graph_safe", False) or config.getini("graph_safe"))


def _settings_for(item: pytest.Item) -> GraphSafe | None:
    """The guard for ``item``, or ``None`` if it is not guarded. Raises ``_MarkerError``."""
    marker = item.get_closest_marker(MARKER)
    requested = MARKER in getattr(item, "fixturenames", ())
    if marker is None and not requested and not _suite_wide(item.config):
        return None
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise _MarkerError(
            f"@pytest.mark.{MARKER} takes keyword arguments only (mode=, allow=, enabled=), "
            f"got {marker.args!r}"
        )
    unknown = sorted(set(kwargs) - _MARKER_KWARGS)
    if unknown:
        raise _MarkerError(
            f"@pytest.mark.{MARKER} got unknown argument(s) {', '.join(unknown)}; "
            f"allowed: mode, allow, enabled"
        )
    if not kwargs.get("enabled", True) and not requested:
        return None
    mode = kwargs.get("mode", "audit")
    if mode not in MODES:
        raise _MarkerError(
            f"@pytest.mark.{MARKER}(mode={mode!r}) is not valid; allowed values: "
            + ", ".join(repr(m) for m in MODES)
        )
    allowed = kwargs.get("allow", ())
    if isinstance(allowed, str):
        allowed = (allowed,)
    # Checked here, so a typo fails with this one message and not a ConfigError traceback.
    valid = isinstance(allowed, (list, tuple, set, frozenset)) and all(
        isinstance(a, str) and (a.upper() in RULES or a in KINDS) for a in allowed
    )
    if not valid:
        raise _MarkerError(
            f"@pytest.mark.{MARKER}(allow={allowed!r}) is not valid; allowed values: a list of "
            f"rule codes ({', '.join(RULES)}) or kinds ({', '.join(KINDS)})"
        )
    return GraphSafe(mode=mode, allow=tuple(allowed))


def _settings_or_fail(item: pytest.Item) -> GraphSafe | None:
    try:
        return _settings_for(item)
    except _MarkerError as e:
        message = str(e)
    # Failing outside the except block keeps "During handling of the above exception" out.
    pytest.fail(message, pytrace=False)


@pytest.fixture
def graph_safe(request: pytest.FixtureRequest) -> GraphSafe:
    """Guard this test's body with graphguard (audit mode); the value describes the guard."""
    settings = _settings_or_fail(request.node)
    # A test that asks for the fixture is guarded even if a marker says enabled=False.
    return settings if settings is not None else GraphSafe()


# --- running the test body ------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    fixture_value = pyfuncitem.funcargs.get(MARKER)
    if isinstance(fixture_value, GraphSafe):
        settings: GraphSafe | None = fixture_value
    else:
        settings = _settings_or_fail(pyfuncitem)
    if settings is None:
        return (yield)
    if settings.mode == "capture":
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"{MARKER}(mode='capture') needs a CUDA device")
    pyfuncitem.stash[_GUARDED] = settings
    with _guarded_body(settings, pyfuncitem.nodeid):
        return (yield)


@contextlib.contextmanager
def _guarded_body(settings: GraphSafe, label: str) -> Iterator[None]:
    region = capture(mode=settings.mode, label=label)
    settings.region = region
    with contextlib.ExitStack() as stack:
        # Registered first, so it runs last: after the region's exit has filled ``hazards``.
        stack.callback(lambda: settings.hazards.extend(region.hazards))
        if settings.allow:
            stack.enter_context(allow(*settings.allow))
        stack.enter_context(region)
        yield


# --- reporting a hazard ---------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    excinfo = call.excinfo
    if (
        call.when == "call"
        and report.failed
        and excinfo is not None
        and isinstance(excinfo.value, HazardError)
        and _GUARDED in item.stash
    ):
        report.longrepr = HazardFailure.build(item, excinfo.value, excinfo.tb)  # type: ignore[assignment]
    return report


@dataclass(frozen=True)
class _CrashLocation:
    """What pytest's summary line and ``--tb=line`` read from a failure (``reprcrash``)."""

    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}"


@dataclass(frozen=True)
class HazardFailure:
    """A failed test's report: the user's frames, then the diagnostic (pytest calls toterminal)."""

    frames: tuple[tuple[str, int, str, str], ...]
    diagnostic: Diagnostic
    reprcrash: _CrashLocation

    @classmethod
    def build(cls, item: pytest.Item, error: HazardError, tb: TracebackType) -> HazardFailure:
        d = error.diagnostic
        return cls(
            frames=tuple(_user_frames(item, tb)),
            diagnostic=d,
            reprcrash=_CrashLocation(d.filename, d.lineno, f"{d.code} [{d.kind}] {d.title}"),
        )

    def lines(self) -> list[str]:
        out = []
        for path, lineno, name, source in self.frames:
            out.append(f"{path}:{lineno}: in {name}")
            if source:
                out.append(f"    {source}")
        if out:
            out.append("")
        out.extend(str(self.diagnostic).splitlines())
        return out

    def toterminal(self, tw: Any) -> None:
        lines = self.lines()
        header = len(lines) - len(str(self.diagnostic).splitlines())
        for i, line in enumerate(lines):
            if i == header:
                tw.line(line, red=True, bold=True)
            else:
                tw.line(line)

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _user_frames(item: pytest.Item, tb: TracebackType | None) -> list[tuple[str, int, str, str]]:
    """Frames from the test function down to the hazard, without library or pytest frames."""
    test_code = getattr(getattr(item, "obj", None), "__code__", None)
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    start = next((i for i, e in enumerate(entries) if e.tb_frame.f_code is test_code), 0)
    root = str(item.config.rootpath) + os.sep
    frames = []
    for entry in entries[start:]:
        frame = entry.tb_frame
        filename = frame.f_code.co_filename
        if (
            is_internal(filename)
            or os.path.abspath(filename).startswith(_PYTEST_DIRS)
            or frame.f_locals.get("__tracebackhide__")
        ):
            continue
        shown = filename[len(root) :] if filename.startswith(root) else filename
        source = linecache.getline(filename, entry.tb_lineno).strip()
        frames.append((shown, entry.tb_lineno, frame.f_code.co_name, source))
    return frames
