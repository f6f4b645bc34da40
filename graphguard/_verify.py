"""Replay verification: the first replays of a graph, checked against the eager step.

Some graphs capture cleanly and replay wrong, because a value the recording baked in lives deep
in library code (a Python int offset in a cache layer, a tensor the capture allocated and a
Python object kept). No rule sees that in advance. ``graphed(..., verify=N)`` checks it after
the fact, for the first ``N`` replays of each captured shape class:

1. **snapshot** the state the step can read and write: its arguments (walked into lists, tuples,
   dicts and plain objects such as a transformers cache), the ``nn.Module`` it wraps, and the
   modules, optimizers, tensors and objects its code names (closure cells and globals), with
   every parameter's ``.grad`` and every optimizer state tensor; plus the Python attributes of
   those objects and the random generators' states;
2. **replay** the graph and keep a copy of what it produced (outputs and state);
3. **shadow**: put the snapshot back and run the step eagerly on the same inputs, with the same
   generator states, so random ops draw the numbers the replay drew;
4. **compare** every output and every state tensor, eager against replay, with a tolerance that
   fits the dtype;
5. **restore** the replay's results (tensors, generators) and the Python attributes, so the
   program continues exactly as if only the replay had run, then report the first difference
   as GG901 (``replay-mismatch``) under the step's ``on_hazard`` policy.

The cost is zero when off. When on, each verified replay costs one eager run of the step, two
copies of its state and one comparison; ``benchmarks/verify.py`` measures it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ._errors import ConfigError
from ._frames import is_internal
from ._tree import flatten

__all__ = [
    "Mismatch",
    "StateMap",
    "Verify",
    "collect_state",
    "resolve_verify",
    "step_location",
    "step_roots",
    "verify_finding",
    "verify_replay",
]

#: (rtol, atol) by dtype: a difference counts when ``max|a - b| > atol + rtol * max|b|``. Scaled
#: by the tensor's largest magnitude, not elementwise, so the run-to-run noise of atomics in a
#: backward pass (tiny against the tensor's scale) does not count, while a baked value (a stale
#: offset, a constant learning rate) does.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    # fp32 noise measured on an H200: resnet18 conv weight grads under cuDNN's default
    # (non-deterministic) algorithms differ by 2e-4 of their scale between two runs of one step.
    torch.float32: (1e-3, 1e-6),
    torch.float16: (5e-3, 1e-4),
    torch.bfloat16: (2e-2, 1e-3),
}
_FALLBACK_TOLERANCE = (2e-2, 1e-3)  # float8 and other reduced formats


@dataclass(frozen=True)
class Verify:
    """How a graphed step checks its first replays against eager. See docs/verify.md.

    ``graphed(fn, verify=3)`` is ``graphed(fn, verify=Verify(replays=3))``.
    """

    #: How many replays of each captured shape class are checked.
    replays: int = 3
    #: Relative and absolute tolerance for every floating tensor; None: by dtype (see
    #: ``DEFAULT_TOLERANCES``).
    rtol: float | None = None
    atol: float | None = None
    #: Paths left out of the comparison, as ``fnmatch`` patterns (``"output[1]"``,
    #: ``"*.running_mean"``, ``"optimizer.state[*]"``).
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.replays, bool) or not isinstance(self.replays, int):
            raise ConfigError(f"verify: replays must be an int >= 1, got {self.replays!r}")
        if self.replays < 1:
            raise ConfigError(f"verify: replays must be >= 1, got {self.replays}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"verify: {name} must be a number >= 0, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"verify: {name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise ConfigError(
                f"verify: exclude must be a tuple of path patterns, got {self.exclude!r}"
            )
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        rtol, atol = DEFAULT_TOLERANCES.get(dtype, _FALLBACK_TOLERANCE)
        return (
            self.rtol if self.rtol is not None else rtol,
            self.atol if self.atol is not None else atol,
        )

    def excluded(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.exclude)


def resolve_verify(value: object) -> Verify | None:
    """``verify=`` as given by the user: 0/None/False (off), a positive int, or a Verify."""
    if value is None or value is False or (type(value) is int and value == 0):
        return None
    if isinstance(value, Verify):
        return value
    if type(value) is int:
        return Verify(replays=value)
    raise ConfigError(
        f"verify must be a number of replays (an int >= 0) or graphguard.Verify(...), got {value!r}"
    )


# --- the state a step can read and write ----------------------------------------------------------
_SKIP_TYPES = (
    types.ModuleType,
    types.BuiltinFunctionType,
    types.MethodType,
    type,
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
    torch.device,
    torch.dtype,
    torch.Generator,
)
_MAX_DEPTH = 8
#: Containers longer than this are not walked: a dataset or a token list the step names is not
#: state a graph writes, and copying it at every verified replay would cost more than the step.
_MAX_ITEMS = 4096


@dataclass
class StateMap:
    """Tensors the step can touch, by the first path that reaches each, and the Python
    containers and objects on those paths (whose contents an eager run may change)."""

    device_only: bool = False
    tensors: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    #: (object, shallow copy of its contents) for lists, dicts and objects' ``__dict__``.
    python: list[tuple[Any, Any]] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)
    _names: dict[int, str] = field(default_factory=dict)

    def ids(self) -> set[int]:
        return {id(t) for _path, t in self.tensors}

    def python_now(self) -> list[tuple[Any, Any]]:
        """The contents of every walked container and object, now (after the replay: on the
        CPU an emulated replay runs Python, and its changes are the ones to keep)."""
        return [(obj, _contents(obj)) for obj, _old in self.python]

    def restore_python(self, snapshot: list[tuple[Any, Any]] | None = None) -> None:
        """Put back the contents of every list, dict and object attribute table walked."""
        for obj, saved in self.python if snapshot is None else snapshot:
            if isinstance(obj, list):
                obj[:] = saved
            elif isinstance(obj, dict):
                # by identity: ``!=`` would compare tensor values (and fail on most tensors)
                if len(obj) != len(saved) or any(
                    obj.get(key, _ABSENT) is not value for key, value in saved.items()
                ):
                    obj.clear()
                    obj.update(saved)
            else:
                table = obj.__dict__
                for key in [k for k in table if k not in saved]:
                    del table[key]
                for key, value in saved.items():
                    if table.get(key, _ABSENT) is not value:
                        table[key] = value


_ABSENT = object()


def _contents(obj: Any) -> Any:
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    return dict(obj.__dict__)


def collect_state(roots: list[tuple[str, Any]], device_only: bool = False) -> StateMap:
    """The tensors and Python objects reachable from ``roots`` (``(path, object)`` pairs).

    ``device_only``: keep only CUDA tensors (a graph writes no host memory but pinned buffers
    it copies into device memory, so host tensors are not state a replay can change).
    """
    state = StateMap(device_only=device_only)
    modules = [(p, o) for p, o in roots if isinstance(o, torch.nn.Module)]
    for path, module in modules:  # parameter names first: optimizer state is named by them
        for name, param in module.named_parameters():
            state._names.setdefault(id(param), f"{path}.{name}")
    for path, obj in roots:
        _walk(state, path, obj, 0)
    return state


def _add_tensor(state: StateMap, path: str, t: torch.Tensor) -> None:
    if id(t) in state._seen:
        return
    state._seen.add(id(t))
    if not state.device_only or t.is_cuda:
        state.tensors.append((path, t))
    grad = t.grad if t.is_leaf and t.requires_grad else None
    if grad is not None:
        _add_tensor(state, f"{path}.grad", grad)


def _walk(state: StateMap, path: str, obj: Any, depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        _add_tensor(state, path, obj)
        return
    if isinstance(obj, _SKIP_TYPES) or depth > _MAX_DEPTH or id(obj) in state._seen:
        return
    state._seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        # A function the step can call (a closure the step names, a ``run`` kept in an
        # object): the names its code reads are state too, under their own names.
        if not is_internal(obj.__code__.co_filename):
            for name, value in _function_names(obj):
                _walk(state, name, value, depth + 1)
        return
    if isinstance(obj, torch.nn.Module):
        for name, module in obj.named_modules():
            state.python.append((module, dict(module.__dict__)))
            for pname, param in module.named_parameters(recurse=False):
                _add_tensor(state, _join(path, name, pname), param)
            for bname, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    _add_tensor(state, _join(path, name, bname), buf)
        return
    if isinstance(obj, torch.optim.Optimizer):
        for index, group in enumerate(obj.param_groups):
            state.python.append((group, dict(group)))
            for key, value in group.items():
                if isinstance(value, torch.Tensor):
                    _add_tensor(state, f"{path}.param_groups[{index}][{key!r}]", value)
        for param, pstate in obj.state.items():
            name = state._names.get(id(param), f"<param {describe_param(param)}>")
            state.python.append((pstate, dict(pstate)))
            for key, value in pstate.items():
                if isinstance(value, torch.Tensor):
                    _add_tensor(state, f"{path}.state[{name}][{key!r}]", value)
        return
    if isinstance(obj, (list, tuple, dict)) and len(obj) > _MAX_ITEMS:
        return
    if isinstance(obj, (list, tuple)):
        if isinstance(obj, list):
            state.python.append((obj, list(obj)))
        for i, item in enumerate(obj):
            _walk(state, f"{path}[{i}]", item, depth + 1)
        return
    if isinstance(obj, dict):
        state.python.append((obj, dict(obj)))
        for key, item in list(obj.items()):
            _walk(state, f"{path}[{key!r}]", item, depth + 1)
        return
    table = getattr(obj, "__dict__", None)
    if isinstance(table, dict) and type(obj).__module__ not in ("builtins", "torch"):
        state.python.append((obj, dict(table)))
        for key, item in list(table.items()):
            _walk(state, f"{path}.{key}", item, depth + 1)


def _join(root: str, *parts: str) -> str:
    return ".".join(p for p in (root, *parts) if p)


def describe_param(param: torch.Tensor) -> str:
    return f"{tuple(param.shape)} {str(param.dtype).removeprefix('torch.')}"


def step_roots(fn: Any, module: Any, args: Any, kwargs: Any) -> list[tuple[str, Any]]:
    """Where a step's state lives: its arguments, its module, what its code names."""
    roots: list[tuple[str, Any]] = []
    if module is not None:
        roots.append(("model", module))
    for i, arg in enumerate(args):
        roots.append((f"args[{i}]", arg))
    for key, value in kwargs.items():
        roots.append((key, value))
    target = getattr(fn, "__func__", fn)
    if isinstance(target, types.FunctionType):
        roots.extend(_function_names(target))
    bound = getattr(fn, "__self__", None)
    if bound is not None and not isinstance(bound, types.ModuleType):
        roots.append(("self", bound))
    return roots


def step_location(fn: Any) -> tuple[str, int, str] | None:
    """Where a step is defined (its function, or its module's ``forward``): a GG901's location."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        code = getattr(getattr(type(fn), "forward", None), "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno, code.co_name)


def _function_names(fn: types.FunctionType) -> list[tuple[str, Any]]:
    """The closure cells and the globals a function's code reads, by name."""
    names: list[tuple[str, Any]] = []
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            names.append((name, cell.cell_contents))
    globals_ = fn.__globals__
    for name in dict.fromkeys(_global_names(code)):
        if name in globals_:
            names.append((name, globals_[name]))
    return names


def _global_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # comprehensions and nested functions
            yield from _global_names(const)


# --- comparing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    """One tensor that differs between the replay and the eager step."""

    path: str
    max_abs: float
    max_rel: float
    note: str = ""

    def describe(self) -> str:
        text = f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}"
        return f"{text} ({self.note})" if self.note else text


def compare(path: str, replay: Any, eager: Any, options: Verify) -> Mismatch | None:
    """The difference between one replay tensor and its eager twin, if it counts."""
    if not isinstance(replay, torch.Tensor) or not isinstance(eager, torch.Tensor):
        if isinstance(replay, torch.Tensor) or isinstance(eager, torch.Tensor):
            return Mismatch(path, math.inf, math.inf, "a tensor on one side only")
        return None
    if replay.shape != eager.shape or replay.dtype != eager.dtype:
        note = (
            f"replay gave {tuple(replay.shape)} {replay.dtype}, "
            f"eager {tuple(eager.shape)} {eager.dtype}"
        )
        return Mismatch(path, math.inf, math.inf, note)
    with torch._C.DisableTorchFunction(), torch.no_grad():
        a = replay.detach()
        b = eager.detach().to(a.device)
        if a.numel() == 0 or torch.equal(a, b):
            return None
        if not (a.is_floating_point() or a.is_complex()):
            diff = (a.to(torch.float64) - b.to(torch.float64)).abs().max()
            return Mismatch(path, float(diff), math.inf, "integer values differ")
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
        if not torch.equal(nan_a, nan_b):
            return Mismatch(path, math.inf, math.inf, "NaN in one run only")
        a64 = torch.where(nan_a, torch.zeros_like(a64), a64)
        b64 = torch.where(nan_b, torch.zeros_like(b64), b64)
        diff = (a64 - b64).abs()
        finite = torch.isfinite(diff)
        if not bool(finite.all()):
            same_inf = torch.equal(a64[~finite], b64[~finite])
            if not same_inf:
                return Mismatch(path, math.inf, math.inf, "an infinity in one run only")
            diff = torch.where(finite, diff, torch.zeros_like(diff))
        max_abs = float(diff.max())
        scale = float(torch.where(torch.isfinite(b64), b64, torch.zeros_like(b64)).abs().max())
    rtol, atol = options.tolerance(replay.dtype)
    if max_abs <= atol + rtol * scale:
        return None
    return Mismatch(path, max_abs, max_abs / scale if scale > 0 else math.inf)


# --- one verified replay -------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a verified replay found."""

    mismatches: list[Mismatch]
    #: Likely causes graphguard can see, in words.
    causes: list[str]
    #: The replay's output (what the step returns).
    result: Any


_Gen = tuple[str, Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]


def _generators() -> list[_Gen]:
    gens: list[_Gen] = [("cpu", torch.get_rng_state, torch.set_rng_state)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        gens.append(
            (
                f"cuda:{device}",
                lambda: torch.cuda.get_rng_state(device),
                lambda s: torch.cuda.set_rng_state(s, device),
            )
        )
    return gens


def verify_replay(
    *,
    state: StateMap,
    replay: Callable[[], tuple[Any, list[Any]]],
    eager: Callable[[], Any],
    options: Verify,
    allocated_in_capture: set[str],
    baked: list[str],
    compare_outputs: bool = True,
) -> Outcome:
    """Replay, shadow the replay with an eager run from the same state, compare, restore.

    ``replay()`` returns ``(result, output leaves)``; ``eager()`` returns the step's output.
    ``allocated_in_capture``: state paths whose tensors did not exist before the capture;
    ``baked``: names of Python values the capture consumed (for the causes).
    """
    # Excluded tensors are not compared, but they are saved and restored like the others: the
    # shadow run must not leave its own writes behind in them.
    tensors = state.tensors
    gens = _generators()
    with torch._C.DisableTorchFunction(), torch.no_grad():
        before = [t.detach().clone() for _p, t in tensors]
    rng_before = [get() for _name, get, _set in gens]

    result, replay_leaves = replay()
    python_after = state.python_now()

    with torch._C.DisableTorchFunction(), torch.no_grad():
        replay_out = [
            t.detach().clone() if isinstance(t, torch.Tensor) else t for t in replay_leaves
        ]
        after = [t.detach().clone() for _p, t in tensors]
        rng_after = [get() for _name, get, _set in gens]
        for (_p, t), saved in zip(tensors, before, strict=True):
            t.copy_(saved)
    for (_name, _get, set_), saved_rng in zip(gens, rng_before, strict=True):
        set_(saved_rng)
    state.restore_python()  # the shadow run starts where the replay started
    try:
        eager_out = eager()
        mismatches = _output_mismatches(replay_out, eager_out, options) if compare_outputs else []
        for (path, t), replayed in zip(tensors, after, strict=True):
            found = None if options.excluded(path) else compare(path, replayed, t, options)
            if found is not None:
                mismatches.append(found)
        used_rng = [
            name
            for (name, _g, _s), a, b in zip(gens, rng_before, rng_after, strict=True)
            if not torch.equal(a, b)
        ]
    finally:
        with torch._C.DisableTorchFunction(), torch.no_grad():
            for (_p, t), replayed in zip(tensors, after, strict=True):
                t.copy_(replayed)
        for (_name, _get, set_), saved_rng in zip(gens, rng_after, strict=True):
            set_(saved_rng)
        state.restore_python(python_after)  # and the program goes on from the replay
    return Outcome(mismatches, _causes(mismatches, allocated_in_capture, baked, used_rng), result)


def _output_mismatches(replay_out: list[Any], eager_out: Any, options: Verify) -> list[Mismatch]:
    eager_leaves, paths, _sig = flatten(eager_out, "output")
    if len(eager_leaves) != len(replay_out):
        note = f"replay gave {len(replay_out)} values, eager {len(eager_leaves)}"
        return [Mismatch("output", math.inf, math.inf, note)]
    found = (
        compare(path, r, e, options)
        for path, r, e in zip(paths, replay_out, eager_leaves, strict=True)
        if not options.excluded(path)
    )
    return [m for m in found if m is not None]


def _causes(
    mismatches: list[Mismatch], allocated: set[str], baked: list[str], used_rng: list[str]
) -> list[str]:
    if not mismatches:
        return []
    causes = []
    fresh = sorted(p for p in allocated if any(_related(p, m.path) for m in mismatches))
    fresh = fresh or sorted(allocated)
    if fresh:
        shown = ", ".join(fresh[:3]) + (f" and {len(fresh) - 3} more" if len(fresh) > 3 else "")
        causes.append(
            f"tensors allocated during the capture and kept by Python objects ({shown}): the "
            "graph rewrites that memory, and code that reads it outside the graph sees replay "
            "results"
        )
    if baked:
        shown = ", ".join(baked[:3]) + (f" and {len(baked) - 3} more" if len(baked) > 3 else "")
        causes.append(
            f"Python values the step read during the capture are constants in the graph ({shown})"
        )
    causes.append(
        "Python values read inside library code (counters, offsets, cache lengths) are "
        "constants in the graph; graphguard tracks only the step's own reads"
    )
    if used_rng:
        causes.append(
            f"the step draws random numbers ({', '.join(used_rng)}); the eager run used the "
            "replay's generator state, so this matters only if random ops differ between runs"
        )
    return causes


def _related(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def verify_finding(
    api: str, label: str | None, replay: int, outcome: Outcome, location: Any
) -> Any:
    """The GG901 finding for a verified replay that differed."""
    from ._report import Finding  # _report imports the rule table this module reports against

    first = outcome.mismatches[0]
    more = len(outcome.mismatches) - 1
    return Finding(
        "GG901",
        api,
        facts={
            "replay": replay,
            "path": first.path,
            "difference": first.describe(),
            "more": f" (and {more} more tensors differ)" if more else "",
        },
        details=tuple((m.path, m.describe()) for m in outcome.mismatches[:10])
        + tuple((f"likely cause {i}", c) for i, c in enumerate(outcome.causes, 1)),
        location=location,
    )
