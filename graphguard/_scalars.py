"""Finding the Python scalars a captured step consumes, and noticing when they change.

A replay runs no Python, so every Python number the step read while it was captured is a
constant in the graph. graphguard tracks four sources of such numbers:

1. **Arguments**: non-tensor leaves of the call's arguments (nested tuples, lists, dicts,
   dataclasses), compared by value at every call (as Megatron-Core does).
2. **Names the step's code reads**: the bytecode of the step function (and of ``forward`` of every
   ``nn.Module`` the step can reach) is read once, at capture. Each load of a global, a closure
   cell or ``self``, followed by constant attribute/subscript steps (``cfg["scale"]``,
   ``self.temperature``, ``sched_state.t``), is a *read path*; paths that resolve to an ``int``,
   ``float`` or ``bool`` are tracked. Names the code never reads are never tracked.
3. **Optimizers whose ``step()`` ran during the capture** (seen through torch's global
   optimizer step pre-hook): every numeric hyperparameter of every param group (``lr``,
   ``momentum``, ``betas``, ``weight_decay``, ...). An optimizer that keeps ``lr`` as a device
   tensor (``capturable=True``) is not baked, and a tensor value is not tracked.
4. Values the step **changes itself** (``global t; t += 1``): the snapshot is taken *before* the
   capturing call, so a step that moves a counter is reported at the next call, because replays
   will not move it.

Cost per call: one resolution (a few dict/attribute lookups) and one comparison per tracked
scalar, plus the argument walk the input copy does anyway; ``benchmarks/graphed.py`` measures it.
Limits: reads through helper functions other than module ``forward`` methods, computed
subscripts (``cfg[key]``) and values hidden in C extensions are not seen.
"""

from __future__ import annotations

import builtins
import dis
import functools
import math
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._diagnostic import describe_tensor
from ._emulation import LIVE_SCALAR_ATTR
from ._frames import find_user_frame
from ._interrupts import (
    PENDING,
    atomic,
    deliver,
    deliver_due_interrupt,
    hold_interrupts,
    release_interrupts,
    take_interrupt,
)

__all__ = [
    "OptimizerWatch",
    "ScalarSnapshot",
    "TensorIdentity",
    "TensorScalar",
    "read_paths",
    "watch_optimizers",
]

_SCALARS = (bool, int, float)
_MISSING = object()
_LOAD_ROOT = {
    "LOAD_GLOBAL",
    "LOAD_DEREF",
    "LOAD_FAST",
    "LOAD_FAST_CHECK",
    "LOAD_FAST_BORROW",
    "LOAD_NAME",
    "LOAD_CLASSDEREF",
}


class TensorScalar:
    """The number a host 0-dim tensor held, compared by value but never shown.

    Diagnostics hold no tensor values: its ``repr`` (what a message prints) describes the
    tensor, and comparisons use the number, so ``SGD(lr=torch.tensor(0.1))`` is tracked exactly
    like ``SGD(lr=0.1)``.
    """

    __slots__ = ("description", "value")

    def __init__(self, value: Any, description: str) -> None:
        self.value = value
        self.description = description

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"<the value of {self.description}>"


class TensorIdentity:
    """A tensor the captured step reads as live state, compared by identity, never shown.

    The graph reads that tensor's memory at every replay, so updating it in place
    (``group["lr"].fill_(0.01)``, what torch's schedulers do) reaches the graph; putting another
    object in its place (``group["lr"] = 0.01``) does not: the replays keep reading the old one.
    """

    __slots__ = ("description", "ref")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.ref = weakref.ref(tensor)
        self.description = describe_tensor(tensor)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorIdentity):
            return False
        mine = self.ref()
        return mine is not None and mine is other.ref()

    def __hash__(self) -> int:
        return id(self.ref())

    def __repr__(self) -> str:
        return f"<the {self.description} object the graph reads>"


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, TensorScalar) else value


def _is_scalar(value: Any) -> bool:
    value = _unwrap(value)
    return isinstance(value, _SCALARS) or (
        isinstance(value, tuple) and bool(value) and all(isinstance(v, _SCALARS) for v in value)
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, TensorIdentity) or isinstance(b, TensorIdentity):
        return isinstance(a, TensorIdentity) and isinstance(b, TensorIdentity) and a == b
    a, b = _unwrap(a), _unwrap(b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class ReadPath:
    """``root`` then attribute (str) / constant-subscript (tuple ``(key,)``) steps."""

    scope: str  # "global", "closure" or "self"
    root: str
    steps: tuple[Any, ...]
    filename: str
    lineno: int

    @property
    def name(self) -> str:
        text = self.root
        for step in self.steps:
            text += f".{step}" if isinstance(step, str) else f"[{step[0]!r}]"
        return text


def read_paths(code: types.CodeType) -> list[ReadPath]:
    """Read paths (root name + constant attribute/subscript chain) in ``code``'s bytecode."""
    out: list[ReadPath] = []
    instrs = list(dis.get_instructions(code))
    line = code.co_firstlineno
    i = 0
    while i < len(instrs):
        ins = instrs[i]
        positions = getattr(ins, "positions", None)  # 3.11+; starts_line before
        if positions is not None and positions.lineno is not None:
            line = positions.lineno
        elif isinstance(getattr(ins, "starts_line", None), int):
            line = ins.starts_line  # type: ignore[assignment]
        if ins.opname in _LOAD_ROOT and isinstance(ins.argval, str):
            scope = {"LOAD_GLOBAL": "global", "LOAD_NAME": "global"}.get(ins.opname, "closure")
            root = ins.argval
            if ins.opname.startswith("LOAD_FAST"):
                if root != "self":
                    i += 1
                    continue
                scope = "self"
            steps: list[Any] = []
            j = i + 1
            while j < len(instrs):
                nxt = instrs[j]
                if nxt.opname == "LOAD_ATTR" and isinstance(nxt.argval, str):
                    if "method" in (nxt.argrepr or ""):  # 3.12+: a method load, not a value
                        break
                    steps.append(nxt.argval)
                    j += 1
                elif (
                    nxt.opname == "LOAD_CONST"
                    and j + 1 < len(instrs)
                    and (
                        instrs[j + 1].opname == "BINARY_SUBSCR"
                        or (instrs[j + 1].opname == "BINARY_OP" and "[]" in instrs[j + 1].argrepr)
                    )
                    and isinstance(nxt.argval, (str, int))
                ):
                    steps.append((nxt.argval,))
                    j += 2
                else:
                    break
            out.append(ReadPath(scope, root, tuple(steps), code.co_filename, line))
            i = j
            continue
        i += 1
    for const in code.co_consts:  # nested functions, lambdas and comprehensions
        if isinstance(const, types.CodeType):
            out.extend(read_paths(const))
    return out


def _resolve_root(path: ReadPath, fn: Any, self_obj: Any) -> Any:
    if path.scope == "self":
        return self_obj if self_obj is not None else _MISSING
    func = getattr(fn, "__func__", fn)
    code = getattr(func, "__code__", None)
    if path.scope == "closure" and code is not None and func.__closure__:
        names = code.co_freevars
        if path.root in names:
            try:
                return func.__closure__[names.index(path.root)].cell_contents
            except ValueError:  # an empty cell
                return _MISSING
        return _MISSING
    globals_ = getattr(func, "__globals__", {})
    if path.root in globals_:
        return globals_[path.root]
    return getattr(builtins, path.root, _MISSING)


def _walk(value: Any, steps: tuple[Any, ...]) -> Any:
    for step in steps:
        if value is _MISSING:
            return _MISSING
        try:
            value = getattr(value, step) if isinstance(step, str) else value[step[0]]
        except Exception:
            return _MISSING
    return value


def _read_path(path: ReadPath, fn: Any, self_obj: Any) -> Any:
    return _walk(_resolve_root(path, fn, self_obj), path.steps)


@dataclass
class Tracked:
    """One tracked scalar: how to read it now, its value at capture, where it was consumed."""

    name: str
    read: Callable[[], Any]
    captured: Any
    filename: str
    lineno: int


class ScalarSnapshot:
    """The tracked scalars of one captured step, and a check of their current values."""

    def __init__(self) -> None:
        self.items: list[Tracked] = []
        self._names: set[str] = set()

    def add(self, item: Tracked) -> None:
        trackable = _is_scalar(item.captured) or isinstance(item.captured, TensorIdentity)
        if item.name not in self._names and trackable:
            self._names.add(item.name)
            self.items.append(item)

    def add_code_reads(self, fn: Any, self_obj: Any = None, prefix: str = "") -> list[Any]:
        """Track scalars read by ``fn``'s code; returns the objects its paths reached (modules)."""
        func = getattr(fn, "__func__", fn)
        code = getattr(func, "__code__", None)
        if code is None:
            return []
        reached = []
        for path in read_paths(code):
            root = _resolve_root(path, func, self_obj)
            if root is _MISSING:
                continue
            for k in range(len(path.steps) + 1):
                obj = _walk(root, path.steps[:k])
                if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
                    reached.append(obj)
            value = _walk(root, path.steps)
            if value is _MISSING or isinstance(value, torch.Tensor):
                continue
            name = prefix + path.name if path.scope == "self" else path.name
            self.add(
                Tracked(
                    name=name,
                    read=functools.partial(_read_path, path, func, self_obj),
                    captured=value,
                    filename=path.filename,
                    lineno=path.lineno,
                )
            )
        return reached

    def add_module_tree(self, module: torch.nn.Module, name: str = "") -> None:
        """Track scalars read by ``forward`` of ``module`` and of every submodule."""
        for sub_name, sub in module.named_modules(prefix=name):
            forward = type(sub).forward
            label = f"{sub_name or type(sub).__name__}."
            self.add_code_reads(forward, self_obj=sub, prefix=label.removeprefix("self."))

    def changed(self) -> Iterator[tuple[Tracked, Any]]:
        """(item, current value) for every tracked scalar whose value differs from capture."""
        for item in self.items:
            current = item.read()
            if not _same(current, item.captured):
                yield item, current


# --- optimizers -----------------------------------------------------------------------------------
_HYPER_SKIP = {"params", "param_names"}


def optimizer_scalars(
    opt: torch.optim.Optimizer, label: str, filename: str, lineno: int
) -> list[Tracked]:
    """Tracked entries for each numeric hyperparameter of each param group of ``opt``."""
    out = []
    for gi, group in enumerate(opt.param_groups):
        for key, value in group.items():
            if key in _HYPER_SKIP or not (isinstance(value, torch.Tensor) or _is_scalar(value)):
                continue
            # ``_group_value`` reads what the graph depends on: a number (or the number a CPU
            # 0-dim tensor such as ``SGD(lr=torch.tensor(0.1))`` holds, read into the graph at
            # capture like a float), or which tensor object the group holds (a device tensor, or
            # one graph_safe_optimizer made live: the graph reads that object).
            out.append(
                Tracked(
                    name=f"{label}.param_groups[{gi}][{key!r}]",
                    read=functools.partial(_group_value, group, key),
                    captured=_group_value(group, key),
                    filename=filename,
                    lineno=lineno,
                )
            )
    return out


# ``LIVE_SCALAR_ATTR`` (set by ``graph_safe_optimizer`` on its learning rates): a 0-dim tensor
# the step reads as live state at every run, never a baked number: its value is not tracked, the
# object is (``TensorIdentity``).


def _is_host_scalar_tensor(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.device.type == "cpu"
        and value.dim() == 0
        and not getattr(value, LIVE_SCALAR_ATTR, False)
    )


def _host_item(t: torch.Tensor) -> TensorScalar:
    # graphguard's own read of a host scalar; it must not be inspected as the user's call.
    with torch._C.DisableTorchFunction():
        return TensorScalar(t.item(), describe_tensor(t))


def _group_value(group: dict[str, Any], key: str) -> Any:
    """What the graph depends on in ``group[key]``: its number, or which tensor it holds."""
    value = group.get(key, _MISSING)
    if _is_host_scalar_tensor(value):
        return _host_item(value)
    return TensorIdentity(value) if isinstance(value, torch.Tensor) else value


class OptimizerWatch:
    """Optimizers whose ``step()`` ran while watching, with their hyperparameters at that time."""

    def __init__(self) -> None:
        self.items: list[Tracked] = []
        self._seen: set[int] = set()
        self._thread = threading.get_ident()

    def hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if threading.get_ident() != self._thread or id(opt) in self._seen:
            return
        self._seen.add(id(opt))
        frame = find_user_frame()
        filename = frame.f_code.co_filename if frame else "<unknown>"
        lineno = frame.f_lineno if frame else 0
        label = f"{type(opt).__name__}"
        self.items.extend(optimizer_scalars(opt, label, filename, lineno))


class _OptimizerWatching:
    """The context manager :func:`watch_optimizers` returns; Ctrl-C-safe on entry and exit."""

    __slots__ = ("_handle", "_held", "watch")

    def __init__(self) -> None:
        self.watch = OptimizerWatch()
        self._handle: Any = None
        self._held = False

    @atomic
    def __enter__(self) -> OptimizerWatch:
        import torch.optim.optimizer as optimizer_module

        register = getattr(optimizer_module, "register_optimizer_step_pre_hook", None)
        if register is None:  # pragma: no cover - very old torch
            return self.watch
        self._held = hold_interrupts()
        try:
            self._handle = register(self.watch.hook)
        except BaseException:
            self._leave()
            raise
        if PENDING:
            signum = take_interrupt(sys._getframe(1))
            if signum is not None:
                self._leave()
                deliver(signum)
        return self.watch

    @atomic
    def __exit__(self, *exc_info: Any) -> None:
        self._leave()
        if PENDING:
            deliver_due_interrupt()

    def _leave(self) -> None:
        handle, self._handle = self._handle, None
        try:
            if handle is not None:
                handle.remove()
        finally:
            held, self._held = self._held, False
            release_interrupts(held)


def watch_optimizers() -> _OptimizerWatching:
    """Record, for the block, every optimizer whose step runs in this thread."""
    return _OptimizerWatching()
