"""The torch-function interceptor: sees every tensor-level call of a guarded thread first.

``HazardMode`` is a ``TorchFunctionMode``: torch hands it every ``torch.*`` function, ``Tensor``
method, operator and factory called in the thread that entered it, *before* anything reaches
CUDA. A table maps the callables that can be hazards to small checkers; everything else goes
straight through. Torch function modes are thread-local, so a thread without a guard never pays
for it. APIs the mode cannot see (streams, events, ``synchronize``, RNG seeding) are wrapped in
``_patches``.

Inside ``__torch_function__`` the mode is switched off, so the work a torch function does
internally (``print`` formatting a tensor, an optimizer's arithmetic) is not re-inspected: the
user's own call is what gets reported, at the user's own line.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from ._report import report
from ._state import GuardState, current_state

__all__ = ["METADATA_CALLS", "HazardMode", "Hit", "is_device", "register_check"]


class Hit(NamedTuple):
    """A checker's verdict: which rule, which API, what happened, about which tensor."""

    code: str
    api: str
    message: str
    tensor: Any = None
    #: On a machine without CUDA, what to return instead of running a call that cannot run here.
    emulate: Callable[[], Any] | None = None


Checker = Callable[[GuardState, tuple[Any, ...], dict[str, Any]], "Hit | None"]
_CHECKS: dict[Any, Checker] = {}


def register_check(*funcs: Any) -> Callable[[Checker], Checker]:
    def deco(check: Checker) -> Checker:
        for func in funcs:
            if func is not None:
                _CHECKS[func] = check
        return check

    return deco


def _attr(owner: Any, name: str) -> Any:
    return getattr(owner, name, None)


# --- device-ness -----------------------------------------------------------------------------
def is_device(state: GuardState, t: Any) -> bool:
    """Whether ``t`` is (or, when emulating on a CPU machine, stands for) a device tensor."""
    if not isinstance(t, torch.Tensor):
        return False
    if t.is_cuda:
        return True
    if not state.emulate or t.device.type != "cpu":
        return False
    ref = state.host_ids.get(id(t))
    return ref is None or ref() is not t


def _is_host(state: GuardState, t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not is_device(state, t)


def _mark_host(state: GuardState, t: Any) -> None:
    key = id(t)
    host_ids = state.host_ids
    host_ids[key] = weakref.ref(t, functools.partial(_forget, host_ids, key))


def _forget(host_ids: dict[int, Any], key: int, _ref: Any) -> None:
    host_ids.pop(key, None)


def _describe(t: Any) -> str:
    return f"a {t.device.type} tensor of shape {tuple(t.shape)} and dtype {t.dtype}"


def _phase_words(state: GuardState) -> str:
    phase = state.effective_phase
    if phase == "capture":
        return "during CUDA-graph capture"
    if state.emulate:
        return (
            "in the guarded region (audit on a machine without CUDA: CPU tensors stand for "
            "device tensors)"
        )
    return "in the guarded region (audit mode)"


def _target_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The device a ``Tensor.to``/``copy`` call moves to, or ``None`` for a dtype-only call."""
    dev = kwargs.get("device")
    if dev is None:
        for a in args:
            if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
                dev = a
                break
            if isinstance(a, torch.Tensor):
                dev = a.device
                break
    return dev


def _device_type(dev: Any) -> str:
    if isinstance(dev, int):
        return "cuda"
    return torch.device(dev).type


# --- host-sync: scalar reads, truth values, host copies, printing -----------------------------
def _scalar_read(api: str, code: str) -> Checker:
    def check(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
        t = args[0] if args else None
        if not is_device(state, t):
            return None
        return Hit(code, api, f"{api} on {_describe(t)} {_phase_words(state)}", t)

    return check


T = torch.Tensor
for _api, _code, _func in (
    ("Tensor.item()", "GG101", _attr(T, "item")),
    ("int(tensor)", "GG101", _attr(T, "__int__")),
    ("float(tensor)", "GG101", _attr(T, "__float__")),
    ("complex(tensor)", "GG101", _attr(T, "__complex__")),
    ("operator.index(tensor)", "GG101", _attr(T, "__index__")),
    ("bool(tensor)", "GG102", _attr(T, "__bool__")),
    ("Tensor.tolist()", "GG103", _attr(T, "tolist")),
    ("Tensor.numpy()", "GG103", _attr(T, "numpy")),
    ("numpy.asarray(tensor)", "GG103", _attr(T, "__array__")),
    ("Tensor.cpu()", "GG103", _attr(T, "cpu")),
    ("repr(tensor)", "GG104", _attr(T, "__repr__")),
    ("format(tensor)", "GG104", _attr(T, "__format__")),
):
    register_check(_func)(_scalar_read(_api, _code))


@register_check(torch.is_nonzero, _attr(T, "is_nonzero"))
def _check_is_nonzero(
    state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    t = args[0] if args else None
    if not is_device(state, t):
        return None
    return Hit(
        "GG106", "torch.is_nonzero", f"torch.is_nonzero on {_describe(t)} {_phase_words(state)}", t
    )


@register_check(torch.equal, torch.allclose, _attr(T, "equal"), _attr(T, "allclose"))
def _check_compare(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    for t in (*args[:2], kwargs.get("other")):
        if is_device(state, t):
            return Hit(
                "GG106",
                "torch.equal/allclose",
                f"a tensor comparison that returns a Python bool, on {_describe(t)} "
                f"{_phase_words(state)}",
                t,
            )
    return None


# --- host-sync: data-dependent output shapes --------------------------------------------------
def _data_dependent(api: str) -> Checker:
    def check(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
        t = args[0] if args else kwargs.get("input")
        if not is_device(state, t):
            return None
        return Hit(
            "GG105",
            api,
            f"{api} on {_describe(t)} sizes its output from device data {_phase_words(state)}",
            t,
        )

    return check


for _api, _funcs in (
    ("nonzero", (torch.nonzero, _attr(T, "nonzero"))),
    ("argwhere", (torch.argwhere, _attr(T, "argwhere"))),
    ("masked_select", (torch.masked_select, _attr(T, "masked_select"))),
    ("unique", (torch.unique, _attr(T, "unique"), _attr(torch, "_unique2"))),
    ("unique_consecutive", (torch.unique_consecutive, _attr(T, "unique_consecutive"))),
    ("bincount", (torch.bincount, _attr(T, "bincount"))),
):
    register_check(*_funcs)(_data_dependent(_api))


@register_check(torch.repeat_interleave, _attr(T, "repeat_interleave"))
def _check_repeat_interleave(
    state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    if kwargs.get("output_size") is not None or (len(args) >= 4 and args[3] is not None):
        return None
    # repeat_interleave(repeats) or (input, repeats, ...): the repeats tensor sizes the output.
    repeats = kwargs.get("repeats", args[1] if len(args) >= 2 else (args[0] if args else None))
    if not is_device(state, repeats):
        return None
    return Hit(
        "GG105",
        "repeat_interleave",
        f"repeat_interleave with a repeats tensor and no output_size sizes its output from "
        f"device data {_phase_words(state)}",
        repeats,
    )


@register_check(torch.where)
def _check_where(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    if len(args) != 1 or kwargs:
        return None  # torch.where(cond, a, b) is static-shaped and fine
    if not is_device(state, args[0]):
        return None
    return Hit(
        "GG105",
        "torch.where(condition)",
        f"one-argument torch.where (nonzero) on {_describe(args[0])} {_phase_words(state)}",
        args[0],
    )


def _index_hit(state: GuardState, t: Any, index: Any, api: str) -> Hit | None:
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.dtype is torch.bool:
                return Hit(
                    "GG105",
                    api,
                    f"boolean-mask indexing of {_describe(t)} sizes its result from device "
                    f"data {_phase_words(state)}",
                    t,
                )
            if _is_host(state, item) and item.dim() > 0:
                return Hit(
                    "GG401",
                    api,
                    f"indexing {_describe(t)} with a host (CPU) index tensor copies it from "
                    f"pageable memory {_phase_words(state)}",
                    t,
                )
        elif isinstance(item, list):
            return Hit(
                "GG401",
                api,
                f"indexing {_describe(t)} with a Python list builds an index tensor from host "
                f"data and copies it to the device {_phase_words(state)}",
                t,
            )
    return None


@register_check(_attr(T, "__getitem__"))
def _check_getitem(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    if len(args) < 2 or not is_device(state, args[0]):
        return None
    return _index_hit(state, args[0], args[1], "Tensor.__getitem__")


@register_check(_attr(T, "__setitem__"))
def _check_setitem(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    if len(args) < 3 or not is_device(state, args[0]):
        return None
    hit = _index_hit(state, args[0], args[1], "Tensor.__setitem__")
    if hit is not None:
        return hit
    value = args[2]
    if _is_host(state, value) and value.dim() > 0:
        return Hit(
            "GG401",
            "Tensor.__setitem__",
            f"assigning a host tensor into {_describe(args[0])} copies it from pageable memory "
            f"{_phase_words(state)}",
            args[0],
        )
    return None


@register_check(torch.index_put, torch.index_put_, _attr(T, "index_put"), _attr(T, "index_put_"))
def _check_index_put(
    state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    if len(args) < 2 or not is_device(state, args[0]):
        return None
    return _index_hit(state, args[0], tuple(i for i in args[1] if i is not None), "index_put")


# --- copies between host and device -----------------------------------------------------------
def _h2d_hit(state: GuardState, src: Any, api: str, non_blocking: bool) -> Hit:
    if src.is_pinned() and non_blocking:
        return Hit(
            "GG402",
            api,
            f"a non-blocking copy from pinned host memory ({_describe(src)}) is recorded and "
            f"re-read at every replay {_phase_words(state)}",
            src,
        )
    return Hit(
        "GG401",
        api,
        f"a host-to-device copy from pageable memory ({_describe(src)}) {_phase_words(state)}",
        src,
        emulate=None,
    )


@register_check(_attr(T, "to"))
def _check_to(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    t = args[0] if args else None
    if not isinstance(t, torch.Tensor):
        return None
    dev = _target_device(args[1:], kwargs)
    if dev is None:
        return None
    non_blocking = bool(kwargs.get("non_blocking", False)) or any(
        a is True for a in args[1:] if isinstance(a, bool)
    )
    target = _device_type(dev)
    if state.emulate and target == "cpu":
        # Emulating on CPU: only a literal "cpu" string is a genuine host target; a
        # torch.device (usually ``x.device``) stands for the device the real run uses.
        target = "cpu" if isinstance(dev, str) else "cuda"
    if is_device(state, t) and target == "cpu":
        if non_blocking:
            return Hit(
                "GG202",
                "Tensor.to('cpu', non_blocking=True)",
                f"a non-blocking copy of {_describe(t)} to the host allocates a pinned result "
                f"{_phase_words(state)}",
                t,
            )
        return Hit(
            "GG103",
            "Tensor.to('cpu')",
            f"a blocking copy of {_describe(t)} to the host {_phase_words(state)}",
            t,
        )
    if _is_host(state, t) and target == "cuda":
        hit = _h2d_hit(state, t, "Tensor.to('cuda')", non_blocking)
        # The emulated result is a fresh (unmarked) tensor: it stands for the device copy.
        return hit._replace(emulate=lambda: t.clone())
    return None


@register_check(_attr(T, "cuda"))
def _check_cuda(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    t = args[0] if args else None
    if not isinstance(t, torch.Tensor) or not _is_host(state, t):
        return None
    non_blocking = bool(kwargs.get("non_blocking", False))
    return _h2d_hit(state, t, "Tensor.cuda()", non_blocking)._replace(emulate=lambda: t.clone())


@register_check(_attr(T, "copy_"))
def _check_copy(state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hit | None:
    if len(args) < 2:
        return None
    dst, src = args[0], args[1]
    non_blocking = bool(kwargs.get("non_blocking", args[2] if len(args) > 2 else False))
    if is_device(state, dst) and _is_host(state, src):
        return _h2d_hit(state, src, "Tensor.copy_(host_tensor)", non_blocking)
    if _is_host(state, dst) and is_device(state, src) and not non_blocking:
        return Hit(
            "GG103",
            "host_tensor.copy_(device_tensor)",
            f"a blocking copy of {_describe(src)} into a host tensor {_phase_words(state)}",
            src,
        )
    return None


@register_check(torch.tensor, torch.as_tensor, _attr(torch, "asarray"))
def _check_from_data(
    state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
    if isinstance(data, torch.Tensor) and is_device(state, data):
        return None
    dev = kwargs.get("device")
    if dev is None:
        if state.emulate or torch.get_default_device().type != "cuda":
            return None
        dev = "cuda"
    if state.emulate:
        target = "cpu" if isinstance(dev, str) and torch.device(dev).type == "cpu" else "cuda"
    else:
        target = _device_type(dev)
    if target != "cuda":
        return None
    return Hit(
        "GG401",
        "torch.tensor(data, device=...)",
        f"a device tensor built from host data is a pageable host-to-device copy "
        f"{_phase_words(state)}",
        data if isinstance(data, torch.Tensor) else None,
    )


# --- pinned allocation ------------------------------------------------------------------------
@register_check(_attr(T, "pin_memory"))
def _check_pin_memory(
    state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    t = args[0] if args else None
    if not isinstance(t, torch.Tensor) or t.is_cuda:
        return None
    return Hit(
        "GG201",
        "Tensor.pin_memory()",
        f"Tensor.pin_memory() allocates pinned host memory for {_describe(t)} "
        f"{_phase_words(state)}",
        t,
        emulate=lambda: t.clone(),
    )


def _pinned_factory_hit(
    state: GuardState, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit:
    name = getattr(func, "__name__", "factory")
    plain = {k: v for k, v in kwargs.items() if k != "pin_memory"}
    return Hit(
        "GG201",
        f"torch.{name}(..., pin_memory=True)",
        f"torch.{name}(..., pin_memory=True) allocates pinned host memory {_phase_words(state)}",
        None,
        emulate=lambda: func(*args, **plain),
    )


# --- scalar arguments given as tensors ---------------------------------------------------------
def _check_scalar_argument(state: GuardState, func: Any, kwargs: dict[str, Any]) -> Hit | None:
    """``add_(g, alpha=lr)`` with a CUDA tensor ``lr`` reads it on the host (a Scalar argument).

    torch optimizers do this with a tensor learning rate that is not ``capturable``. Only real
    CUDA tensors are reported: a CPU tensor here is read without a sync and is baked instead
    (tracked as a stale host scalar by ``graphed``).
    """
    for key in ("alpha", "value"):
        t = kwargs.get(key)
        if isinstance(t, torch.Tensor) and t.is_cuda:
            name = getattr(func, "__name__", "op")
            return Hit(
                "GG101",
                f"{name}(..., {key}=tensor)",
                f"{name} takes {key}= as a Python scalar, so the CUDA tensor passed there "
                f"({_describe(t)}) is read on the host {_phase_words(state)}",
                t,
            )
    return None


# --- stream escape ----------------------------------------------------------------------------
#: Calls that only read a tensor's metadata: no kernel, and no read of its values.
METADATA_CALLS = frozenset(
    {
        "__get__", "size", "dim", "stride", "numel", "nelement", "element_size", "data_ptr",
        "storage_offset", "is_contiguous", "is_floating_point", "is_complex", "is_pinned",
        "get_device", "__len__", "__hash__", "__setstate__", "__reduce_ex__", "__deepcopy__",
    }
)  # fmt: skip
# Calls that read metadata or make views launch no kernel, so the stream they run on is moot.
_NO_KERNEL = METADATA_CALLS | {
    "untyped_storage", "view", "view_as", "as_strided", "reshape", "expand", "expand_as",
    "squeeze", "unsqueeze", "permute", "transpose", "t", "narrow", "select", "detach",
    "__iter__", "requires_grad_", "_is_view", "is_set_to", "__torch_function__",
    "register_hook", "retain_grad",
}  # fmt: skip


def _first_cuda_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.is_cuda:
                return a
        elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor) and a[0].is_cuda:
            return a[0]
    for a in kwargs.values():
        if isinstance(a, torch.Tensor) and a.is_cuda:
            return a
    return None


_is_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None) or (
    lambda: torch.cuda.is_current_stream_capturing()
)


def _check_stream(
    state: GuardState, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Hit | None:
    name = getattr(func, "__name__", "")
    if name in _NO_KERNEL:
        return None
    t = _first_cuda_tensor(args, kwargs)
    if t is None or _is_capturing():
        return None
    stream = torch.cuda.current_stream(t.device)
    which = (
        "the default stream" if stream == torch.cuda.default_stream(t.device) else "a side stream"
    )
    return Hit(
        "GG301",
        f"{name or 'op'} on an uncaptured stream",
        f"{name or 'an op'} on {_describe(t)} was issued on {which} that is not part of the "
        f"capture; it would run once now and be missing from every replay",
        t,
    )


# --- the mode ---------------------------------------------------------------------------------
def _outputs(result: Any) -> tuple[Any, ...]:
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, (tuple, list)):
        return tuple(r for r in result if isinstance(r, torch.Tensor))
    return ()


def _track_host(
    state: GuardState, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
) -> None:
    """While emulating, remember which results are genuine host tensors (see docs/audit.md)."""
    outs = _outputs(result)
    if not outs:
        return
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    tensors += [a for a in kwargs.values() if isinstance(a, torch.Tensor)]
    if func is _TENSOR_CPU or (func is _TENSOR_TO and _target_device(args[1:], kwargs) == "cpu"):
        host = True
    elif tensors:
        host = all(_is_host(state, a) for a in tensors)
    else:
        # A factory: host unless it was given a device (which stands for the real device).
        host = kwargs.get("device") is None or kwargs.get("device") == "cpu"
    if host:
        for out in outs:
            _mark_host(state, out)


_TENSOR_CPU = _attr(T, "cpu")
_TENSOR_TO = _attr(T, "to")


class HazardMode(TorchFunctionMode):
    """Checks each torch call of the guarded thread against the hazard table before it runs.

    The common case (a call that is not in the table, no capture recording, real device
    tensors) returns after one dict lookup and two attribute reads: this runs on every torch
    call of a guarded thread.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Guards on this thread's stack that may be in capture phase (own or foreign capture).
        self.capture_states = 0
        #: CPU tensors stand for device tensors (no CUDA here), so results need host tracking.
        self.emulate = not torch.cuda.is_available()

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if kwargs is None:
            kwargs = {}
        check = _CHECKS.get(func)
        if (
            check is None
            and not self.capture_states
            and not self.emulate
            and kwargs.get("pin_memory") is not True
            and "alpha" not in kwargs
            and "value" not in kwargs
        ):
            return func(*args, **kwargs)
        state = current_state()
        if state is None:  # the guard ended but a caller still holds the mode
            return func(*args, **kwargs)
        hit = None
        if check is not None:
            hit = check(state, args, kwargs)
        elif kwargs.get("pin_memory") is True:
            hit = _pinned_factory_hit(state, func, args, kwargs)
        elif "alpha" in kwargs or "value" in kwargs:
            hit = _check_scalar_argument(state, func, kwargs)
        if hit is None and self.capture_states and state.effective_phase == "capture":
            hit = _check_stream(state, func, args, kwargs)
        if hit is not None:
            report(state, hit.code, hit.api, hit.message, tensor=hit.tensor)
            if state.emulate and hit.emulate is not None:
                return hit.emulate()
        result = func(*args, **kwargs)
        if state.emulate:
            _track_host(state, func, args, kwargs, result)
        return result
