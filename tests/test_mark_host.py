"""graphguard.mark_host: CPU tensors made before a region that stay on the host in the GPU run.

Audit without CUDA takes a tensor made before the region for a device tensor, so a genuine host
table made earlier (diffusers' Euler scheduler moves its sigma table to the host in
``set_timesteps``) is reported on CPU only. ``mark_host`` declares such a tensor; these tests hold
it to the GPU's verdicts: reading the table on the host is legal, indexing it with a device
index is still GG101, and nothing else changes.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch

import graphguard
from graphguard import _emulation

emulating = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU emulation; real devices decide where CUDA exists"
)


class Scheduler:
    """An Euler-like sampling step: a host sigma table, a Python step index."""

    def __init__(self) -> None:
        self.sigmas = torch.linspace(1.0, 0.0, 21)  # made before any region, "moved to the host"
        self.step_index = 0

    def step(self, sample: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas[self.step_index]
        gamma = 0.5 if 0.1 <= sigma <= 0.9 else 0.0  # a comparison of a host value
        dt = self.sigmas[self.step_index + 1] - sigma
        self.step_index += 1
        return sample + eps * dt * (1 + gamma)


def _codes(fn: Any) -> list[str]:
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        fn()
    return [d.code for d in cap.hazards]


@emulating
def test_an_undeclared_host_table_made_before_the_region_stands_for_the_device() -> None:
    """The documented limit: without the declaration, the comparison is reported (GG102)."""
    sched, x = Scheduler(), torch.randn(4)
    assert _codes(lambda: sched.step(x, x)) == ["GG102", "GG102"]


@emulating
def test_a_declared_host_table_reads_like_the_gpu_run() -> None:
    """Declared, the table and the values computed from it alone are host tensors: silent, and
    the step's result is the eager one."""
    sched, x, eps = Scheduler(), torch.randn(4), torch.randn(4)
    graphguard.mark_host(sched.sigmas)
    want = x + eps * (sched.sigmas[1] - sched.sigmas[0])
    out: list[torch.Tensor] = []
    assert _codes(lambda: out.append(sched.step(x, eps))) == []
    torch.testing.assert_close(out[0], want)


@emulating
def test_a_device_index_into_a_declared_table_is_still_a_host_read() -> None:
    """The host-table rule (GG101) is about the index: it still applies, and so do device
    values elsewhere in the step."""
    table, x = torch.linspace(0.0, 1.0, 16), torch.randn(4)
    graphguard.mark_host(table)
    step = (x > 0).sum()  # a device step number
    assert _codes(lambda: table[step]) == ["GG101"]
    assert _codes(lambda: bool(x.sum() > 0)) == ["GG102"]


@emulating
def test_a_declaration_inside_a_region_takes_effect_at_once() -> None:
    table = torch.linspace(0.0, 1.0, 16)

    def body() -> None:
        graphguard.mark_host(table)
        if table[3] > 0.5:
            raise AssertionError("linspace(0, 1, 16)[3] is 0.2")

    assert _codes(body) == []


def test_the_declaration_ends_with_its_tensor() -> None:
    before = len(_emulation._declared_host)
    table = torch.linspace(0.0, 1.0, 16)
    graphguard.mark_host(table)
    assert len(_emulation._declared_host) == before + 1
    del table
    gc.collect()
    assert len(_emulation._declared_host) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "at least one CPU tensor"),
        (([1.0, 2.0],), "takes CPU tensors"),
        ((torch.empty(2, device="meta"),), "got a tensor on meta"),
    ],
)
def test_anything_but_cpu_tensors_is_refused(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(graphguard.ConfigError, match=message):
        graphguard.mark_host(*args)


@pytest.mark.cuda
def test_on_the_gpu_the_devices_decide() -> None:
    """With CUDA a CPU table made before the region is a host tensor anyway: silent with or
    without the declaration, and a CUDA tensor cannot be declared."""
    sched, x = Scheduler(), torch.randn(4, device="cuda")
    assert _codes(lambda: sched.step(x, x)) == []
    graphguard.mark_host(sched.sigmas)
    assert _codes(lambda: sched.step(x, x)) == []
    with pytest.raises(graphguard.ConfigError, match="got a tensor on cuda"):
        graphguard.mark_host(x)
