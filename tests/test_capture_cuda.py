"""Under real CUDA-graph capture: hazards refused at the user's line; the process stays healthy."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

import pytest
import torch
from hazard_cases import CASES, CLEAN, Case, Ctx

import graphguard
from benchmarks._timing import warm_up

pytestmark = pytest.mark.cuda

GPU_CASES = [c for c in CASES if c.gpu]
GPU_CLEAN = [c for c in CLEAN if c.gpu]


@pytest.fixture(autouse=True)
def collect_garbage_first() -> None:
    """Free earlier tests' cyclic garbage (tracebacks hold CUDA events) before any capture."""
    gc.collect()
    torch.cuda.synchronize()


@pytest.fixture
def gctx() -> Ctx:
    """A step context on the GPU, with CUDA objects made before any region starts."""
    x = torch.randn(1024, device="cuda")
    # cuBLAS makes its handle at a thread's first matmul, which a capture cannot contain
    # (CUBLAS_STATUS_NOT_INITIALIZED): warm it up as any capture must
    (x[:16].view(4, 4) @ x[:16].view(4, 4)).sum()
    event = torch.cuda.Event()
    event.record()
    ctx = Ctx(x=x, pinned=torch.randn(1024).pin_memory(), stream=torch.cuda.Stream(), event=event)
    torch.cuda.synchronize()
    return ctx


def assert_process_healthy() -> None:
    """Ordinary CUDA work, RNG calls and a fresh plain-torch capture all still succeed."""
    assert torch.randn(8, device="cuda").sum().isfinite().item()
    torch.rand(4, device="cuda")
    torch.cuda.manual_seed(1234)
    x = torch.ones(16, device="cuda")
    warm_up(lambda: (x * 3 + torch.rand_like(x)).sum(), 1)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = x * 3 + torch.rand_like(x) * 0
    x.fill_(2.0)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, torch.full_like(x, 6.0))


def _assert_points_at_case(err: graphguard.HazardError, case: Case) -> None:
    d = err.diagnostic
    assert (d.code, d.kind) == (case.code, case.kind)
    assert d.filename == case.fn.__code__.co_filename
    assert d.lineno == case.line
    assert d.function == case.fn.__name__


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_capture_refuses_hazard_and_process_stays_healthy(case: Case, gctx: Ctx) -> None:
    """Each hazard raises its kind at the user's line before CUDA sees it; the process survives."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture() as cap:
        case.fn(gctx)
    assert cap.mode == "capture"
    assert info.value.diagnostic.phase == "capture"
    _assert_points_at_case(info.value, case)
    assert cap.graph is None
    with pytest.raises(graphguard.NotCapturedError):
        cap.replay()
    assert_process_healthy()


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_audit_on_gpu_reports_same_hazard(case: Case, gctx: Ctx) -> None:
    """Audit mode on a GPU machine reports the same kind at the same line."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        case.fn(gctx)
    _assert_points_at_case(info.value, case)
    assert_process_healthy()


@pytest.mark.parametrize("case", GPU_CLEAN, ids=lambda c: c.name)
def test_clean_code_captures_and_replays(case: Case, gctx: Ctx) -> None:
    """Legal code captures without a report, and its replay matches eager where deterministic."""
    # warm-up: library handles and caches are created outside the capture
    warm_up(lambda: case.fn(gctx), 1)
    with graphguard.capture() as cap:
        out = case.fn(gctx)
    assert cap.hazards == []
    assert cap.graph is not None
    cap.replay()
    torch.cuda.synchronize()
    if isinstance(out, torch.Tensor) and case.name != "dropout-rand":
        torch.testing.assert_close(out, case.fn(gctx))
    assert_process_healthy()


def test_replay_uses_new_static_input() -> None:
    """cap.replay() reruns the recorded work on whatever the static input holds now."""
    x = torch.zeros(256, device="cuda")
    with graphguard.capture() as cap:
        y = torch.relu(x * 2 + 1)
    x.copy_(torch.arange(256, device="cuda", dtype=torch.float32))
    cap.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, torch.relu(x * 2 + 1))


@pytest.mark.parametrize("policy", ["fallback", "warn"])
def test_fallback_finishes_region_eagerly_with_eager_result(policy: str) -> None:
    """With fallback (and warn) the capture ends cleanly and the region's result equals eager."""
    x = torch.randn(512, device="cuda")

    def step(t: torch.Tensor) -> torch.Tensor:
        y = torch.sin(t) * 3
        scale = float(y.abs().max())  # a host read in the middle of the step
        return y / scale + torch.cos(t)

    expected = step(x)
    with graphguard.capture(on_hazard=policy) as cap:
        out = step(x)
    assert cap.fell_back
    assert cap.graph is None
    assert [d.code for d in cap.hazards] == ["GG101"]
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)
    with pytest.raises(graphguard.NotCapturedError, match="fell back"):
        cap.replay()
    assert_process_healthy()


def test_guard_inside_plain_torch_capture_raises_even_with_fallback() -> None:
    """Under a capture graphguard does not own, every policy raises; torch's capture ends fine."""
    x = torch.randn(64, device="cuda")

    @graphguard.guard(on_hazard="fallback")
    def step(t: torch.Tensor) -> torch.Tensor:
        return t * float(t.sum())

    g = torch.cuda.CUDAGraph()
    with pytest.raises(graphguard.HostSyncError) as info, torch.cuda.graph(g):
        step(x)
    assert info.value.diagnostic.phase == "capture"
    assert_process_healthy()


def test_other_threads_sync_during_global_capture_is_reported() -> None:
    """Another thread's synchronize during a global-mode capture is refused, naming both threads."""
    x = torch.randn(64, device="cuda")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            torch.cuda.synchronize()
        except graphguard.HazardError as e:
            errors.append(e)

    with graphguard.capture(label="main-step") as cap:
        y = x * 2
        t = threading.Thread(target=worker, name="side-worker")
        t.start()
        t.join()
        y = y + 1
    assert len(errors) == 1
    diag = errors[0].diagnostic
    assert diag.code == "GG107" and diag.label == "main-step"
    assert "side-worker" in diag.message and "MainThread" in diag.message
    assert cap.graph is not None and diag in cap.hazards
    cap.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, x * 2 + 1)
    assert_process_healthy()


def test_other_threads_pin_memory_during_global_capture_is_refused() -> None:
    """Another thread's pin_memory() while a global-mode capture records is GG201 before torch
    allocates; Tensor.pin_memory is wrapped only while that capture records."""
    x = torch.randn(64, device="cuda")
    errors: list[BaseException] = []
    wrapped_during: list[bool] = []

    def worker() -> None:
        wrapped_during.append("pin_memory" in vars(torch.Tensor))
        try:
            torch.zeros(16).pin_memory()
        except graphguard.HazardError as e:
            errors.append(e)

    with graphguard.capture(label="main-step") as cap:
        y = x * 2
        t = threading.Thread(target=worker, name="pinning-worker")
        t.start()
        t.join()
    assert wrapped_during == [True]
    assert "pin_memory" not in vars(torch.Tensor)
    assert len(errors) == 1 and errors[0].diagnostic.code == "GG201"
    assert cap.graph is not None
    cap.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, x * 2)
    assert torch.zeros(4).pin_memory().is_pinned()  # after the capture: legal, not wrapped
    assert_process_healthy()


def test_other_threads_legal_work_is_not_reported() -> None:
    """A guard in one thread does not report another thread's legal eager work."""
    x = torch.randn(64, device="cuda")
    results: list[float] = []

    def worker() -> None:
        results.append(float((torch.ones(4, device="cuda") * 2).sum()))  # .item() is legal here

    with graphguard.capture(capture_error_mode="thread_local") as cap:
        y = x * 2
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert results == [8.0]
    assert cap.hazards == []
    cap.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, x * 2)


_FIRST_MATMUL_IN_CAPTURE = """
import torch, graphguard
x = torch.randn(16, 16, device="cuda")  # no matmul before the region: no cuBLAS handle yet
try:
    with graphguard.capture():
        y = x @ x
except Exception as e:
    print("raised:", type(e).__name__, str(e).splitlines()[0][:120])
else:
    print("raised: nothing")
# the process is usable: random ops, matmuls and a fresh capture with RNG in it
torch.randn(8, device="cuda").sum().item()
(x @ x).sum().item()
g = torch.cuda.CUDAGraph()
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    out = x @ x + torch.rand_like(x)
torch.cuda.current_stream().wait_stream(s)
with torch.cuda.graph(g):
    out = x @ x + torch.rand_like(x)
g.replay(); torch.cuda.synchronize()
print("healthy")
"""


def test_a_capture_torch_cannot_end_leaves_the_random_generators_usable() -> None:
    """A call graphguard does not intercept invalidates the capture (here the thread's first
    cuBLAS use inside it); torch's capture_end then raises before the CUDA generators leave
    capture mode. graphguard takes them out, so the process stays usable."""
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_MATMUL_IN_CAPTURE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "healthy", done.stdout + done.stderr[-2000:]
    assert lines[0].startswith("raised:") and lines[0] != "raised: nothing", done.stdout
