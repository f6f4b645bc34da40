"""graphed(..., verify=N): replays checked against the eager step (GG901, replay-mismatch).

CPU tests cover the API, its validation, the comparison and the report, and the contract that a
verified call leaves exactly the state an unverified call leaves. On the CPU a graphed step's
"replay" is an eager run, so there verify checks that the step is reproducible from the state
graphguard snapshots; the GPU tests (``test_verify_cuda.py``) check real graphs.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

import graphguard
from graphguard import ConfigError, ReplayMismatchError, Verify
from graphguard._verify import collect_state, compare, resolve_verify

DEV = "cuda" if torch.cuda.is_available() else "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # verify_helper


# --- the option -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, None, False])
def test_verify_off_values(value) -> None:
    assert resolve_verify(value) is None


def test_verify_int_means_that_many_replays() -> None:
    assert resolve_verify(3) == Verify(replays=3)
    assert resolve_verify(Verify(replays=2, rtol=0.1)) == Verify(replays=2, rtol=0.1)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1, "replays must be >= 1"),
        (True, "verify must be"),
        (2.5, "verify must be"),
        ("3", "verify must be"),
    ],
)
def test_bad_verify_is_a_config_error_at_decoration(value, match) -> None:
    with pytest.raises(ConfigError, match=match):
        graphguard.graphed(lambda x: x, verify=value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"replays": 0}, "replays must be >= 1"),
        ({"replays": True}, "replays must be an int"),
        ({"rtol": -1.0}, "rtol must be a finite number"),
        ({"atol": math.nan}, "atol must be a finite number"),
        ({"atol": "small"}, "atol must be a number"),
        ({"exclude": "output"}, "exclude must be a tuple"),
    ],
)
def test_bad_verify_fields_are_config_errors(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Verify(**kwargs)


# --- comparison -------------------------------------------------------------------------------
def test_compare_tolerance_scales_with_the_tensor_and_dtype() -> None:
    opts = Verify()
    a = torch.tensor([1000.0, 1.0])
    assert compare("t", a, a + torch.tensor([0.1, 0.0]), opts) is None  # 1e-4 of the scale
    found = compare("t", a, a + torch.tensor([0.0, 2.0]), opts)
    assert found is not None and found.path == "t" and found.max_abs == pytest.approx(2.0)
    bf = a.to(torch.bfloat16)
    assert compare("t", bf, bf + 4, opts) is None  # within bf16's tolerance of 1000
    assert compare("t", bf, bf * 2, opts) is not None


def test_compare_integers_exact_and_shapes_and_nans() -> None:
    opts = Verify()
    assert compare("i", torch.tensor([1, 2]), torch.tensor([1, 2]), opts) is None
    assert compare("i", torch.tensor([1, 2]), torch.tensor([1, 3]), opts) is not None
    shape = compare("s", torch.zeros(2), torch.zeros(3), opts)
    assert shape is not None and "(2,)" in shape.note and "(3,)" in shape.note
    nan = torch.tensor([math.nan, 1.0])
    assert compare("n", nan, nan.clone(), opts) is None
    assert compare("n", nan, torch.tensor([0.0, 1.0]), opts) is not None


def test_explicit_tolerance_overrides_the_dtype_default() -> None:
    a = torch.ones(4)
    assert compare("t", a, a + 0.5, Verify(atol=1.0)) is None
    assert compare("t", a, a + 0.5, Verify()) is not None


def test_state_paths_name_modules_optimizer_state_grads_and_objects() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()

    class Cache:
        def __init__(self) -> None:
            self.layers = [{"keys": torch.zeros(2)}]

    state = collect_state([("model", model), ("opt", opt), ("past_key_values", Cache())])
    paths = [p for p, _t in state.tensors]
    assert "model.0.weight" in paths and "model.0.weight.grad" in paths
    assert "opt.state[model.0.weight]['momentum_buffer']" in paths
    assert "past_key_values.layers[0]['keys']" in paths


# --- the graphed step -------------------------------------------------------------------------
def _train(verify: object, steps: int = 6, dropout: float = 0.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Dropout(dropout), torch.nn.Linear(16, 4)
    ).to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    @graphguard.graphed(warmup=1, verify=verify)
    def step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss.detach()

    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(6, 8, generator=gen).to(DEV), torch.randn(6, 4, generator=gen).to(DEV)
        losses.append(step(x, y).clone())
    return model, opt, losses, step


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_verified_training_leaves_the_state_an_unverified_run_leaves(dropout) -> None:
    """Verification is invisible: same parameters, momentum, losses and RNG state afterwards,
    bit for bit, with dropout drawing random numbers in every step."""
    plain, plain_opt, plain_losses, _ = _train(0, dropout=dropout)
    plain_rng = torch.get_rng_state()
    checked, checked_opt, checked_losses, step = _train(4, dropout=dropout)
    assert torch.equal(torch.get_rng_state(), plain_rng)
    for a, b in zip(plain.parameters(), checked.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain_opt.state.values(), checked_opt.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, checked_losses, strict=True))
    assert step.stats["graphs"] == 1


class _Counter:
    def __init__(self) -> None:
        self.calls = 0


def test_python_state_the_step_changes_is_restored_after_the_shadow_run() -> None:
    """The eager shadow run's changes to Python objects it reaches are undone."""
    counter = _Counter()

    @graphguard.graphed(warmup=0, verify=3)
    def step(x, c):
        c.calls += 1
        return x * 2

    x = torch.ones(2, device=DEV)
    for _ in range(4):
        step(x, counter)
    # one capture call and three replays; on the GPU the replays run no Python at all
    assert counter.calls == (1 if torch.cuda.is_available() else 4)


_values = itertools.count(1)


def test_hidden_state_makes_the_shadow_run_differ() -> None:
    """A step that consumes state graphguard cannot snapshot (an iterator) is GG901, naming the
    output, the replay and the difference; the call keeps the replay's result."""

    @graphguard.graphed(warmup=0, verify=2)
    def step(x):
        return x * next(_values)

    x = torch.ones(3, device=DEV)
    step(x)  # the capturing call
    with pytest.raises(ReplayMismatchError) as info:
        step(x)
    d = info.value.diagnostic
    assert d.code == "GG901" and d.kind == "replay-mismatch"
    assert "replay 1 of 'test_hidden_state_makes_the_shadow_run_differ.<locals>.step'" in d.message
    assert "at output: max abs diff" in d.message
    details = dict(d.details)
    assert "output" in details
    assert any(k.startswith("likely cause") for k in details)
    assert d.filename == __file__


def test_warn_logs_the_mismatch_and_returns_the_replay_result() -> None:
    values = itertools.count(1)

    @graphguard.graphed(warmup=0, verify=1, on_hazard="warn")
    def step(x):
        return x * next(values)

    x = torch.ones(2, device=DEV)
    step(x)
    out = step(x)
    assert step.stats["eager"]  # a mismatch under warn: replays are not trusted any more
    assert out.shape == (2,)


def test_exclude_leaves_a_path_out() -> None:
    values = itertools.count(1)

    @graphguard.graphed(warmup=0, verify=Verify(replays=2, exclude=("output",)))
    def step(x):
        return x * next(values)

    x = torch.ones(2, device=DEV)
    for _ in range(3):
        step(x)


def test_only_the_first_n_replays_are_verified() -> None:
    values = itertools.count(1)

    @graphguard.graphed(warmup=0, verify=1, on_hazard="raise")
    def step(x):
        return x * next(values)

    x = torch.ones(2, device=DEV)
    step(x)
    with pytest.raises(ReplayMismatchError):
        step(x)
    step(x)  # past the first replay: not verified, nothing raised


# --- capture(verify=N) ----------------------------------------------------------------------------
def test_capture_verify_is_validated() -> None:
    with pytest.raises(ConfigError, match="verify must be"):
        graphguard.capture(verify="yes")
    with pytest.raises(ConfigError, match="replays must be >= 1"):
        graphguard.capture(verify=-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the audit path: no graph to replay")
def test_capture_verify_in_audit_still_has_no_graph_to_replay() -> None:
    x = torch.ones(2)
    with graphguard.capture(mode="audit", verify=2) as cap:
        x * 2
    with pytest.raises(graphguard.NotCapturedError):
        cap.replay(eager=lambda: x * 2)


def _warm(fn) -> None:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.cuda
def test_capture_verify_catches_a_float_read_in_a_helper_module() -> None:
    import verify_helper

    x = torch.randn(8, 16, device="cuda")

    def body():
        return verify_helper.scaled(x)

    _warm(body)
    verify_helper.SCALE = 0.5
    with graphguard.capture(verify=2, label="helper") as cap:
        out = body()
    verify_helper.SCALE = 2.0  # the graph keeps 0.5
    with pytest.raises(ReplayMismatchError) as info:
        cap.replay(eager=body, outputs=out)
    assert "replay 1 of 'helper' differs from the eager step at output" in str(info.value)
    verify_helper.SCALE = 0.5


@pytest.mark.cuda
def test_capture_verify_legal_body_and_argument_errors() -> None:
    model = torch.nn.Linear(16, 16).cuda()
    x = torch.randn(4, 16, device="cuda")

    def body():
        return model(x).relu()

    _warm(body)
    with graphguard.capture(verify=2) as cap:
        out = body()
    with pytest.raises(ConfigError, match="needs the region's body as a callable"):
        cap.replay()
    for _ in range(2):
        x.copy_(torch.randn(4, 16, device="cuda"))
        cap.replay(eager=body, outputs=out)  # verified, clean
        torch.testing.assert_close(out, model(x).relu())
    with pytest.raises(ConfigError, match="for verified replays"):
        cap.replay(eager=body)  # past the verified replays
    cap.replay()


@pytest.mark.cuda
def test_graphed_verify_catches_a_float_read_in_a_helper_module() -> None:
    import verify_helper

    x = torch.randn(8, 16, device="cuda")
    step = graphguard.graphed(lambda: verify_helper.scaled(x), warmup=1, verify=2, label="h")
    verify_helper.SCALE = 0.5
    step()
    step()  # the capture
    verify_helper.SCALE = 3.0
    try:
        with pytest.raises(ReplayMismatchError, match="replay 1 of 'h'"):
            step()
    finally:
        verify_helper.SCALE = 0.5


def test_excluded_state_is_still_restored_after_the_shadow_run() -> None:
    """Excluding a tensor the step writes skips its comparison, not its restore: the parameter
    is updated once per call, as without verification."""
    w = torch.zeros(3, device=DEV)

    @graphguard.graphed(warmup=0, verify=Verify(replays=3, exclude=("w",)))
    def step(x):
        w.add_(x)
        return w.sum()

    x = torch.ones(3, device=DEV)
    for _ in range(4):
        step(x)
    torch.testing.assert_close(w, torch.full((3,), 4.0, device=DEV))


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the emulated replay runs Python; on a GPU this step is a graph that keeps a tensor "
    "allocated during the capture (the DynamicCache pattern in test_verify_cuda)",
)
def test_a_dict_entry_the_step_replaces_is_restored_by_identity() -> None:
    """A step that replaces a tensor in a dict it reaches: restoring compares entries by
    identity (comparing values would ask a tensor for its truth), and each call adds once."""
    box = {"t": torch.zeros(3)}

    @graphguard.graphed(warmup=0, verify=2)
    def step(x):
        box["t"] = box["t"] + x
        return box["t"] * 1

    x = torch.ones(3)
    for n in (1, 2, 3):
        torch.testing.assert_close(step(x) * 1, torch.full((3,), float(n)))
