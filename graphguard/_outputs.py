"""Graph outputs that know when a later replay overwrote them (rule GG701, ``stale-output``).

A graphed step returns its outputs as ``GraphOutput`` views of the graph's static output
memory. Each call's views share one ``Generation``; the next replay of the same graph marks the
previous generation overwritten. Reading an overwritten view (any op but metadata queries) is
reported at the reading line, before any data is touched. torch.compile's CUDA graph trees have
the same idea ("accessing tensor output of CUDAGraphs that has been overwritten by a subsequent
run"). Results computed from a ``GraphOutput`` are plain tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from ._intercept import METADATA_CALLS
from ._report import Finding, FixedScope, report

__all__ = ["Generation", "GraphOutput", "wrap_output"]


class Generation:
    """The outputs of one call of a graphed step, and who overwrote them."""

    __slots__ = ("call", "label", "on_hazard", "overwritten_by", "reported")

    def __init__(self, call: int, label: str, on_hazard: str) -> None:
        self.call = call
        self.label = label
        self.on_hazard = on_hazard
        self.overwritten_by: int | None = None
        self.reported = False


class GraphOutput(torch.Tensor):
    """An output of a ``graphed`` step; reading it after a later call overwrote it is GG701."""

    _gg_generation: Generation
    _gg_index: int

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if kwargs is None:
            kwargs = {}
        if getattr(func, "__name__", "") not in METADATA_CALLS:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, GraphOutput) and arg._gg_generation.overwritten_by is not None:
                    _report_stale(arg, func)
                    break
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def wrap_output(t: torch.Tensor, generation: Generation, index: int) -> GraphOutput:
    out = t.as_subclass(GraphOutput)
    out._gg_generation = generation
    out._gg_index = index
    return out


def _report_stale(t: GraphOutput, func: Any) -> None:
    gen = t._gg_generation
    if gen.reported and gen.on_hazard != "raise":
        return  # logged once per overwritten output set
    name = getattr(func, "__name__", "op")
    finding = Finding(
        "GG701",
        f"{name} on a graph output",
        tensor=t,
        facts={"index": t._gg_index, "call": gen.call, "overwritten_by": gen.overwritten_by},
        details=(
            ("returned by call", f"#{gen.call}"),
            ("overwritten by call", f"#{gen.overwritten_by}"),
        ),
    )
    if report(finding, FixedScope(gen.on_hazard, gen.label, "replay")) is not None:
        gen.reported = True
