"""Shared fixtures: skip CUDA tests without a GPU, and check torch is left pristine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo

# The repository root, so tests share ``benchmarks._timing`` (the one side-stream warm-up) with
# the benchmarks instead of keeping a copy of it.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _torch_snapshot() -> dict[tuple[int, str], object]:
    from graphguard import _patches

    return {
        (id(owner), name): vars(owner).get(name, "<inherited>")
        for owner, name in _patches.installed_targets()
    }


@pytest.fixture(autouse=True)
def torch_is_pristine():
    """After every test, every torch attribute graphguard may wrap is what it was before."""
    import torch.optim.optimizer as optimizer_module

    hooks = getattr(optimizer_module, "_global_optimizer_pre_hooks", {})
    before = _torch_snapshot()
    hooks_before = dict(hooks)
    yield
    assert dict(hooks) == hooks_before, "a global optimizer step hook was left registered"
    from graphguard import _patches

    assert not _patches.is_installed(), "graphguard patches are still installed"
    assert _torch_snapshot() == before, "a torch attribute was left patched"
    assert "pin_memory" not in vars(torch.Tensor), "Tensor.pin_memory shadow left behind"
    assert torch._C._len_torch_function_stack() == 0, "a torch function mode was left active"


@pytest.fixture
def ctx():
    """A step context: a 1024-element float tensor on the GPU, or on the CPU standing for one."""
    from hazard_cases import Ctx

    x = torch.randn(1024, generator=torch.Generator().manual_seed(0))
    return Ctx(x=x.cuda() if HAS_CUDA else x)
