"""What ``graphguard certify`` certifies: a workload, and how a name on the command line finds one.

A :class:`Workload` is a step written in two forms (the ``safe_step`` meant for CUDA-graph capture
and, optionally, the ``unsafe_step`` it replaced) plus the inputs to run them on. ``certify``
checks, from it alone:

1. semantics: ``safe_step`` gives the same outputs as ``reference_step`` (default: the unsafe
   step) on every case of ``make_inputs`` (edge cases and random draws), and every extra pair of
   ``also_compare`` agrees on its own cases;
2. refusal: under graphguard the unsafe step is refused with hazards at exactly the
   ``expected_hazards`` sites (in audit mode anywhere; under real capture on a GPU, where the
   process must stay healthy), and the safe step reports none;
3. replay (GPU): ``safe_step`` captured once on the first case of ``replay_inputs`` and replayed
   after each later case was copied into the captured tensors gives the outputs of an eager call.

Input factories are called as ``factory(device, quick=..., seed=...)`` and return (or yield)
cases: ``(name, args)`` pairs whose ``args`` tuple is passed as ``step(*args)``. Each call gets its
own copy of the case's tensors, so steps may work in place. The first case of ``make_inputs`` is
the one the refusal claims run. Replay cases must have the structure, shapes, dtypes and devices
of the first replay case (the inputs it was captured with); their non-tensor arguments must be
equal to it.

A workload is named on the command line by an entry point of the ``graphguard.workloads`` group
(``dsa = "dsa._workload:make_workload"``) or directly as ``module:function``; the function takes
no argument and returns a :class:`Workload`. :func:`load_workload` resolves both.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, NamedTuple, Protocol

import torch

from ._errors import ConfigError
from ._tree import flatten

__all__ = [
    "BUNDLED_WORKLOADS",
    "DEFAULT_WORKLOAD",
    "ENTRY_POINT_GROUP",
    "Case",
    "Equivalence",
    "HazardSite",
    "Workload",
    "as_cases",
    "load_workload",
    "marked_lines",
    "outputs_equal",
    "registered_workloads",
]

ENTRY_POINT_GROUP = "graphguard.workloads"
DEFAULT_WORKLOAD = "dsa"
#: Workloads shipped with graphguard, as entry-point values. Used only where the entry point is
#: missing (an editable install made before the entry point was declared); a string, so that
#: graphguard itself never imports the workload's package.
BUNDLED_WORKLOADS = {"dsa": "dsa._workload:make_workload"}


class Case(NamedTuple):
    """One input set: a name for the report and the positional arguments of the step."""

    name: str
    args: tuple[Any, ...]


class HazardSite(NamedTuple):
    """A line where the unsafe step is expected to be refused; ``kind`` (``"host-sync"``) or any."""

    filename: str
    lineno: int
    kind: str | None = None


class InputFactory(Protocol):
    def __call__(self, device: torch.device, *, quick: bool, seed: int) -> Iterable[Any]: ...


Compare = Callable[[Any, Any], bool]
ExpectedHazards = Iterable[Any] | Callable[[], Iterable[Any]]


def outputs_equal(actual: Any, expected: Any) -> bool:
    """Exact equality of two outputs: same nesting, equal tensors (NaN equals NaN), equal values."""
    a_leaves, _, a_sig = flatten(actual)
    b_leaves, _, b_sig = flatten(expected)
    if a_sig != b_sig:
        return False
    for a, b in zip(a_leaves, b_leaves, strict=True):
        if isinstance(a, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
                return False
            if a.is_floating_point() or a.is_complex():
                a_nan, b_nan = a.isnan(), b.isnan()
                if not torch.equal(a_nan, b_nan):
                    return False
                a, b = a.masked_fill(a_nan, 0), b.masked_fill(b_nan, 0)
            if not torch.equal(a, b):
                return False
        elif not (a is b or a == b):
            return False
    return True


@dataclass(frozen=True)
class Equivalence:
    """Another pair of functions the semantics claim compares, on cases of their own.

    The DSA workload uses one for its mask update alone: pre-filled masks and out-of-range
    indices are edge cases that the whole step never produces.
    """

    name: str
    safe: Callable[..., Any]
    reference: Callable[..., Any]
    make_inputs: InputFactory
    compare: Compare = outputs_equal


@dataclass(frozen=True)
class Workload:
    """A step to certify for CUDA-graph capture. See the module docstring for the claims.

    Only ``name``, ``description``, ``make_inputs`` and ``safe_step`` are required; a claim whose
    parts are missing is reported as not run, with the reason.
    """

    name: str
    """Short name, shown in the certificate (``dsa``)."""
    description: str
    """One line saying what the step is."""
    make_inputs: InputFactory
    """``(device, *, quick, seed) -> cases``: edge cases and random draws; the first case is the
    one the refusal claims run, so make it representative and small."""
    safe_step: Callable[..., Any]
    """The capture-safe form: ``safe_step(*args)``."""
    unsafe_step: Callable[..., Any] | None = None
    """The form graphguard must refuse (the seed code), or None."""
    expected_hazards: ExpectedHazards | None = None
    """Where the unsafe step must be refused: ``(filename, lineno)`` or ``(filename, lineno,
    kind)`` sites, in the order the step reaches them, or a callable returning them (lines found
    from the source at run time, see :func:`marked_lines`). None: any hazard will do."""
    reference_step: Callable[..., Any] | None = None
    """What the safe step must agree with; default: the unsafe step, run eagerly."""
    compare: Compare = outputs_equal
    """``compare(actual, expected) -> bool`` for the semantics and refusal claims."""
    replay_inputs: InputFactory | None = None
    """``(device, *, quick, seed) -> cases``: the first is captured, each later one (same shapes,
    new values) is copied into the captured tensors and replayed. None: replay is not run."""
    replay_compare: Compare | None = None
    """``compare`` for the replay claim (graph output, eager output); default: ``compare``."""
    also_compare: tuple[Equivalence, ...] = ()
    """Further function pairs the semantics claim compares."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Workload.name must be a non-empty string; got {self.name!r}")
        if not isinstance(self.description, str):
            raise TypeError(f"Workload.description must be a string; got {self.description!r}")
        for field in ("make_inputs", "safe_step", "compare"):
            if not callable(getattr(self, field)):
                raise TypeError(f"Workload.{field} must be callable; got {getattr(self, field)!r}")
        for field in ("unsafe_step", "reference_step", "replay_inputs", "replay_compare"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise TypeError(f"Workload.{field} must be callable or None; got {value!r}")
        for pair in self.also_compare:
            if not isinstance(pair, Equivalence):
                raise TypeError(f"Workload.also_compare holds Equivalence objects; got {pair!r}")

    @property
    def reference(self) -> Callable[..., Any] | None:
        """The step the safe step is compared with: ``reference_step``, else ``unsafe_step``."""
        return self.reference_step if self.reference_step is not None else self.unsafe_step

    def hazard_sites(self) -> list[HazardSite] | None:
        """``expected_hazards`` as a list of :class:`HazardSite` (calling it if it is callable)."""
        if self.expected_hazards is None:
            return None
        raw = self.expected_hazards() if callable(self.expected_hazards) else self.expected_hazards
        sites = []
        for site in raw:
            if not isinstance(site, tuple) or len(site) not in (2, 3):
                raise TypeError(
                    f"expected hazard sites are (filename, lineno[, kind]) tuples; got {site!r}"
                )
            sites.append(HazardSite(*site))
        return sites


def as_cases(raw: Iterable[Any], what: str) -> Iterable[Case]:
    """Check each ``(name, args)`` pair of an input factory as it is produced."""
    for i, item in enumerate(raw):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], tuple)):
            raise TypeError(f"{what} case {i} must be a (name, args tuple) pair; got {item!r}")
        yield Case(str(item[0]), item[1])


def marked_lines(
    func: Callable[..., Any], marker: str, kind: str | None = None
) -> list[HazardSite]:
    """The lines of ``func``'s source that contain ``marker``, as hazard sites, in source order.

    Written for ``Workload.expected_hazards``: mark each unsafe line with a trailing comment
    (``if flag.any():  # hazard``) and pass ``lambda: marked_lines(unsafe_step, "# hazard")``;
    the lines are found when certify runs, so edits above them cannot make them stale. Raises
    ValueError when no line carries the marker.
    """
    target = inspect.unwrap(func)
    source, first = inspect.getsourcelines(target)
    filename = target.__code__.co_filename
    sites = [
        HazardSite(filename, first + offset, kind)
        for offset, text in enumerate(source)
        if marker in text
    ]
    if not sites:
        raise ValueError(f"no line of {target.__qualname__} contains the marker {marker!r}")
    return sites


# --- finding a workload by name ------------------------------------------------------------------
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_TARGET = re.compile(rf"^(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})$")


def registered_workloads() -> dict[str, str]:
    """Workload names and their ``module:function``: the ``graphguard.workloads`` entry points,
    plus the bundled ones that no entry point of that name provides."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name, value in BUNDLED_WORKLOADS.items():
        found.setdefault(name, value)
    return dict(sorted(found.items()))


def load_workload(spec: str) -> Workload:
    """The workload that ``spec`` names: a registered name, else ``module:function``.

    ``module:function`` imports ``module`` and calls ``function()`` (a dotted attribute path is
    allowed); it must return a :class:`Workload`. Every failure -- an unknown name, bad syntax, an
    import that fails, a missing attribute, a factory that raises or returns something else -- is
    a :class:`~graphguard.ConfigError` whose message says which and lists the registered names.
    """
    registry = registered_workloads()
    names = ", ".join(registry) or "(none)"
    if spec in registry:
        target, origin = registry[spec], f"workload {spec!r} ({registry[spec]})"
    elif ":" in spec:
        target, origin = spec, repr(spec)
    else:
        raise ConfigError(
            f"unknown workload {spec!r}; registered workloads: {names}; "
            "or give your own as MODULE:FUNCTION"
        )
    match = _TARGET.match(target.strip())
    if match is None:
        raise ConfigError(
            f"{origin} is not MODULE:FUNCTION (e.g. mypkg.steps:make_workload); "
            f"registered workloads: {names}"
        )
    module_name, attr = match["module"], match["attr"]
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # an import error or anything the module raises while it runs
        raise ConfigError(
            f"cannot import {module_name!r} for {origin}: {type(e).__name__}: {e}"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{origin}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"{origin}: {attr!r} is not callable; it must return a Workload")
    try:
        workload = obj()
    except Exception as e:
        raise ConfigError(f"{origin}: {attr}() raised {type(e).__name__}: {e}") from e
    if not isinstance(workload, Workload):
        raise ConfigError(
            f"{origin}: {attr}() returned {type(workload).__name__}, not graphguard.Workload"
        )
    return workload
