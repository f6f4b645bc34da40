"""Wrappers for the torch APIs a torch-function mode cannot see, installed only while guarded.

Streams, events, ``synchronize``, RNG seeding and state, ``torch.save`` and the capture-status
query are plain Python or C entry points that never reach ``__torch_function__``;
``Tensor.pin_memory`` is wrapped as well, but only while a capture runs in torch's "global" error
mode, so that *another* thread's pinned allocation is seen. ``torch.cuda.Stream``/``Event``
methods are wrapped only in a process that sees a CUDA device (no such object exists otherwise).

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
import operator
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import wrapt

from . import _dist
from ._emulation import optimizer_pre_hook
from ._report import Finding, FixedScope, report
from ._state import (
    GuardState,
    active_global_captures,
    cuda_available,
    current_state,
    register_global_capture,
    unregister_global_capture,
)

__all__ = [
    "acquire",
    "begin_global_capture",
    "end_global_capture",
    "installed_targets",
    "is_installed",
    "release",
]

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
    #: When the wrapper is installed: ``ALWAYS`` (every region), ``WITH_CUDA`` (every region of a
    #: process that sees a CUDA device) or ``GLOBAL_CAPTURE`` (only while a capture in torch's
    #: "global" error mode records; see :func:`begin_global_capture`).
    tier: str = "always"


ALWAYS, WITH_CUDA, GLOBAL_CAPTURE = "always", "with-cuda", "global-capture"
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
        # No torch.cuda stream or event can be made without a CUDA device: on such a machine
        # their methods are not wrapped (writing to a type costs every later attribute read of
        # its instances a slower lookup).
        _Target(cuda.Stream, "synchronize", _sync("Stream.synchronize()"), True, tier=WITH_CUDA),
        _Target(cuda.Stream, "query", _sync("Stream.query()", True), True, tier=WITH_CUDA),
        _Target(cuda.Event, "synchronize", _sync("Event.synchronize()"), True, tier=WITH_CUDA),
        _Target(cuda.Event, "query", _sync("Event.query()", True), True, tier=WITH_CUDA),
        _Target(
            cuda.Event, "elapsed_time", _sync("Event.elapsed_time()", 0.0), True, tier=WITH_CUDA
        ),
        _Target(cuda, "default_stream", _default_stream),
        # The guarded thread's own pin_memory() reaches the torch-function mode; the wrapper is
        # for *other* threads, and only a capture in "global" error mode is broken by them.
        # Written only then: a write to torch.Tensor slows every tensor attribute read after it.
        _Target(torch.Tensor, "pin_memory", _no_check, True, tier=GLOBAL_CAPTURE),
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


def _flag_word(owner: Any) -> Any:
    """The ``tp_flags`` word of an immutable type, as a ctypes view; ``None`` for anything else."""
    if not isinstance(owner, type) or not owner.__flags__ & _IMMUTABLETYPE:
        return None
    if not _can_patch_type(owner):  # pragma: no cover - _targets() leaves such types out
        raise TypeError(f"cannot wrap attributes of the immutable type {owner!r}")
    assert isinstance(_flags_offset, int)
    return ctypes.c_ulong.from_address(id(owner) + _flags_offset)


def _set(owner: Any, name: str, value: Any, flags: Any = None) -> None:
    """``setattr``, lifting the immutable-type flag of ``owner`` for that one write if needed."""
    if flags is None:
        setattr(owner, name, value)
        return
    flags.value &= ~_IMMUTABLETYPE
    try:
        setattr(owner, name, value)
    finally:
        flags.value |= _IMMUTABLETYPE


def _del(owner: Any, name: str, flags: Any = None) -> None:
    if flags is None:
        delattr(owner, name)
        return
    flags.value &= ~_IMMUTABLETYPE
    try:
        delattr(owner, name)
    finally:
        flags.value |= _IMMUTABLETYPE


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


def _compiler_is_compiling() -> bool:
    """Whether torch.compile is compiling a frame in this thread now.

    A function compiled outside any region is compiled again the first time it is called inside
    one (dynamo guards on the torch-function mode stack, which holds graphguard's mode there).
    The compiler's own calls (``preserve_rng_state`` saving and restoring the generators,
    autotuning) are not the user's step: they pass through unreported.
    """
    guards = sys.modules.get("torch._guards")
    context = getattr(guards, "CompileContext", None)
    return context is not None and context.try_get() is not None


def _make_wrapper(target: _Target) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _INSIDE.get() or _compiler_is_compiling():
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


class _Slot:
    """One torch attribute graphguard wraps: where it lives and what to put back.

    Built once per process (the target list, the owner's namespace, the immutable-type flag
    word); ``original`` and ``wrapper`` are rebuilt only when the attribute found at install time
    is no longer the original the wrapper was made for.
    """

    __slots__ = ("flags", "had_own", "handler", "name", "namespace", "original", "owner", "wrapper")

    def __init__(self, target: _Target) -> None:
        self.owner = target.owner
        self.name = target.name
        #: The owner's own attributes: a module's ``__dict__`` or a type's mapping proxy (live).
        self.namespace: Any = vars(target.owner)
        self.flags = _flag_word(target.owner)
        self.handler = _make_wrapper(target)
        self.original: Any = None
        self.wrapper: Any = None
        self.had_own = False

    def install(self) -> None:
        name = self.name
        original = self.namespace.get(name, _MISSING)
        self.had_own = original is not _MISSING
        if not self.had_own:
            original = getattr(self.owner, name)
        if original is not self.original or self.wrapper is None:
            self.original = original
            self.wrapper = wrapt.FunctionWrapper(original, self.handler)
        _set(self.owner, name, self.wrapper, self.flags)

    def uninstall(self) -> None:
        if self.namespace.get(self.name) is not self.wrapper:
            return  # someone patched over us; leave their value in place
        if self.had_own:
            _set(self.owner, self.name, self.original, self.flags)
        else:
            _del(self.owner, self.name, self.flags)


_lock = threading.RLock()
_refcount = 0


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
    _uninstall_global()


def is_installed() -> bool:
    return bool(_installed or _global_installed)


def installed_targets() -> list[tuple[Any, str]]:
    """(owner, attribute name) of every torch attribute graphguard may wrap."""
    return [(t.owner, t.name) for t in (*_target_list(), *_dist_target_list())]


# Everything that does not change between regions (the target list, each owner's namespace and
# flag word, each wrapper) is computed once: entering the first region of a thread then costs a
# few dozen plain attribute writes, which is what keeps an empty region cheap.
_target_cache: list[_Target] = []
_group_cache: list[_Group] = []
#: The groups installed now, in installation order (removed in reverse).
_installed: list[_Group] = []
_hook_handle: Any = None
_MISSING = object()


class _Group:
    """The slots of one owner, installed and removed together.

    When every attribute of the owner still holds the object its wrapper was made for, the
    group is written in one go: one ``dict.update`` of a module's ``__dict__``, or the
    ``setattr`` calls on a type under one lift of its immutable flag. Anything else (the first
    install, an attribute someone replaced, an inherited one) takes the per-attribute path,
    which checks each slot.
    """

    __slots__ = ("fast", "names", "originals", "slots", "tier", "unwrapped", "wrapped")

    def __init__(self, slots: list[_Slot], tier: str = ALWAYS) -> None:
        self.slots = slots
        self.tier = tier
        self.fast = isinstance(slots[0].owner, types.ModuleType)
        self.names = tuple(slot.name for slot in slots)
        #: Filled by the first per-attribute install of a module's group; empty for types.
        self.originals: tuple[Any, ...] = ()
        self.wrapped: dict[str, Any] = {}
        self.unwrapped: dict[str, Any] = {}

    def install(self) -> None:
        namespace = self.slots[0].namespace
        if self.originals and all(
            map(operator.is_, map(namespace.get, self.names), self.originals)
        ):
            if self.fast:
                namespace.update(self.wrapped)
            else:
                self._write(self.wrapped)
            return
        for slot in self.slots:
            slot.install()
        if all(slot.had_own for slot in self.slots):
            self.originals = tuple(slot.original for slot in self.slots)
            self.wrapped = {slot.name: slot.wrapper for slot in self.slots}
            self.unwrapped = {slot.name: slot.original for slot in self.slots}
        else:  # an inherited attribute is removed, not overwritten: per-attribute path only
            self.originals = ()
            self.wrapped = self.unwrapped = {}

    def uninstall(self) -> None:
        namespace = self.slots[0].namespace
        if self.wrapped and all(
            map(operator.is_, map(namespace.get, self.names), self.wrapped.values())
        ):
            if self.fast:
                namespace.update(self.unwrapped)
            else:
                self._write(self.unwrapped)
            return
        for slot in reversed(self.slots):
            slot.uninstall()

    def _write(self, values: dict[str, Any]) -> None:
        """``setattr`` of each value on a type, lifting its immutable flag once for them all."""
        owner, flags = self.slots[0].owner, self.slots[0].flags
        if flags is not None:
            flags.value &= ~_IMMUTABLETYPE
        try:
            for name, value in values.items():
                setattr(owner, name, value)
        finally:
            if flags is not None:
                flags.value |= _IMMUTABLETYPE


def _target_list() -> list[_Target]:
    if not _target_cache:
        _target_cache.extend(_targets())
    return _target_cache


def _groups() -> list[_Group]:
    if not _group_cache:
        _group_cache.extend(_build_groups(_target_list()))
    return _group_cache


def _build_groups(targets: list[_Target]) -> list[_Group]:
    by_owner: dict[tuple[int, str], list[_Slot]] = {}
    for target in targets:
        by_owner.setdefault((id(target.owner), target.tier), []).append(_Slot(target))
    return [_Group(slots, tier) for (_, tier), slots in by_owner.items()]


_dist_target_cache: list[_Target] = []
_dist_group_cache: list[_Group] = []


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


def _region_groups() -> list[_Group]:
    """The groups every region installs: ``ALWAYS``, and ``WITH_CUDA`` where CUDA is seen."""
    tiers = (ALWAYS, WITH_CUDA) if cuda_available() else (ALWAYS,)
    return [group for group in _groups() if group.tier in tiers]


_active_cache: dict[tuple[bool, bool], list[_Group]] = {}


def _active_groups() -> list[_Group]:
    # Collectives are wrapped only in a process with an initialized default group: zero cost
    # otherwise. Both lists are made once (a region asks at every entry).
    dist_on = _dist.initialized()
    key = (cuda_available(), dist_on)
    groups = _active_cache.get(key)
    if groups is None:
        groups = _region_groups()
        if dist_on:
            if not _dist_group_cache:
                _dist_group_cache.extend(_build_groups(_dist_target_list()))
            groups = [*groups, *_dist_group_cache]
        _active_cache[key] = groups
    return groups


# --- the "global" capture tier --------------------------------------------------------------
_global_installed: list[_Group] = []


def begin_global_capture(key: int, label: str | None, region: Any) -> None:
    """A capture in torch's "global" error mode starts recording: from now on another thread's
    capture-breaking call is refused, including calls only such a capture needs wrapped."""
    with _lock:
        if register_global_capture(key, label, region) and not _global_installed:
            for group in _groups():
                if group.tier == GLOBAL_CAPTURE:
                    _global_installed.append(group)
                    group.install()


def end_global_capture(key: int) -> None:
    """The capture registered under ``key`` stopped recording (idempotent)."""
    with _lock:
        if unregister_global_capture(key) and not active_global_captures():
            _uninstall_global()


def _uninstall_global() -> None:
    while _global_installed:
        _global_installed.pop().uninstall()


_dynamo_loaded_at_install = False


def _install() -> None:
    global _hook_handle, _dynamo_loaded_at_install
    global _optimizer_hooks, _register_optimizer_hook, _hook_plan_known
    _dynamo_loaded_at_install = "torch._dynamo" in sys.modules
    if not _hook_plan_known:  # at the first region, not at import: no CUDA query at import
        _optimizer_hooks, _register_optimizer_hook = _optimizer_hook_registrar()
        _hook_plan_known = True
    if _optimizer_hooks is not None:
        _optimizer_hooks[_HOOK_KEY] = optimizer_pre_hook
        _hook_handle = _HOOK_KEY
    elif _register_optimizer_hook is not None:
        _hook_handle = _register_optimizer_hook(optimizer_pre_hook)
    for group in _active_groups():
        _installed.append(group)
        group.install()


def _uninstall() -> None:
    global _hook_handle
    if _hook_handle is _HOOK_KEY:
        assert _optimizer_hooks is not None
        _optimizer_hooks.pop(_HOOK_KEY, None)
        _hook_handle = None
    elif _hook_handle is not None:
        _hook_handle.remove()
        _hook_handle = None
    was_installed = bool(_installed)
    while _installed:
        _installed.pop().uninstall()
    if was_installed:
        _settle_dynamo_rebinding(_dynamo_loaded_at_install)


def _optimizer_hook_registrar() -> Any:
    """How to register ``optimizer_pre_hook`` (GG602 everywhere; host scalars while emulating).

    It goes straight into torch's table of global optimizer pre-hooks under a key that torch's
    own handles (counting up from 0) never use, which costs a dict write instead of a handle;
    where that table is not there, through ``register_optimizer_step_pre_hook``.
    """
    import torch.optim.optimizer as optimizer_module

    hooks = getattr(optimizer_module, "_global_optimizer_pre_hooks", None)
    register = getattr(optimizer_module, "register_optimizer_step_pre_hook", None)
    if isinstance(hooks, dict) and register is not None:
        return hooks, None
    return None, register


_optimizer_hooks: Any = None
_register_optimizer_hook: Any = None
_hook_plan_known = False
#: The key of ``optimizer_pre_hook`` in torch's table: negative, unlike torch's handle ids.
_HOOK_KEY = -0x6767


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
