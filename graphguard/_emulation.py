"""Audit without CUDA: which CPU tensors stand for device tensors, and what a capture looks like.

On a machine without CUDA, graphguard runs the guarded step eagerly on the CPU and judges each
call as it would be judged on the GPU. For that it needs one rule, kept here and nowhere else:

**A tensor stands for a device tensor unless the program asked for the host explicitly.**

A tensor is a *genuine host tensor* when it was made inside a guarded region by

1. a factory given no device (``torch.zeros(3)``, ``torch.tensor([1, 2])``): on the GPU machine
   that is a CPU tensor too;
2. a call whose device argument the call site spells as the host *literally*:
   ``device="cpu"``, ``.to("cpu")``, ``torch.device("cpu")`` written at that line, or ``.cpu()``;
3. an operation all of whose tensor inputs are genuine host tensors;
4. a non-capturable optimizer's scalar state (``lr``, ``step``), which torch keeps on the host.

Every other tensor stands for a device tensor: tensors made before the region (model weights,
inputs; except those the program declared with ``graphguard.mark_host``), results of operations
on them, and tensors made with a device *variable*
(``device=device``), whatever that variable holds here. The verdict therefore does not depend on
how the program spells its device: ``device = "cpu"`` and ``device = torch.device("cpu")`` give
the same verdicts, and both match a GPU run with ``"cuda"``.

A device argument that names CUDA (``device="cuda"``, ``.cuda()``, ``.to("cuda")``) is run on the
CPU instead, as the GPU run would have run it on the device. See ``docs/audit.md`` for the
capture-status emulation and every known divergence from a real capture.
"""

from __future__ import annotations

import functools
import linecache
import re
import sys
import weakref
from typing import Any

import torch

from ._frames import find_calling_frame
from ._state import GuardState

#: Marks a 0-dim tensor as live state a graph reads at every replay (a ``graph_safe_optimizer``
#: ``lr``): never a baked host scalar, and on CPU it stands for a capturable group's ``lr``.
LIVE_SCALAR_ATTR = "_graphguard_live_scalar"

__all__ = [
    "add_declared_host",
    "call_site_names_host",
    "declare_host",
    "is_device",
    "is_host",
    "mark_host",
    "resolve_device_args",
    "target_is_host",
    "track_plain",
    "track_result",
]

# A host device spelled out at the call site: "cpu", 'cpu:0', .cpu(, device("cpu").
_HOST_LITERAL = re.compile(r"""(["'])cpu(:\d+)?\1|\.cpu\(""")
_site_cache: dict[tuple[Any, int], bool] = {}


def call_site_names_host() -> bool:
    """Whether the line making the current torch call spells the host literally."""
    frame = find_calling_frame(sys._getframe(1))
    if frame is None:
        return False
    key = (frame.f_code, frame.f_lineno or 0)
    known = _site_cache.get(key)
    if known is None:
        line = linecache.getline(frame.f_code.co_filename, key[1])
        known = bool(_HOST_LITERAL.search(line))
        if len(_site_cache) < 8192:
            _site_cache[key] = known
    return known


def _device_type(dev: Any) -> str | None:
    if dev is None:
        return None
    if isinstance(dev, torch.device):
        return dev.type
    if isinstance(dev, int) and not isinstance(dev, bool):
        return "cuda"
    try:
        return torch.device(dev).type
    except (RuntimeError, TypeError):
        return None


def target_is_host(dev: Any) -> bool:
    """Whether a device argument means the host (while emulating: only if spelled literally)."""
    kind = _device_type(dev)
    if kind != "cpu":
        return False
    return call_site_names_host()


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


def is_host(state: GuardState, t: Any) -> bool:
    """Whether ``t`` is a genuine host tensor."""
    return isinstance(t, torch.Tensor) and not is_device(state, t)


def mark_host(state: GuardState, t: Any) -> None:
    """Remember ``t`` as a genuine host tensor for the rest of the guarded region."""
    key = id(t)
    host_ids = state.host_ids
    host_ids[key] = weakref.ref(t, functools.partial(_forget, host_ids, key))


def _forget(host_ids: dict[int, Any], key: int, _ref: Any) -> None:
    host_ids.pop(key, None)


# CPU tensors made before any region that the program declared host tensors in the GPU run too
# (``graphguard.mark_host``): every emulating region starts with them among its genuine host
# tensors. Weak references: a declaration ends with its tensor.
_declared_host: dict[int, Any] = {}


def declare_host(t: torch.Tensor) -> None:
    """Remember ``t`` as a host tensor for every later (and the current) emulating region."""
    key = id(t)
    _declared_host[key] = weakref.ref(t, functools.partial(_forget, _declared_host, key))


def add_declared_host(state: GuardState) -> None:
    """Mark the declared host tensors that are still alive in ``state`` (none: no work)."""
    if not _declared_host:
        return
    for ref in list(_declared_host.values()):
        t = ref()
        if t is not None:
            mark_host(state, t)


def _tensor_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [r for r in result if isinstance(r, torch.Tensor)]
    return []


_TENSOR_CPU = torch.Tensor.cpu
_TENSOR_TO = torch.Tensor.to


def resolve_device_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """Rewrite a CUDA ``device=`` to the CPU; says whether the device argument means the host.

    Returns the kwargs to run with and ``True`` (host), ``False`` (stands for the device) or
    ``None`` (no device argument).
    """
    dev = kwargs.get("device")
    if dev is None:
        return kwargs, None
    kind = _device_type(dev)
    if kind == "cuda":
        return {**kwargs, "device": "cpu"}, False
    if kind == "cpu":
        return kwargs, call_site_names_host()
    return kwargs, False


def track_result(
    state: GuardState,
    func: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    result: Any,
    device_arg: bool | None,
) -> None:
    """While emulating, mark the results of ``func`` that are genuine host tensors.

    ``device_arg`` is what :func:`resolve_device_args` said about the call's ``device=``.
    """
    outs = _outputs(result)
    if not outs:
        return
    if func is _TENSOR_CPU:
        host = True
    elif func is _TENSOR_TO:
        to_host = _to_target_is_host(args, kwargs)
        # dtype-only: same placement as the input
        host = is_host(state, args[0]) if to_host is None else to_host
    elif device_arg is not None:
        host = device_arg
    else:
        tensors = _tensor_inputs(args, kwargs)
        if tensors:
            if not state.host_ids:  # nothing is a host tensor yet: the common case
                return
            host = all(is_host(state, t) for t in tensors)
        else:
            host = True  # a factory given no device makes a host tensor on any machine
    if host:
        for out in outs:
            mark_host(state, out)


def track_plain(
    state: GuardState, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
) -> None:
    """:func:`track_result` for a call with no device argument (not ``Tensor.cpu``/``.to``).

    Such a call makes a genuine host tensor only when it has no tensor input (a factory given
    no device) or when every tensor input is a genuine host tensor; while no host tensor exists
    in the region (the common case) the second cannot happen, so an operation on tensors is
    settled by finding its first tensor input.
    """
    if type(result) is torch.Size:
        return
    host_ids = state.host_ids
    if host_ids:
        tensors = _tensor_inputs(args, kwargs)
        if tensors and not all(is_host(state, t) for t in tensors):
            return
    elif _has_tensor_input(args, kwargs):
        return
    for out in _outputs(result):
        mark_host(state, out)


def _has_tensor_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for value in args:
        if isinstance(value, torch.Tensor):
            return True
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return True
    return bool(kwargs) and bool(_tensor_inputs((), kwargs))


def to_target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The device a ``Tensor.to`` call moves to, or ``None`` for a dtype-only call."""
    dev = kwargs.get("device")
    if dev is None:
        for a in args[1:]:
            if isinstance(a, (str, torch.device)) or (
                isinstance(a, int) and not isinstance(a, bool)
            ):
                return a
            if isinstance(a, torch.Tensor):
                return a.device
    return dev


def _to_target_is_host(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    dev = to_target(args, kwargs)
    if dev is None:
        return None
    return target_is_host(dev)


def optimizer_pre_hook(opt: Any, args: Any, kwargs: Any) -> None:
    """While emulating, a non-capturable optimizer's scalar tensors are host tensors.

    In a real GPU run torch keeps ``lr`` tensors and ``state["step"]`` of an optimizer with
    ``capturable=False`` on the CPU and reads them with ``.item()``: no sync. Without CUDA every
    tensor is on the CPU, so mark these as genuine host tensors before the step reads them.
    """
    from ._state import current_state

    state = current_state()
    if state is None:
        return
    check_capturable(opt, state)
    if not state.emulate:
        return
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
                mark_host(state, value)


def check_capturable(optimizer: Any, state: Any) -> None:
    """GG602: a torch optimizer that refuses capture unless ``capturable`` is stepped in a region.

    torch's ``Adam``, ``AdamW``, ``NAdam``, ``RAdam``, ``Adamax``, ``ASGD``, ``Adadelta``,
    ``RMSprop`` and ``Rprop`` check at ``step()`` that every group is ``capturable`` when a
    capture is recording, and raise a ``RuntimeError`` that names no line. Reported in a real
    capture and in audit (where the region stands for one); not in a graphed step's eager
    warm-up nor after a region fell back. Without CUDA, a group whose ``lr`` was made live by
    :func:`graph_safe_optimizer` stands for the ``capturable`` group that call makes on CUDA.
    """
    if not isinstance(optimizer, torch.optim.Optimizer) or "capturable" not in optimizer.defaults:
        return
    if not type(optimizer).__module__.startswith("torch.optim"):
        return  # third-party optimizers decide for themselves what capture needs
    phase = state.phase
    if not (phase == "capture" or (phase == "audit" and state.stands_for_capture)):
        return
    missing = [
        index
        for index, group in enumerate(optimizer.param_groups)
        if not group.get("capturable", False)
        and not (state.emulate and getattr(group.get("lr"), LIVE_SCALAR_ATTR, False))
    ]
    if not missing:
        return
    from ._report import Finding, report  # _report imports the table this module serves

    name = type(optimizer).__name__
    groups = ", ".join(str(i) for i in missing)
    report(
        Finding("GG602", f"{name}.step()", facts={"optimizer": name, "groups": groups}),
        state,
    )
