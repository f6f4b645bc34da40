"""Patches are reference-counted, gated per thread, and leave torch exactly as it was."""

from __future__ import annotations

import threading

import pytest
import torch

import graphguard
from graphguard import _patches


def _originals() -> dict:
    return {(id(o), n): vars(o).get(n, "<inherited>") for o, n in _patches.installed_targets()}


def test_no_patch_while_no_guard_is_active() -> None:
    """Importing graphguard patches nothing; torch attributes are the originals."""
    assert not _patches.is_installed()
    assert "pin_memory" not in vars(torch.Tensor)


def test_patches_installed_only_inside_region(ctx) -> None:
    """Inside a region the wrappers are in place; after it every attribute is restored."""
    before = _originals()
    with graphguard.capture(mode="audit"):
        assert _patches.is_installed()
        assert vars(torch.cuda)["synchronize"] is not before[(id(torch.cuda), "synchronize")]
        # The guarded thread's own pin_memory() reaches the torch-function mode: torch.Tensor
        # is written only while a capture in "global" error mode records.
        assert "pin_memory" not in vars(torch.Tensor)
    assert _originals() == before
    assert "pin_memory" not in vars(torch.Tensor)


def test_tensor_pin_memory_is_wrapped_only_while_a_global_capture_records(ctx) -> None:
    """begin/end_global_capture install and remove the cross-thread-only wrappers, once."""
    before = _originals()
    with graphguard.capture(mode="audit"):
        _patches.begin_global_capture(1, "first", None)
        _patches.begin_global_capture(2, "second", None)
        assert "pin_memory" in vars(torch.Tensor)
        _patches.end_global_capture(1)
        assert "pin_memory" in vars(torch.Tensor), "the second capture still records"
        _patches.end_global_capture(2)
        _patches.end_global_capture(2)  # idempotent
        assert "pin_memory" not in vars(torch.Tensor)
        assert _patches.is_installed()
    assert _originals() == before
    assert not _patches.is_installed()


def test_another_threads_pin_memory_is_refused_during_a_global_capture(ctx) -> None:
    """While a "global" capture records, another thread's pin_memory() is GG201, before torch
    allocates (the allocation is what invalidates such a capture); with none, it is not seen."""
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            torch.zeros(4).pin_memory()
        except BaseException as e:
            errors.append(e)

    with graphguard.capture(mode="audit"):
        _patches.begin_global_capture(id(errors), "global-capture", None)
        try:
            worker = threading.Thread(target=other_thread, name="gg-pinning-thread")
            worker.start()
            worker.join()
        finally:
            _patches.end_global_capture(id(errors))
    assert len(errors) == 1
    assert isinstance(errors[0], graphguard.HazardError)
    assert errors[0].code == "GG201"
    details = dict(errors[0].diagnostic.details)
    assert details == {"capturing thread": "MainThread", "calling thread": "gg-pinning-thread"}


def test_nested_guards_share_one_installation(ctx) -> None:
    """Nested guards keep the patches until the outermost one ends."""

    @graphguard.guard
    def inner(x):
        return x * 2

    with graphguard.capture(mode="audit"):
        inner(ctx.x)
        assert _patches.is_installed()
        inner(ctx.x)
    assert not _patches.is_installed()


@pytest.mark.parametrize("exc_type", [ValueError, KeyboardInterrupt, graphguard.HostSyncError])
def test_exception_inside_region_restores_torch(exc_type: type, ctx) -> None:
    """An exception (KeyboardInterrupt included) leaving the region still restores torch."""
    with pytest.raises(exc_type), graphguard.capture(mode="audit"):
        if exc_type is graphguard.HostSyncError:
            ctx.x.sum().item()
        raise exc_type("boom")
    assert not _patches.is_installed()
    assert torch._C._len_torch_function_stack() == 0


def test_foreign_value_is_not_overwritten_on_removal() -> None:
    """If someone replaced our wrapper while guarded, removal leaves their value in place."""
    sentinel = object()
    original = vars(torch.cuda)["synchronize"]
    try:
        with graphguard.capture(mode="audit"):
            torch.cuda.synchronize = sentinel  # type: ignore[assignment]
        assert torch.cuda.synchronize is sentinel
    finally:
        torch.cuda.synchronize = original


def test_thread_without_guard_passes_through(ctx) -> None:
    """A thread with no guard is not reported while another thread is guarded."""
    started, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def guarded_thread() -> None:
        with graphguard.capture(mode="audit"):
            started.set()
            release.wait(10)

    t = threading.Thread(target=guarded_thread)
    t.start()
    started.wait(10)
    try:
        assert _patches.is_installed()
        seen.append(ctx.x.sum().item())  # legal here: this thread has no guard
        seen.append(torch.get_rng_state().shape)
    finally:
        release.set()
        t.join()
    assert len(seen) == 2
    assert not _patches.is_installed()


def test_guards_in_many_threads_leave_torch_pristine(ctx) -> None:
    """Guards entering and leaving in several threads at once all report and all clean up."""
    errors: list[str] = []
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait(10)
        for _ in range(20):
            try:
                with graphguard.capture(mode="audit", label=f"t{i}"):
                    (ctx.x * i).sum().item()
            except graphguard.HostSyncError as e:
                errors.append(e.diagnostic.label or "")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(errors)) == [f"t{i}" for i in range(6)]
    assert len(errors) == 120
    assert not _patches.is_installed()
