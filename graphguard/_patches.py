"""Wrappers for the torch APIs a torch-function mode cannot see, installed only while guarded.

Streams, events, ``synchronize``, RNG seeding and state, ``torch.save`` and the capture-status
query are plain Python or C entry points that never reach ``__torch_function__``;
``Tensor.pin_memory`` is wrapped as well so that *another* thread's pinned allocation is seen
while a capture runs in torch's "global" error mode.

Life cycle: wrappers are reference-counted under a lock. The first guard to start installs them,
the last one to end removes them, so while no guard is active anywhere every torch attribute is
the original object. Removal restores exactly what was there: ``setattr`` of the original where
the owner defined the attribute itself, ``delattr`` where it was inherited (``Tensor.pin_memory``
lives on ``torch._C.TensorBase``), and only if the current value is still our wrapper.
Installation and removal are each one uninterruptible step for Python code: asynchronous
exceptions (Ctrl-C) are deferred until the table is consistent again.

Each wrapper is gated per context: a thread with no guard and no concurrent global capture pays
one ``ContextVar`` read and passes straight through.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import wrapt

from . import _dist
from ._emulation import optimizer_pre_hook
from ._report import Finding, FixedScope, report
from ._state import GuardState, active_global_captures, current_state

__all__ = ["acquire", "installed_targets", "is_installed", "release"]

# Set while a wrapper runs its original, so torch's own nested calls (torch.manual_seed calling
# torch.cuda.manual_seed_all) are not reported a second time.
_INSIDE: ContextVar[bool] = ContextVar("graphguard_inside_patch", default=False)

#: A check: ``(state, instance, args, kwargs) -> Finding | None``.
Check = Callable[[GuardState, Any, tuple[Any, ...], dict[str, Any]], "Finding | None"]


@dataclass(frozen=True)
class _Target:
    owner: Any
    name: str
    check: Check
    #: Whether a call from another thread breaks a capture running in "global" error mode.
    breaks_global_capture: bool = False
    #: Instead of checking, answer the call: ``(state) -> value``, or ``_PASS`` to run it.
    answer: Callable[[GuardState], Any] | None = None
    #: Instead of checking, make the call: ``(state, original, instance, args, kwargs) ->
    #: value`` (torch.distributed collectives: check, agree between ranks, then run).
    call: Callable[..., Any] | None = None


_PASS = object()


def _sync(api: str, emulated: Any = None) -> Check:
    def check(
        state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Finding:
        return Finding("GG107", api, emulate=lambda: emulated)

    return check


def _rng(code: str, api: str) -> Check:
    def check(
        state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Finding:
        return Finding(code, api)

    return check


def _default_stream(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Finding | None:
    # Under a real capture the op-level check sees work issued on the default stream precisely;
    # in audit mode (where no capture stream exists) asking for the default stream is the tell.
    if state.phase == "capture":
        return None
    return Finding("GG301", "torch.cuda.default_stream()", "stream-request")


def _no_check(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Finding | None:
    return None  # the torch-function mode checks pin_memory() in guarded threads


def _save(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Finding | None:
    from ._emulation import is_device

    obj = args[0] if args else kwargs.get("obj")
    for t in _tensors_in(obj, depth=3):
        if is_device(state, t):
            return Finding("GG103", "torch.save(device_tensor)", "save", tensor=t)
    return None


def _tensors_in(obj: Any, depth: int) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 0 and isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value, depth - 1)
    elif depth > 0 and isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_in(value, depth - 1)


def _capturing_answer(state: GuardState) -> Any:
    """Audit emulates capture: "am I being captured?" gets the answer a real capture gives."""
    if state.phase == "audit" and state.stands_for_capture:
        return True
    return _PASS


def _skip_when_emulating(state: GuardState) -> Any:
    return None if state.emulate else _PASS


def _targets() -> list[_Target]:
    cuda = torch.cuda
    out = [
        _Target(cuda, "synchronize", _sync("torch.cuda.synchronize()"), True),
        _Target(cuda.Stream, "synchronize", _sync("Stream.synchronize()"), True),
        _Target(cuda.Stream, "query", _sync("Stream.query()", True), True),
        _Target(cuda.Event, "synchronize", _sync("Event.synchronize()"), True),
        _Target(cuda.Event, "query", _sync("Event.query()", True), True),
        _Target(cuda.Event, "elapsed_time", _sync("Event.elapsed_time()", 0.0), True),
        _Target(cuda, "default_stream", _default_stream),
        _Target(torch.Tensor, "pin_memory", _no_check, True),
        _Target(torch, "save", _save),
    ]
    # Device-generic APIs (torch >= 2.4): what code written for any accelerator calls.
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        out.append(
            _Target(accelerator, "synchronize", _sync("torch.accelerator.synchronize()"), True)
        )
    for cls_name in ("Event", "Stream"):
        cls = getattr(torch, cls_name, None)
        if cls is None or not _can_patch_type(cls):
            continue
        for name, emulated in (("synchronize", None), ("query", True), ("elapsed_time", 0.0)):
            if name in vars(cls):
                api = f"torch.{cls_name}.{name}()"
                out.append(_Target(cls, name, _sync(api, emulated), True))
        # Recording and waiting are legal under capture; without CUDA they cannot run (the CPU
        # backend has no events), so audit skips them as the device would have done them.
        for name in ("record", "wait", "wait_event"):
            if name in vars(cls):
                out.append(_Target(cls, name, _no_check, answer=_skip_when_emulating))
    # The capture-status query, in each module that binds it.
    for module in (cuda, sys.modules.get("torch.cuda.graphs")):
        if module is not None and "is_current_stream_capturing" in vars(module):
            out.append(
                _Target(module, "is_current_stream_capturing", _no_check, answer=_capturing_answer)
            )
    rng_modules = [torch, torch.random, cuda, getattr(cuda, "random", None)]
    seen: set[tuple[int, str]] = set()
    for module in rng_modules:
        if module is None:
            continue
        for name, code in (
            ("manual_seed", "GG501"),
            ("seed", "GG501"),
            ("manual_seed_all", "GG501"),
            ("seed_all", "GG501"),
            ("get_rng_state", "GG502"),
            ("set_rng_state", "GG502"),
            ("get_rng_state_all", "GG502"),
            ("set_rng_state_all", "GG502"),
        ):
            if name in vars(module) and (id(module), name) not in seen:
                seen.add((id(module), name))
                prefix = (
                    "torch.cuda" if module in (cuda, getattr(cuda, "random", None)) else "torch"
                )
                out.append(_Target(module, name, _rng(code, f"{prefix}.{name}()")))
    return out


# --- immutable extension types ----------------------------------------------------------------
# ``torch.Event`` and ``torch.Stream`` are immutable extension types: ``setattr`` on them is
# refused. Their methods are wrapped by lifting ``Py_TPFLAGS_IMMUTABLETYPE`` for the duration
# of one ``setattr``/``delattr`` (CPython only). The flag word's offset in the type object is
# found, not assumed, and verified on two types before any write; where it cannot be verified
# these methods are not wrapped (docs/limits.md).
_IMMUTABLETYPE = 1 << 8


def _find_flags_offset() -> int | None:
    if sys.implementation.name != "cpython":
        return None

    class Probe:
        pass

    word = ctypes.sizeof(ctypes.c_ulong)
    candidates = [
        off
        for off in range(0, 64 * word, word)
        if all(
            ctypes.c_ulong.from_address(id(t) + off).value == t.__flags__
            for t in (Probe, int, type, torch.Tensor)
        )
    ]
    return candidates[0] if len(candidates) == 1 else None


_flags_offset: Any = ...


def _can_patch_type(cls: type) -> bool:
    global _flags_offset
    if not cls.__flags__ & _IMMUTABLETYPE:
        return True
    if _flags_offset is ...:
        _flags_offset = _find_flags_offset()
    return _flags_offset is not None and (
        ctypes.c_ulong.from_address(id(cls) + _flags_offset).value == cls.__flags__
    )


@contextlib.contextmanager
def _mutable(owner: Any) -> Iterator[None]:
    if not isinstance(owner, type) or not owner.__flags__ & _IMMUTABLETYPE:
        yield
        return
    assert isinstance(_flags_offset, int)
    flags = ctypes.c_ulong.from_address(id(owner) + _flags_offset)
    flags.value &= ~_IMMUTABLETYPE
    try:
        yield
    finally:
        flags.value |= _IMMUTABLETYPE


def _set(owner: Any, name: str, value: Any) -> None:
    with _mutable(owner):
        setattr(owner, name, value)


def _del(owner: Any, name: str) -> None:
    with _mutable(owner):
        delattr(owner, name)


# --- wrappers ---------------------------------------------------------------------------------
def _cross_thread(target: _Target, instance: Any) -> None:
    """Refuse a capture-breaking call made while another thread captures in "global" mode."""
    me = threading.current_thread().name
    for thread_name, label, region in active_global_captures():
        if thread_name == me:
            continue
        tensor = instance if isinstance(instance, torch.Tensor) else None
        if target.name == "pin_memory" and (tensor is None or tensor.is_cuda):
            continue
        api = f"{getattr(target.owner, '__name__', target.owner)}.{target.name}()"
        finding = Finding(
            "GG201" if target.name == "pin_memory" else "GG107",
            api,
            "cross-thread",
            tensor=tensor,
            facts={"thread": me, "capturing_thread": thread_name},
            details=(("capturing thread", thread_name), ("calling thread", me)),
        )
        scope = FixedScope(
            on_hazard="raise",
            label=label,
            phase="capture",
            findings=region.hazards if region is not None else [],
        )
        report(finding, scope, can_continue=False)


def _make_wrapper(target: _Target) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _INSIDE.get():
            return wrapped(*args, **kwargs)
        state = current_state()
        if target.breaks_global_capture and active_global_captures():
            _cross_thread(target, instance)
        if state is None:
            return wrapped(*args, **kwargs)
        if target.call is not None:
            token = _INSIDE.set(True)
            try:
                return target.call(state, wrapped, instance, args, kwargs)
            finally:
                _INSIDE.reset(token)
        if target.answer is not None:
            value = target.answer(state)
            if value is not _PASS:
                return value
        finding = target.check(state, instance, args, kwargs)
        if finding is not None:
            report(finding, state)
            if state.emulate and finding.emulate is not None:
                return finding.emulate()
        token = _INSIDE.set(True)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _INSIDE.reset(token)

    return wrapper


@dataclass
class _Installed:
    target: _Target
    original: Any
    had_own: bool
    wrapper: Any


_lock = threading.RLock()
_refcount = 0
_installed: list[_Installed] = []


def acquire() -> None:
    """Install the wrappers if this is the first active guard in the process."""
    global _refcount
    with _lock:
        if _refcount == 0:
            _install()
        _refcount += 1


def release() -> None:
    """Remove the wrappers if this was the last active guard in the process."""
    global _refcount
    with _lock:
        if _refcount <= 0:  # pragma: no cover - an unbalanced release is a bug in graphguard
            raise RuntimeError("graphguard patches released more often than acquired")
        _refcount -= 1
        if _refcount == 0:
            _uninstall()


def reset_after_fork() -> None:
    """In a forked child: no guard of the parent is active here, so nothing stays installed."""
    global _refcount, _lock
    _lock = threading.RLock()
    _refcount = 0
    _uninstall()


def is_installed() -> bool:
    return bool(_installed)


def installed_targets() -> list[tuple[Any, str]]:
    """(owner, attribute name) of every torch attribute graphguard may wrap."""
    return [(t.owner, t.name) for t in (*_target_list(), *_dist_target_list())]


# Wrappers are built once per original object and reused by later installs: building ~30
# wrapt wrappers on every region entry dominated the cost of a short guarded region.
_wrapper_cache: dict[tuple[int, str], tuple[Any, Any]] = {}
_target_cache: list[_Target] = []
_hook_handle: Any = None


def _target_list() -> list[_Target]:
    if not _target_cache:
        _target_cache.extend(_targets())
    return _target_cache


_dist_target_cache: list[_Target] = []


def _dist_target_list() -> list[_Target]:
    """torch.distributed's collectives and ``Work`` waits (see ``_dist``)."""
    if not _dist_target_cache:
        _dist_target_cache.extend(
            _Target(owner, name, _no_check, call=call)
            for owner, name, call in _dist.collective_calls()
        )
        _dist_target_cache.extend(
            _Target(owner, name, check) for owner, name, check in _dist.work_checks()
        )
    return _dist_target_cache


def _active_targets() -> list[_Target]:
    # Wrapped only in a process with an initialized default group: zero cost otherwise.
    if _dist.initialized():
        return [*_target_list(), *_dist_target_list()]
    return _target_list()


_dynamo_loaded_at_install = False


def _install() -> None:
    global _hook_handle, _dynamo_loaded_at_install
    _dynamo_loaded_at_install = "torch._dynamo" in sys.modules
    import torch.optim.optimizer as optimizer_module

    register = getattr(optimizer_module, "register_optimizer_step_pre_hook", None)
    if register is not None:
        _hook_handle = register(optimizer_pre_hook)
    for target in _active_targets():
        owner_dict = vars(target.owner)
        had_own = target.name in owner_dict
        original = owner_dict[target.name] if had_own else getattr(target.owner, target.name)
        key = (id(target.owner), target.name)
        cached = _wrapper_cache.get(key)
        if cached is not None and cached[0] is original:
            wrapper = cached[1]
        else:
            wrapper = wrapt.FunctionWrapper(original, _make_wrapper(target))
            _wrapper_cache[key] = (original, wrapper)
        _set(target.owner, target.name, wrapper)
        _installed.append(_Installed(target, original, had_own, wrapper))


def _uninstall() -> None:
    global _hook_handle
    if _hook_handle is not None:
        _hook_handle.remove()
        _hook_handle = None
    was_installed = bool(_installed)
    while _installed:
        item = _installed.pop()
        owner, name = item.target.owner, item.target.name
        if vars(owner).get(name) is not item.wrapper:
            continue  # someone patched over us; leave their value in place
        if item.had_own:
            _set(owner, name, item.original)
        else:
            _del(owner, name)
    if was_installed:
        _settle_dynamo_rebinding(_dynamo_loaded_at_install)


def _settle_dynamo_rebinding(dynamo_was_loaded: bool) -> None:
    """Redo the rebinding ``import torch._dynamo`` would have done, had it run outside a region.

    The first import of ``torch._dynamo`` rebinds ``torch.manual_seed`` to a dynamo-disabled
    wrapper, but only while ``torch.manual_seed is torch.random.manual_seed``
    (torch/_dynamo/__init__.py). Inside a region both names hold our (distinct) wrappers, so an
    import there skips it. Importing ``torch._dynamo`` up front costs seconds; instead, once the
    originals are back, the same rebinding is applied here, exactly as torch writes it.
    """
    if dynamo_was_loaded or "torch._dynamo" not in sys.modules:
        return
    if torch.manual_seed is not torch.random.manual_seed:
        return
    disable = getattr(torch, "_disable_dynamo", None)
    if disable is None:  # pragma: no cover - older torch
        return
    torch.manual_seed = disable(torch.manual_seed)
    with contextlib.suppress(Exception):
        builtins = importlib.import_module("torch.jit._builtins")
        builtins._register_builtin(torch.manual_seed, "aten::manual_seed")
