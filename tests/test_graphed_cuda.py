"""graphed steps under real CUDA capture: replay equals eager, stale scalars and outputs caught."""

from __future__ import annotations

import gc

import pytest
import torch

import graphguard
from benchmarks._timing import warm_up

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def collect_garbage_first() -> None:
    """Free earlier tests' cyclic garbage before any capture."""
    gc.collect()
    torch.cuda.synchronize()


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 16)
    ).cuda()


def _train_step(model, opt, scale=None):
    def step(x, y):
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(i)
    return torch.randn(32, 64, device="cuda", generator=g), torch.randn(
        32, 16, device="cuda", generator=g
    )


def test_graphed_training_matches_eager_step_for_step() -> None:
    """Eight graphed SGD steps (3 warm-up, 1 capture, 4 replays) equal eight eager steps."""
    ref, model = _mlp(), _mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ref_step, step = _train_step(ref, ref_opt), graphguard.graphed(_train_step(model, opt))
    for i in range(8):
        x, y = _batch(i)
        torch.testing.assert_close(step(x, y) * 1, ref_step(x, y), rtol=1e-4, atol=1e-5)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    stats = step.stats
    assert stats["graphs"] == 1 and stats["replays"] == 5 and not stats["eager"]


def test_graphed_module_inference_replays_new_inputs() -> None:
    """graphed(module) replays with each call's inputs copied into the static buffers."""
    model = _mlp().eval()
    fast = graphguard.graphed(model, warmup=1)
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(8, 64, device="cuda")
            torch.testing.assert_close(fast(x) * 1, model(x))
    assert fast.stats["graphs"] == 1 and fast.stats["replays"] == 4


def test_ground_truth_stale_lr_and_scale_are_refused_before_replay() -> None:
    """The measured silent case (SGD lr=0.1 and scale=2.0 baked) is refused; params stay put."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"scale": 2.0}

    def step(x, y):
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x) * state["scale"], y)
        loss.backward()
        opt.step()
        return loss.detach()

    fast = graphguard.graphed(step, warmup=1)
    fast(*_batch(0))
    fast(*_batch(1))
    opt.param_groups[0]["lr"] = 0.0
    state["scale"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(graphguard.StaleHostScalarError) as info:
        fast(*_batch(2))
    torch.cuda.synchronize()
    names = dict(info.value.diagnostic.details)
    assert any("lr" in n for n in names) and any("scale" in n for n in names)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_capture_replay_checks_captured_optimizer() -> None:
    """cap.replay() refuses to replay after the captured optimizer's lr changed."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = _train_step(model, opt)
    x, y = _batch(0)
    warm_up(lambda: step(x, y), 3)
    with graphguard.capture() as cap:
        step(x, y)
    cap.replay()
    opt.param_groups[0]["lr"] = 0.01
    with pytest.raises(graphguard.StaleHostScalarError, match="lr"):
        cap.replay()


def test_adam_capturable_betas_change_is_stale() -> None:
    """Adam(capturable=True) keeps lr on the device but bakes betas: a change is reported."""
    model = _mlp()
    opt = torch.optim.Adam(
        model.parameters(), lr=torch.tensor(1e-3, device="cuda"), capturable=True
    )
    fast = graphguard.graphed(_train_step(model, opt), warmup=1)
    fast(*_batch(0))
    fast(*_batch(1))
    fast(*_batch(2))
    opt.param_groups[0]["betas"] = (0.8, 0.99)
    with pytest.raises(graphguard.StaleHostScalarError, match="betas"):
        fast(*_batch(3))


def test_stale_output_under_real_replay() -> None:
    """An output read after the next replay overwrote it raises GG701; its values did change."""
    fast = graphguard.graphed(lambda x: x * 2, warmup=0)
    first = fast(torch.ones(4, device="cuda"))
    fast(torch.full((4,), 5.0, device="cuda"))
    with pytest.raises(graphguard.StaleOutputError):
        first.sum()


def test_buckets_under_real_capture() -> None:
    """Padded shape classes replay with results equal to eager after slicing back."""
    lin = torch.nn.Linear(16, 8).cuda()
    fast = graphguard.graphed(lin, warmup=1, buckets=[8, 16])
    with torch.no_grad():
        # The first padded call of each shape class runs eagerly (the padding proof).
        for n in (5, 8, 3, 16, 11, 6, 12):
            x = torch.randn(n, 16, device="cuda")
            out = fast(x)
            assert out.shape == (n, 8)
            torch.testing.assert_close(out * 1, lin(x))
    assert fast.stats["graphs"] == 2


def test_fallback_under_capture_keeps_results_right() -> None:
    """A hazard while capturing, with fallback, gives eager results now and for every later call."""

    def step(x):
        y = torch.sin(x)
        return y / float(y.abs().max())

    fast = graphguard.graphed(step, warmup=1, on_hazard="fallback")
    for i in range(4):
        x = torch.randn(64, device="cuda") + i
        torch.testing.assert_close(fast(x), step(x))
    assert fast.stats["eager"]
    torch.randn(8, device="cuda").sum().item()
    torch.rand(4, device="cuda")


def test_recurrent_output_fed_back_under_replay() -> None:
    """h = step(h) under real replay copies the old output in before overwriting it."""
    fast = graphguard.graphed(lambda h: h * 0.5 + 1, warmup=1)
    h = torch.zeros(8, device="cuda")
    for _ in range(6):
        h = fast(h)
    torch.testing.assert_close(h * 1, torch.full((8,), 2 - 0.5**5, device="cuda"))


def test_cuda_tensor_lr_as_scalar_argument_is_a_host_read() -> None:
    """SGD with a CUDA tensor lr passes it as alpha=: a host read, refused under capture."""
    model = _mlp()
    # One eager backward first: without a warm-up, the first matrix product of the autograd
    # thread would create its cuBLAS handle inside the capture and fail before opt.step()
    # (which test order decided; an xdist worker that ran a backward earlier had one).
    x, y = _batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1, device="cuda"))
    fast = graphguard.graphed(_train_step(model, opt), warmup=0)
    with pytest.raises(graphguard.HostSyncError, match="alpha"):
        fast(*_batch(0))
