"""Hazards and legal look-alikes written against a ``device`` variable, as user code is.

Every function below is one case, ``case(x, device)``: ``x`` is a float tensor made on the run's
device before the region, and ``device`` is that device spelled one of the ways user programs
spell it: ``"cpu"``, ``torch.device("cpu")``, ``"cuda"``. The verdict must not depend on the
spelling. Each case carries exactly one marker comment:

- ``# HAZARD GGxxx`` on the line the diagnostic must name, with the code it must carry;
- ``# LEGAL`` on the line that looks like a hazard but is not one on a GPU (nothing may be
  reported anywhere in the case).

The functions are collected in source order into ``CASES`` (hazards) and ``LEGAL`` (look-alikes),
as ``hazard_cases.Case`` records, so the ``# HAZARD`` line finder is the hazard table's own.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

import torch
from hazard_cases import Case

# --- host-sync ---------------------------------------------------------------------------------


def item(x: torch.Tensor, device: Any) -> Any:
    w = torch.ones(4, device=device)
    return (x[:4] * w).sum().item()  # HAZARD GG101


def float_of_tensor(x: torch.Tensor, device: Any) -> Any:
    return float(torch.arange(4, device=device).sum())  # HAZARD GG101


def if_tensor(x: torch.Tensor, device: Any) -> Any:
    y = x[:4] + torch.zeros(4, device=device)
    if (y > 0).any():  # HAZARD GG102
        y = y + 1
    return y


def tolist(x: torch.Tensor, device: Any) -> Any:
    return torch.arange(4, device=device).tolist()  # HAZARD GG103


def cpu_call(x: torch.Tensor, device: Any) -> Any:
    return (x[:4] + torch.ones(4, device=device)).cpu()  # HAZARD GG103


def numpy_call(x: torch.Tensor, device: Any) -> Any:
    return torch.full((4,), 2.0, device=device).numpy()  # HAZARD GG103


def print_tensor(x: torch.Tensor, device: Any) -> Any:
    print(torch.ones(2, device=device) * x[:2])  # HAZARD GG104


def nonzero(x: torch.Tensor, device: Any) -> Any:
    return (x[:8] + torch.ones(8, device=device)).nonzero()  # HAZARD GG105


def bool_mask_read(x: torch.Tensor, device: Any) -> Any:
    mask = torch.rand(x.shape, device=device) > 0.5
    return x[mask]  # HAZARD GG105


def unique(x: torch.Tensor, device: Any) -> Any:
    return torch.unique(torch.arange(6, device=device) % 3)  # HAZARD GG105


def equal(x: torch.Tensor, device: Any) -> Any:
    return torch.equal(x[:4], torch.zeros(4, device=device))  # HAZARD GG106


# --- pageable-copy -----------------------------------------------------------------------------


def tensor_from_data(x: torch.Tensor, device: Any) -> Any:
    return x[:2] + torch.tensor([1.0, 2.0], device=device)  # HAZARD GG401


def tensor_from_scalar(x: torch.Tensor, device: Any) -> Any:
    return x * torch.tensor(1.0, device=device)  # HAZARD GG401


def as_tensor_from_list(x: torch.Tensor, device: Any) -> Any:
    return x[:2] + torch.as_tensor([1.0, 2.0], device=device)  # HAZARD GG401


def new_tensor_from_list(x: torch.Tensor, device: Any) -> Any:
    return x[:2] + x.new_tensor([1.0, 2.0])  # HAZARD GG401


def host_tensor_to_device(x: torch.Tensor, device: Any) -> Any:
    y = torch.zeros(3)  # no device: a genuine host tensor
    return x[:3] + y.to(device)  # HAZARD GG401


def index_with_list(x: torch.Tensor, device: Any) -> Any:
    index = [0, 2, 5]
    return (x + torch.zeros(1, device=device))[index]  # HAZARD GG401


# --- pinned-alloc ------------------------------------------------------------------------------


def pin_memory_call(x: torch.Tensor, device: Any) -> Any:
    return torch.zeros(8).pin_memory()  # HAZARD GG201


def pinned_factory(x: torch.Tensor, device: Any) -> Any:
    return torch.empty(8, pin_memory=True)  # HAZARD GG201


# --- rng-state, sync, stream-escape ------------------------------------------------------------


def manual_seed(x: torch.Tensor, device: Any) -> Any:
    torch.manual_seed(0)  # HAZARD GG501
    return torch.rand(4, device=device)


def cuda_synchronize(x: torch.Tensor, device: Any) -> Any:
    y = x * torch.ones(1, device=device)
    torch.cuda.synchronize(device)  # HAZARD GG107
    return y


def event_synchronize(x: torch.Tensor, device: Any) -> Any:
    done = torch.Event(device=device)
    y = x * 2
    done.record()
    done.synchronize()  # HAZARD GG107
    return y


def default_stream(x: torch.Tensor, device: Any) -> Any:
    # One line on purpose: audit reports the default_stream() call, capture the op on it.
    with torch.cuda.stream(torch.cuda.default_stream(device)): y = x * 2  # HAZARD GG301  # noqa: E701  # fmt: skip
    return y


# --- legal look-alikes -------------------------------------------------------------------------


def device_tensor_to_device(x: torch.Tensor, device: Any) -> Any:
    y = torch.zeros(3, device=device)
    return x[:3] + y.to(device)  # LEGAL


def input_to_device(x: torch.Tensor, device: Any) -> Any:
    return x.to(device) * 2  # LEGAL


def factory_on_device(x: torch.Tensor, device: Any) -> Any:
    return x[:3] + torch.zeros(3, device=device)  # LEGAL


def new_zeros(x: torch.Tensor, device: Any) -> Any:
    return x[:3] + x.new_zeros(3) + torch.full((3,), 2.0, device=device)  # LEGAL


def bool_mask_fill(x: torch.Tensor, device: Any) -> Any:
    y = x.clone()
    mask = y < torch.zeros((), device=device)
    y[mask] = 0.0  # LEGAL
    return y


def where_three_args(x: torch.Tensor, device: Any) -> Any:
    return torch.where(x > 0, x, 0) + torch.ones(1, device=device)  # LEGAL


def random_on_device(x: torch.Tensor, device: Any) -> Any:
    return x[:4] + torch.rand(4, device=device)  # LEGAL


def int_device_index(x: torch.Tensor, device: Any) -> Any:
    return x[torch.arange(0, 8, 2, device=device)]  # LEGAL


_MARKER = re.compile(r"# (HAZARD (GG\d{3})|LEGAL)\b")


def _marker(fn: Any) -> str:
    """The code of the case's ``# HAZARD GGxxx`` marker, or "" for ``# LEGAL``."""
    lines, _ = inspect.getsourcelines(fn)
    found = [m for text in lines if (m := _MARKER.search(text))]
    assert len(found) == 1, f"case {fn.__name__} needs exactly one marker comment"
    return found[0].group(2) or ""


def _collect() -> list[Case]:
    module = sys.modules[__name__]
    fns = [
        fn
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and fn.__module__ == __name__ and not name.startswith("_")
    ]
    fns.sort(key=lambda fn: fn.__code__.co_firstlineno)
    return [Case(fn.__name__.replace("_", "-"), _marker(fn), fn) for fn in fns]


ALL: list[Case] = _collect()
CASES: list[Case] = [c for c in ALL if c.code]
LEGAL: list[Case] = [c for c in ALL if not c.code]
