"""torch.compile inside guarded regions: no false report from the compiler, hazards still found.

dynamo guards a compiled function on the torch-function mode stack, so a function compiled
outside any region is compiled again the first time it is called inside one, and that
compilation saves and restores the generators (``preserve_rng_state``): graphguard must not take
the compiler's own calls for the user's. A hazard in the compiled function (a ``.item()`` that
breaks the graph) is still reported at its line. ``aot_eager`` runs the compiler's full front
end (dynamo and AOT autograd) without a C++ toolchain.
"""

from __future__ import annotations

import pytest
import torch

import graphguard
from graphguard import _patches

dynamo = pytest.importorskip("torch._dynamo")
BACKENDS = ["eager", "aot_eager"]
#: A device tensor: a CUDA one where CUDA exists, else a CPU tensor, which audit takes for one.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).to(
        DEV
    )


@pytest.fixture(autouse=True)
def _fresh_compiler():
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_compiled_outside_runs_silently_in_an_audit_region(backend: str) -> None:
    """Warm outside, called inside: dynamo recompiles (the mode stack changed) and its own
    generator save/restore is not reported; the result is the eager model's."""
    model, x = _model(), torch.randn(4, 8, device=DEV)
    compiled = torch.compile(model, backend=backend)
    compiled(x)
    with graphguard.capture(mode="audit") as cap:
        out = compiled(x)
        depth = torch._C._len_torch_function_stack()
        with pytest.raises(graphguard.HostSyncError):
            x.sum().item()  # the region still guards after the compiled call
    assert [d.code for d in cap.hazards] == ["GG101"]
    assert depth == 1
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert not _patches.is_installed()
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_compiled_inside_a_region_is_silent_and_right(backend: str) -> None:
    model, x = _model(), torch.randn(4, 8, device=DEV)
    compiled = torch.compile(model, backend=backend)
    for _ in range(2):  # compiled in the first region, from the cache in the second
        with graphguard.capture(mode="audit") as cap:
            out = compiled(x)
        assert cap.hazards == []
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hazard_in_compiled_code_is_reported_at_its_line(backend: str) -> None:
    """``.item()`` breaks the graph; graphguard reports it at the user's line, whether the
    function was compiled outside the region, inside it, or comes from the cache."""

    @torch.compile(backend=backend)
    def step(t: torch.Tensor) -> torch.Tensor:
        scale = t.sum().item()  # HAZARD
        return t * scale

    x = torch.randn(4, 8, device=DEV)
    step(x)
    for _ in range(2):
        with pytest.raises(graphguard.HostSyncError) as info, graphguard.capture(mode="audit"):
            step(x)
        d = info.value.diagnostic
        assert d.code == "GG101" and d.function == "step"
        assert d.source_line.strip() == "scale = t.sum().item()  # HAZARD"


def test_a_graphed_compiled_model_is_silent_and_right() -> None:
    """``graphed`` around a compiled model: warm-up, the capturing call and later calls (audit
    here) report nothing and compute what the model computes."""
    model = _model()
    step = graphguard.graphed(torch.compile(model, backend="aot_eager"), warmup=2)
    for i in range(5):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(i)).to(DEV)
        torch.testing.assert_close(step(x), model(x), rtol=0, atol=0)
    assert step.stats["eager"] is False, step.stats["eager_reason"]


def test_patch_wrappers_pass_the_compilers_own_calls_through() -> None:
    """While dynamo compiles (a CompileContext is set in this thread) a wrapped API is not
    reported; outside it, the same call is."""
    from torch._guards import CompileContext, compile_context

    with graphguard.capture(mode="audit"):
        with compile_context(CompileContext(None)):
            state = torch.get_rng_state()
            torch.set_rng_state(state)
        with pytest.raises(graphguard.RngStateError):
            torch.get_rng_state()


@pytest.mark.cuda
def test_a_compiled_step_warmed_in_a_region_captures_and_replays_right() -> None:
    """The recipe for capture(): warm the compiled step up inside a graphguard region (as
    graphed does), so the capture finds it compiled for the region's mode stack and does not
    compile during the capture."""
    model = _model()
    x = torch.randn(4, 8, device="cuda")
    compiled = torch.compile(model, backend="aot_eager")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            with graphguard.capture(mode="audit"):
                compiled(x)
    torch.cuda.current_stream().wait_stream(side)
    with graphguard.capture() as cap:
        out = compiled(x)
    assert cap.graph is not None and cap.hazards == []
    x.copy_(torch.randn(4, 8, device="cuda"))
    cap.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, model(x))


def test_without_the_compiler_loaded_regions_use_the_plain_mode() -> None:
    """A process that never loaded torch._dynamo gets HazardMode (no per-call compile check)
    and loads nothing of the compiler; once it is loaded, CompileAwareMode."""
    import subprocess
    import sys

    from _env import child_env

    code = (
        "import sys, torch, graphguard\n"
        "with graphguard.capture(mode='audit'):\n"
        "    first = type(torch.overrides._get_current_function_mode_stack()[0]).__name__\n"
        "loaded = 'torch._dynamo' in sys.modules\n"
        "import torch._dynamo\n"
        "with graphguard.capture(mode='audit'):\n"
        "    second = type(torch.overrides._get_current_function_mode_stack()[0]).__name__\n"
        "print(first, loaded, second)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True
    )
    assert done.stdout.split() == ["HazardMode", "False", "CompileAwareMode"]
