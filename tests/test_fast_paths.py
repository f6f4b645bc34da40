"""The shortcuts that keep guarding cheap decide exactly what the full checks would decide.

Plain calls skip the checks, emulation looks at a result only when it can be a new host tensor,
and the wrappers of a module or a type are written in one go while they still match what was
wrapped last time. Each test pins one of those shortcuts to the verdict the slow path gives.
"""

from __future__ import annotations

import threading

import pytest
import torch

import graphguard
from graphguard import _patches

cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="emulation (CPU tensors standing for device tensors)"
)


def _codes(cap: graphguard.Capture) -> list[str]:
    return [d.code for d in cap.hazards]


@cpu_only
def test_host_tensors_stay_host_through_plain_operations() -> None:
    """A factory with no device makes a host tensor; plain operations on host tensors keep it."""
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        h = torch.arange(4.0)
        total = (h * 2 + 1).sum()
        picked = torch.topk(h, 2).values
        stacked = torch.stack([h, h])
        total.item()
        picked.tolist()
        stacked.max().item()
    assert _codes(cap) == []


@cpu_only
def test_an_operation_with_a_device_input_is_device() -> None:
    """Mixing one device tensor into host tensors gives a device tensor, in a list or alone."""
    device = torch.ones(4)  # made before the region: stands for a device tensor
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        h = torch.zeros(4)
        torch.cat([h, device]).sum().item()
        (h + device).sum().item()
    assert _codes(cap) == ["GG101", "GG101"]


@cpu_only
def test_a_device_tensor_passed_by_keyword_is_not_a_factory() -> None:
    """A call whose only tensor comes by keyword is an operation on it, not a factory."""
    device = torch.ones(4)
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        torch.add(input=device, other=1).sum().item()
    assert _codes(cap) == ["GG101"]


@cpu_only
def test_host_and_device_by_keyword_once_host_tensors_exist() -> None:
    """With host tensors around, every keyword tensor input is still looked at."""
    device = torch.ones(4)
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        h = torch.zeros(4)
        torch.add(input=h, other=h).sum().item()  # host: fine
        torch.add(input=h, other=device).sum().item()  # device: a sync
    assert _codes(cap) == ["GG101"]


def test_module_attribute_replaced_between_regions_is_wrapped_and_kept() -> None:
    """A torch function replaced while no region runs is wrapped as it is now, and kept after."""
    original = vars(torch.cuda)["synchronize"]
    calls: list[str] = []

    def replacement(device: object = None) -> None:
        calls.append("replacement")

    with graphguard.capture(mode="audit", on_hazard="warn"):
        pass  # the wrappers of torch.cuda were built for the original
    try:
        torch.cuda.synchronize = replacement  # type: ignore[assignment]
        with graphguard.capture(mode="audit", on_hazard="warn") as cap:
            torch.cuda.synchronize()
        assert _codes(cap) == ["GG107"]
        assert vars(torch.cuda)["synchronize"] is replacement
        del calls[:]  # with CUDA the logged call went ahead; without, it was emulated
        torch.cuda.synchronize()
        assert calls == ["replacement"]
    finally:
        torch.cuda.synchronize = original
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        torch.cuda.synchronize()
    assert _codes(cap) == ["GG107"]
    assert vars(torch.cuda)["synchronize"] is original


def test_type_attribute_replaced_between_regions_is_wrapped_and_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for a method of a type: the current method is wrapped and put back as it was."""
    monkeypatch.setattr(_patches, "cuda_available", lambda: True)  # cuda.Event: wrapped with CUDA
    cls = torch.cuda.Event
    original = vars(cls)["query"]

    def query(self: object) -> bool:
        return True

    with graphguard.capture(mode="audit"):
        pass
    try:
        cls.query = query  # type: ignore[method-assign]
        with (
            pytest.raises(graphguard.HostSyncError),
            graphguard.capture(mode="audit"),
        ):
            cls.query(object())  # type: ignore[arg-type]
        assert vars(cls)["query"] is query
    finally:
        cls.query = original  # type: ignore[method-assign]
    assert vars(cls)["query"] is original


def test_regions_in_turn_in_many_threads_reuse_and_release_their_modes() -> None:
    """Each thread's interceptor is reused from region to region and never left on the stack."""
    depths: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        seen = depths[i] = []
        try:
            for _ in range(5):
                with graphguard.capture(mode="audit"):
                    seen.append(torch._C._len_torch_function_stack())
                    with graphguard.capture(mode="audit"):
                        seen.append(torch._C._len_torch_function_stack())
                seen.append(torch._C._len_torch_function_stack())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert depths == {i: [1, 1, 0] * 5 for i in range(3)}
    assert not _patches.is_installed()


def test_optimizer_hook_is_registered_only_inside_regions() -> None:
    """The global optimizer pre-hook graphguard needs is there inside a region, gone after it."""
    import torch.optim.optimizer as optimizer_module

    hooks = optimizer_module._global_optimizer_pre_hooks
    before = dict(hooks)
    with graphguard.capture(mode="audit"):
        inside = dict(hooks)
    assert dict(hooks) == before
    if not torch.cuda.is_available():  # the hook only matters while emulating
        assert len(inside) == len(before) + 1
