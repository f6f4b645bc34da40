"""Wrappers for the torch APIs a torch-function mode cannot see, installed only while guarded.

Streams, events, ``torch.cuda.synchronize``, RNG seeding and state are plain Python or C entry
points that never reach ``__torch_function__``; ``Tensor.pin_memory`` is wrapped as well so that
*another* thread's pinned allocation is seen while a capture runs in torch's "global" error mode.

Life cycle: wrappers are reference-counted under a lock. The first guard to start installs them,
the last one to end removes them, so while no guard is active anywhere every torch attribute is
the original object. Removal restores exactly what was there: ``setattr`` of the original where
the owner defined the attribute itself, ``delattr`` where it was inherited (``Tensor.pin_memory``
lives on ``torch._C.TensorBase``), and only if the current value is still our wrapper.

Each wrapper is gated per context: a thread with no guard and no concurrent global capture pays
one ``ContextVar`` read and passes straight through.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import wrapt

from ._diagnostic import make_diagnostic
from ._errors import error_class_for
from ._intercept import Hit, _phase_words
from ._report import _notify, log_hazard, report
from ._rules import RULES
from ._state import GuardState, active_global_captures, current_state

__all__ = ["acquire", "installed_targets", "is_installed", "release"]

# Set while a wrapper runs its original, so torch's own nested calls (torch.manual_seed calling
# torch.cuda.manual_seed_all) are not reported a second time.
_INSIDE: ContextVar[bool] = ContextVar("graphguard_inside_patch", default=False)


@dataclass(frozen=True)
class _Target:
    owner: Any
    name: str
    check: Callable[[GuardState, Any, tuple[Any, ...], dict[str, Any]], Hit | None]
    #: Whether a call from another thread breaks a capture running in "global" error mode.
    breaks_global_capture: bool = False


def _sync_check(api: str, emulated: Any = None) -> Callable[..., Hit | None]:
    def check(
        state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Hit:
        return Hit(
            "GG107",
            api,
            f"{api} waits for or queries device work {_phase_words(state)}",
            emulate=lambda: emulated,
        )

    return check


def _rng_check(code: str, api: str) -> Callable[..., Hit | None]:
    def check(
        state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Hit:
        what = "reseeds the generator" if code == "GG501" else "reads or sets generator state"
        return Hit(code, api, f"{api} {what} {_phase_words(state)}")

    return check


def _default_stream_check(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    # Under a real capture the op-level check sees work issued on the default stream precisely;
    # in audit mode (where no capture stream exists) asking for the default stream is the tell.
    if state.effective_phase == "capture":
        return None
    return Hit(
        "GG301",
        "torch.cuda.default_stream()",
        f"torch.cuda.default_stream() requested {_phase_words(state)}: work issued on it "
        f"during a capture is not recorded",
    )


def _pin_check(
    state: GuardState, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    return None  # the torch-function mode checks pin_memory() in guarded threads


def _targets() -> list[_Target]:
    cuda = torch.cuda
    out = [
        _Target(cuda, "synchronize", _sync_check("torch.cuda.synchronize()"), True),
        _Target(cuda.Stream, "synchronize", _sync_check("Stream.synchronize()"), True),
        _Target(cuda.Stream, "query", _sync_check("Stream.query()", True), True),
        _Target(cuda.Event, "synchronize", _sync_check("Event.synchronize()"), True),
        _Target(cuda.Event, "query", _sync_check("Event.query()", True), True),
        _Target(cuda.Event, "elapsed_time", _sync_check("Event.elapsed_time()", 0.0), True),
        _Target(cuda, "default_stream", _default_stream_check),
        _Target(torch.Tensor, "pin_memory", _pin_check, True),
    ]
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
                out.append(_Target(module, name, _rng_check(code, f"{prefix}.{name}()")))
    return out


def _cross_thread(target: _Target, instance: Any, args: tuple[Any, ...]) -> None:
    """Refuse a capture-breaking call made while another thread captures in "global" mode."""
    me = threading.current_thread().name
    for thread_name, label, region in active_global_captures():
        if thread_name == me:
            continue
        tensor = instance if isinstance(instance, torch.Tensor) else None
        if target.name == "pin_memory" and (tensor is None or tensor.is_cuda):
            continue
        rule = RULES["GG201" if target.name == "pin_memory" else "GG107"]
        api = f"{getattr(target.owner, '__name__', target.owner)}.{target.name}()"
        diagnostic = make_diagnostic(
            rule,
            api,
            f"{api} in thread {me!r} while thread {thread_name!r} captures a CUDA graph in "
            f"'global' error mode: this call would invalidate that capture",
            phase="capture",
            label=label,
            tensor=tensor,
            details=(("capturing thread", thread_name), ("calling thread", me)),
        )
        if region is not None:
            region.note_foreign_hazard(diagnostic)
        _notify(diagnostic)
        log_hazard(diagnostic, action="raised", level="error", reason="cross-thread")
        raise error_class_for(rule.kind)(diagnostic)


def _make_wrapper(target: _Target) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _INSIDE.get():
            return wrapped(*args, **kwargs)
        state = current_state()
        if target.breaks_global_capture and active_global_captures():
            _cross_thread(target, instance, args)
        if state is None:
            return wrapped(*args, **kwargs)
        hit = target.check(state, instance, args, kwargs)
        if hit is not None:
            report(state, hit.code, hit.api, hit.message, tensor=hit.tensor)
            if state.emulate and hit.emulate is not None and not torch.cuda.is_available():
                return hit.emulate()
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


def is_installed() -> bool:
    return bool(_installed)


def installed_targets() -> list[tuple[Any, str]]:
    """(owner, attribute name) of every torch attribute graphguard may wrap."""
    return [(t.owner, t.name) for t in _targets()]


def _settle_torch_lazy_wrappers() -> None:
    """Import ``torch._dynamo`` before wrapping anything.

    Importing it rebinds ``torch.manual_seed`` to a dynamo-disabled wrapper. If that first import
    happened while our wrapper was installed (torch imports it lazily, for example on the first
    call of some modules), torch would wrap *our* wrapper and we could not restore the attribute.
    """
    with contextlib.suppress(Exception):  # builds without dynamo have nothing to settle
        import torch._dynamo  # noqa: F401


# Wrappers are built once per original object and reused by later installs: building ~30
# wrapt wrappers on every region entry dominated the cost of a short guarded region.
_wrapper_cache: dict[tuple[int, str], tuple[Any, Any]] = {}
_target_cache: list[_Target] = []


def _optimizer_pre_hook(opt: Any, args: Any, kwargs: Any) -> None:
    """While emulating, a non-capturable optimizer's scalar tensors are host tensors.

    In a real GPU run torch keeps ``lr`` tensors and ``state["step"]`` of an optimizer with
    ``capturable=False`` on the CPU and reads them with ``.item()``: no sync. Without CUDA every
    tensor is on the CPU, so mark these as genuine host tensors before the step reads them.
    """
    state = current_state()
    if state is None or not state.emulate:
        return
    from ._intercept import _mark_host

    for group in opt.param_groups:
        if group.get("capturable", False):
            continue
        values = [v for v in group.values() if isinstance(v, torch.Tensor)]
        for param in group["params"]:
            values.extend(
                v for v in opt.state.get(param, {}).values() if isinstance(v, torch.Tensor)
            )
        for value in values:
            if value.dim() == 0:
                _mark_host(state, value)


_hook_handle: Any = None


def _install() -> None:
    global _hook_handle
    import torch.optim.optimizer as optimizer_module

    register = getattr(optimizer_module, "register_optimizer_step_pre_hook", None)
    if register is not None:
        _hook_handle = register(_optimizer_pre_hook)
    if not _target_cache:
        _settle_torch_lazy_wrappers()
        _target_cache.extend(_targets())
    for target in _target_cache:
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
        setattr(target.owner, target.name, wrapper)
        _installed.append(_Installed(target, original, had_own, wrapper))


def _uninstall() -> None:
    global _hook_handle
    if _hook_handle is not None:
        _hook_handle.remove()
        _hook_handle = None
    while _installed:
        item = _installed.pop()
        owner, name = item.target.owner, item.target.name
        if vars(owner).get(name) is not item.wrapper:
            continue  # someone patched over us; leave their value in place
        if item.had_own:
            setattr(owner, name, item.original)
        else:
            delattr(owner, name)
