"""Learning-rate schedules inside a graphed step: the optimizer's ``lr`` as live device state.

A CUDA graph records every Python number the optimizer read while it was captured, so a float
``lr`` changed by a scheduler afterwards is ignored by every replay (``graphed`` reports it as
GG601 instead). torch's remedy is a 0-dim *device tensor* ``lr`` that the step reads inside the
graph: ``Adam``/``AdamW`` with ``capturable=True``, or ``SGD`` with ``fused=True``. torch's
schedulers (``CosineAnnealingLR``, ``LambdaLR``, ``OneCycleLR``, ...) update a tensor ``lr`` in
place with ``fill_`` (``torch/optim/lr_scheduler.py``, ``_update_param_group_val``), so the
graph sees each new value at its next replay.

That remedy does not run without a GPU: a capturable optimizer asserts that its parameters are
on a CUDA-like device. :func:`graph_safe_optimizer` applies the remedy where it works and keeps
the same program runnable elsewhere:

* parameters on CUDA: each group's ``lr`` becomes a 0-dim float32 tensor on the parameters'
  device, ``Adam``/``AdamW`` get ``capturable=True`` (existing ``state["step"]`` tensors move to
  the device, as torch requires);
* parameters on the CPU (audit without CUDA): each group's ``lr`` becomes a 0-dim CPU tensor and
  the optimizer stays ``capturable=False`` (with ``foreach=False`` for ``Adam``/``AdamW``, which
  torch requires for a tensor ``lr`` there). The step runs eagerly under graphguard's audit,
  which still checks it.

Either way the ``lr`` tensors are marked as live state (``_emulation.LIVE_SCALAR_ATTR``), so
``graphed`` does not track them as baked host scalars. Other hyperparameters (``betas``,
``weight_decay``, ``momentum``, ...) stay Python numbers: they are baked into the graph and a
change to them is still reported as GG601.

Tensor ``lr`` support checked in torch's sources for 2.11 to 2.13 (``torch/optim/adam.py``,
``adamw.py``, ``sgd.py``): ``Adam``/``AdamW`` read a tensor ``lr`` on the device only with
``capturable=True`` (or ``fused=True``); ``SGD``'s for-loop and ``foreach`` paths pass it as
``alpha=-lr``, a host read, so only ``fused=True`` keeps it on the device.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from ._emulation import LIVE_SCALAR_ATTR
from ._errors import ConfigError

__all__ = ["graph_safe_optimizer"]

_Opt = TypeVar("_Opt", bound=torch.optim.Optimizer)

#: Optimizers whose ``lr`` torch reads on the device, and how (see the module docstring).
_SUPPORTED = "torch.optim.Adam, torch.optim.AdamW (capturable) and torch.optim.SGD (fused=True)"


def graph_safe_optimizer(optimizer: _Opt) -> _Opt:
    """Make ``optimizer``'s learning rates live tensors a graphed step reads at every replay.

    Changes ``optimizer`` in place and returns it. Call it after the optimizer has all its param
    groups (and after ``load_state_dict``), before creating the scheduler and before the first
    graphed call. On CUDA each group's ``lr`` becomes a 0-dim device tensor and ``Adam``/``AdamW``
    become ``capturable``; on the CPU the ``lr`` is a CPU tensor and the optimizer stays
    non-capturable, so the same program runs (and is audited) without a GPU.

    Raises :class:`graphguard.ConfigError` for an optimizer or a configuration whose learning rate
    cannot be read on the device: another optimizer class, ``SGD`` without ``fused=True`` on CUDA,
    parameters on more than one device or on a device other than CUDA or the CPU, or a tensor
    ``lr`` with more than one element.
    """
    kind = _kind(optimizer)
    device = _single_device(optimizer)
    on_cuda = device.type == "cuda"
    for index, group in enumerate(optimizer.param_groups):
        lr = group.get("lr")
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ConfigError(
                f"graph_safe_optimizer: param_groups[{index}]['lr'] is a tensor of "
                f"{lr.numel()} elements; a learning rate must be one number"
            )
        if kind == "sgd" and on_cuda and not group.get("fused"):
            raise ConfigError(
                f"graph_safe_optimizer: SGD param_groups[{index}] has fused="
                f"{group.get('fused')!r}; on CUDA SGD reads a tensor lr on the device only with "
                "fused=True (its for-loop and foreach paths read it on the host with "
                "alpha=-lr). Create it as torch.optim.SGD(params, lr=..., fused=True), or use "
                "Adam/AdamW"
            )
    for group in optimizer.param_groups:
        group["lr"] = _live_lr(group["lr"], device)
        if kind == "adam":
            if on_cuda:
                group["capturable"] = True
            else:
                group["capturable"] = False
                if group.get("foreach"):
                    group["foreach"] = False
    if kind == "adam" and on_cuda:
        _steps_to_device(optimizer)
    return optimizer


def _kind(optimizer: Any) -> str:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"graph_safe_optimizer takes a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    # AdamW subclasses Adam in recent torch; name both so older layouts are covered too.
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    raise ConfigError(
        f"graph_safe_optimizer: {type(optimizer).__name__} is not supported; supported are "
        f"{_SUPPORTED}. Other optimizers keep lr a Python number: re-create the graphed step when "
        "it changes, or use on_hazard='fallback'"
    )


def _single_device(optimizer: torch.optim.Optimizer) -> torch.device:
    devices = {p.device for group in optimizer.param_groups for p in group["params"]}
    if not devices:
        raise ConfigError("graph_safe_optimizer: the optimizer has no parameters")
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ConfigError(
            f"graph_safe_optimizer: parameters are on several devices ({names}); one tensor lr "
            "per group needs all parameters on one device"
        )
    (device,) = devices
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"graph_safe_optimizer: parameters are on {device}; supported devices are 'cuda' "
            "(graph-safe) and 'cpu' (audit without CUDA)"
        )
    return device


def _live_lr(lr: Any, device: torch.device) -> torch.Tensor:
    if isinstance(lr, torch.Tensor):
        with torch._C.DisableTorchFunction():  # graphguard's own read, never a user's hazard
            value = float(lr.detach().reshape(()).cpu())
    else:
        value = float(lr)
    tensor = torch.tensor(value, dtype=torch.float32, device=device)
    setattr(tensor, LIVE_SCALAR_ATTR, True)
    return tensor


def _steps_to_device(optimizer: torch.optim.Optimizer) -> None:
    # A capturable Adam keeps state["step"] on the parameter's device; state made by earlier
    # non-capturable steps holds it on the CPU, which torch's capturable step refuses.
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and isinstance(state.get("step"), torch.Tensor):
                step = state["step"]
                if step.device != param.device:
                    state["step"] = step.to(device=param.device, dtype=torch.float32)
