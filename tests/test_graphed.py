"""graphed steps on the CPU: the same state machine as on a GPU, with eager calls under audit."""

from __future__ import annotations

import dataclasses
import math

import pytest
import structlog
import torch

import graphguard

# These exercise graphed's CPU path (eager calls under audit); on a CUDA machine they would
# capture CPU tensors, which means nothing (tests/test_graphed_cuda.py covers the GPU path).
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU path of graphed")

SCALE = 2.0
CFG = {"scale": 2.0, "unused": 1}
WEIGHTS = [0.5, 0.25]
T_STEP = 1
UNRELATED = 0


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def _batch(i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)


def _train_step(model, opt):
    def step(x, y):
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()  # the optimizer line
        return loss.detach()

    return step


def test_every_call_has_the_effect_of_one_eager_call() -> None:
    """Six graphed SGD steps move the parameters exactly as six eager steps do."""
    ref, model = _model(), _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_step, step = _train_step(ref, ref_opt), graphguard.graphed(_train_step(model, opt))
    for i in range(6):
        x, y = _batch(i)
        torch.testing.assert_close(step(x, y), ref_step(x, y))
    torch.testing.assert_close(model.weight, ref.weight)
    assert step.stats["calls"] == 6 and step.stats["graphs"] == 1


def test_nested_arguments_reach_the_step() -> None:
    """Tensors inside tuples, lists, dicts and dataclasses are passed through on every call."""

    @dataclasses.dataclass
    class Batch:
        tokens: torch.Tensor
        lengths: torch.Tensor

    @graphguard.graphed(warmup=1)
    def step(pair, items, named, batch):
        return pair[0] + pair[1] * items[0] + named["w"] * batch.tokens + batch.lengths

    for i in range(4):
        a = torch.full((3,), float(i))
        out = step((a, a), [a], {"w": a}, Batch(a, a))
        torch.testing.assert_close(out, a + a * a + a * a + a)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda opt, sched: sched.step(), "param_groups[0]['lr']"),
        (lambda opt, sched: opt.param_groups[0].update(lr=0.0), "param_groups[0]['lr']"),
        (
            lambda opt, sched: opt.param_groups[0].update(momentum=0.5),
            "param_groups[0]['momentum']",
        ),
        (lambda opt, sched: opt.param_groups[0].update(weight_decay=0.1), "['weight_decay']"),
    ],
    ids=["scheduler-lr", "hand-lr", "momentum", "weight-decay"],
)
def test_changed_optimizer_hyperparameter_is_stale(change, name: str) -> None:
    """A hyperparameter of an optimizer whose step was captured, changed later, is GG601."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    step = graphguard.graphed(_train_step(model, opt), warmup=1)
    step(*_batch(0))
    step(*_batch(1))  # captured here
    step(*_batch(2))  # replay: nothing changed
    change(opt, sched)
    with pytest.raises(graphguard.StaleHostScalarError) as info:
        step(*_batch(3))
    d = info.value.diagnostic
    assert d.kind == "stale-host-scalar" and name in d.message
    assert "opt.step()  # the optimizer line" in d.source_line


def test_changed_adam_betas_are_stale() -> None:
    """Adam's betas (a tuple of floats) are tracked like any other hyperparameter."""
    model = _model()
    # the recipe: a non-capturable Adam would be refused at its step (GG602) before any replay
    opt = graphguard.graph_safe_optimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
    step = graphguard.graphed(_train_step(model, opt), warmup=0)
    step(*_batch(0))
    opt.param_groups[0]["betas"] = (0.5, 0.999)
    with pytest.raises(graphguard.StaleHostScalarError, match="betas"):
        step(*_batch(1))


def test_a_live_lr_replaced_instead_of_filled_is_stale() -> None:
    """graph_safe_optimizer's lr is a tensor the graph reads: ``fill_`` reaches the graph, but
    ``group["lr"] = 0.01`` puts another object in its place, which no replay reads (GG601,
    described without a tensor value)."""
    model = _model()
    opt = graphguard.graph_safe_optimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
    step = graphguard.graphed(_train_step(model, opt), warmup=0)
    step(*_batch(0))
    opt.param_groups[0]["lr"].fill_(5e-4)  # in place: the recipe, no report
    step(*_batch(1))
    opt.param_groups[0]["lr"] = 2e-4
    with pytest.raises(graphguard.StaleHostScalarError) as info:
        step(*_batch(2))
    d = info.value.diagnostic
    assert "param_groups[0]['lr']" in d.message
    assert "object the graph reads" in d.message and "0.0002" in d.message
    assert "0.0005" not in str(d), "a tensor's value reached the diagnostic"


def test_a_live_lr_replaced_by_another_tensor_is_stale() -> None:
    """The same for a new tensor put in the old one's place: the graph reads the old one."""
    model = _model()
    opt = graphguard.graph_safe_optimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
    step = graphguard.graphed(_train_step(model, opt), warmup=0)
    step(*_batch(0))
    old = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = old.clone()
    with pytest.raises(graphguard.StaleHostScalarError, match=r"param_groups\[0\]\['lr'\]"):
        step(*_batch(1))
    opt.param_groups[0]["lr"] = old  # the same object again: replays are right again
    step(*_batch(2))


def test_changed_global_dict_entry_and_list_item_are_stale() -> None:
    """Globals read by the step, including dict entries and list items, are tracked."""

    @graphguard.graphed(warmup=0)
    def step(x):
        return x * SCALE * CFG["scale"] + WEIGHTS[0]

    x = torch.ones(3)
    step(x)
    step(x)
    CFG["unused"] = 5  # never read by the step: no report
    step(x)
    CFG["scale"] = 3.0
    try:
        with pytest.raises(graphguard.StaleHostScalarError) as info:
            step(x)
        assert "CFG['scale']" in info.value.diagnostic.message
        assert "2.0" in info.value.diagnostic.message and "3.0" in info.value.diagnostic.message
        assert 'CFG["scale"]' in info.value.diagnostic.source_line
    finally:
        CFG["scale"] = 2.0
    WEIGHTS[0] = 0.75
    try:
        with pytest.raises(graphguard.StaleHostScalarError, match=r"WEIGHTS\[0\]"):
            step(x)
    finally:
        WEIGHTS[0] = 0.5


def test_changed_closure_variable_is_stale() -> None:
    """A closure variable read by the step is tracked and reported with its name."""
    temperature = 1.0

    @graphguard.graphed(warmup=0)
    def step(x):
        return x / temperature

    step(torch.ones(2))
    temperature = 0.5
    with pytest.raises(graphguard.StaleHostScalarError, match="temperature"):
        step(torch.ones(2))


def test_changed_module_attribute_is_stale() -> None:
    """An attribute of an nn.Module read in forward (a temperature) is tracked."""

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.temperature = 2.0
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.linear(x) / self.temperature

    model = Scaled()
    fast = graphguard.graphed(model, warmup=0)
    assert isinstance(fast, torch.nn.Module)
    x = torch.randn(2, 3)
    torch.testing.assert_close(fast(x), model(x))
    fast(x)
    model.temperature = 4.0
    with pytest.raises(graphguard.StaleHostScalarError, match="temperature") as info:
        fast(x)
    assert "self.temperature" in info.value.diagnostic.source_line


def test_changed_scalar_argument_is_stale() -> None:
    """A Python float argument passed with a new value is reported by its parameter name."""

    @graphguard.graphed(warmup=0)
    def step(x, alpha):
        return x * alpha

    step(torch.ones(2), 0.5)
    step(torch.ones(2), 0.5)
    with pytest.raises(graphguard.StaleHostScalarError, match="argument alpha"):
        step(torch.ones(2), 0.25)


def test_step_counter_in_bias_correction_is_stale() -> None:
    """A global step counter used as `1 - beta ** t` is reported when it advances."""
    global T_STEP

    @graphguard.graphed(warmup=0)
    def step(x):
        return x / (1 - 0.9**T_STEP)

    step(torch.ones(2))
    T_STEP += 1
    try:
        with pytest.raises(graphguard.StaleHostScalarError, match="T_STEP"):
            step(torch.ones(2))
    finally:
        T_STEP = 1


def test_counter_advanced_by_the_step_itself_is_stale() -> None:
    """A step that advances its own counter is reported: replays would not advance it."""
    global T_STEP

    @graphguard.graphed(warmup=0)
    def step(x):
        global T_STEP
        T_STEP += 1
        return x * math.sqrt(T_STEP)

    try:
        step(torch.ones(2))
        with pytest.raises(graphguard.StaleHostScalarError, match="T_STEP"):
            step(torch.ones(2))
    finally:
        T_STEP = 1


def test_unconsumed_changes_are_not_reported() -> None:
    """Changing a global the step never reads, or an optimizer it never steps, reports nothing."""
    global UNRELATED
    other = torch.optim.SGD(_model().parameters(), lr=0.1)

    @graphguard.graphed(warmup=0)
    def step(x):
        return x * SCALE

    with structlog.testing.capture_logs() as logs:
        for i in range(4):
            UNRELATED = i
            other.param_groups[0]["lr"] = 0.1 * i
            torch.testing.assert_close(step(torch.ones(2)), torch.full((2,), SCALE))
    assert not [e for e in logs if e["event"] == "graphguard.hazard"]
    UNRELATED = 0


def test_stale_scalar_with_fallback_goes_eager_for_good() -> None:
    """With on_hazard='fallback' a stale scalar makes the step eager, with correct results."""
    scale = 1.0

    @graphguard.graphed(warmup=0, on_hazard="fallback")
    def step(x):
        return x * scale

    step(torch.ones(2))
    scale = 3.0
    torch.testing.assert_close(step(torch.ones(2)), torch.full((2,), 3.0))
    assert step.stats["eager"]


def test_output_read_after_next_call_is_stale_output() -> None:
    """An output kept across calls and read after the next call raises GG701 at the read."""

    @graphguard.graphed(warmup=0)
    def step(x):
        return x * 2

    prev = step(torch.ones(2))
    assert prev.shape == (2,)
    cur = step(torch.ones(2) * 3)
    torch.testing.assert_close(cur * 1, torch.full((2,), 6.0))
    with pytest.raises(graphguard.StaleOutputError) as info:
        prev + 1  # the stale read
    assert info.value.diagnostic.source_line == "prev + 1  # the stale read"
    assert info.value.kind == "stale-output"


def test_cloned_outputs_are_never_stale() -> None:
    """clone_outputs=True returns plain tensors that stay valid across calls."""

    @graphguard.graphed(warmup=0, clone_outputs=True)
    def step(x):
        return x * 2

    prev = step(torch.ones(2))
    step(torch.ones(2) * 3)
    assert type(prev) is torch.Tensor
    torch.testing.assert_close(prev + 1, torch.full((2,), 3.0))


def test_new_shapes_get_their_own_shape_class_up_to_the_limit() -> None:
    """Each input shape is its own shape class; past max_graphs calls run eagerly, warned once."""

    @graphguard.graphed(warmup=0, max_graphs=2)
    def step(x):
        return x + 1

    with structlog.testing.capture_logs() as logs:
        for n in (1, 2, 3, 3, 4):
            torch.testing.assert_close(step(torch.zeros(n)), torch.ones(n))
    assert step.stats["graphs"] == 2
    assert len([e for e in logs if e["event"] == "graphguard.graphed.limit"]) == 1


def test_graph_limit_can_be_an_error() -> None:
    """With on_graph_limit='error' a shape class past the limit raises GraphLimitError."""

    @graphguard.graphed(warmup=0, max_graphs=1, on_graph_limit="error")
    def step(x):
        return x + 1

    step(torch.zeros(2))
    with pytest.raises(graphguard.GraphLimitError, match="max_graphs=1"):
        step(torch.zeros(3))


def test_buckets_pad_inputs_and_slice_outputs() -> None:
    """With buckets the batch is padded to the next bucket and outputs are sliced back."""

    @graphguard.graphed(warmup=0, buckets=[4, 8])
    def step(x):
        return x * 2

    # The first padded call of a shape class runs eagerly (it proves padding changes nothing).
    for n in (3, 3, 4, 2, 7, 7):
        x = torch.arange(float(n * 2)).view(n, 2)
        out = step(x)
        assert out.shape == (n, 2)
        torch.testing.assert_close(out * 1, x * 2)
    assert step.stats["graphs"] == 2


def test_hazard_with_fallback_makes_step_eager_for_good() -> None:
    """A hazard during the capturing call, with fallback, logs once and keeps the step working."""

    @graphguard.graphed(warmup=0, on_hazard="fallback")
    def step(x):
        return x / float(x.abs().max())

    x = torch.tensor([1.0, -4.0])
    for _ in range(3):
        torch.testing.assert_close(step(x), x / 4.0)
    assert step.stats["eager"]


def test_hazard_with_raise_fails_the_call() -> None:
    """With the default policy a hazard in the step raises at the user's line."""

    @graphguard.graphed
    def step(x):
        return x[x > 0]

    with pytest.raises(graphguard.HostSyncError) as info:
        step(torch.ones(3))
    assert info.value.diagnostic.source_line == "return x[x > 0]"


def test_training_and_eval_are_separate_shape_classes() -> None:
    """model.eval() after capture in train mode gets its own graph, not a stale report."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    fast = graphguard.graphed(model, warmup=0)
    x = torch.randn(2, 3)
    fast(x)
    fast.eval()
    torch.testing.assert_close(fast(x) * 1, model(x))
    assert fast.stats["graphs"] == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup": -1}, "warmup"),
        ({"max_graphs": 0}, "max_graphs"),
        ({"on_graph_limit": "drop"}, "on_graph_limit"),
        ({"buckets": [0, 4]}, "buckets"),
        ({"on_hazard": "ignore"}, "on_hazard"),
        ({"label": 5}, "label"),
    ],
)
def test_bad_graphed_options_raise_config_error(kwargs: dict, name: str) -> None:
    """graphed() rejects bad options at decoration time, naming the option."""
    with pytest.raises(graphguard.ConfigError, match=name):
        graphguard.graphed(**kwargs)


def test_graphed_rejects_non_callables() -> None:
    """graphed(42) is a ConfigError, not a failure at the first call."""
    with pytest.raises(graphguard.ConfigError, match=r"function or an nn\.Module"):
        graphguard.graphed(42)


def test_output_fed_back_as_input_is_not_stale() -> None:
    """A recurrent step (h = step(h)) reads its last output as input: that is not GG701."""

    @graphguard.graphed(warmup=0)
    def step(h):
        return h * 0.5 + 1

    h = torch.zeros(3)
    for _ in range(5):
        h = step(h)
    torch.testing.assert_close(h * 1, torch.full((3,), 1.9375))


def test_cpu_tensor_learning_rate_change_is_stale() -> None:
    """SGD with a CPU tensor lr bakes its value like a float; a scheduler change is GG601."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    step = graphguard.graphed(_train_step(model, opt), warmup=0)
    step(*_batch(0))
    step(*_batch(1))
    sched.step()
    with pytest.raises(graphguard.StaleHostScalarError, match="lr"):
        step(*_batch(2))


def test_graphed_function_and_method_share_the_stats_attribute() -> None:
    """graphed functions, methods and modules all expose .stats as a dict."""

    class Stepper:
        def __init__(self) -> None:
            self.scale = 2.0

        @graphguard.graphed(warmup=0)
        def step(self, x):
            return x * self.scale

    s = Stepper()
    torch.testing.assert_close(s.step(torch.ones(2)) * 1, torch.full((2,), 2.0))
    s.step(torch.ones(2))
    assert Stepper.step.stats["calls"] == 2
    assert isinstance(graphguard.graphed(torch.nn.Linear(2, 2)).stats, dict)


def test_buckets_pad_on_cpu_too() -> None:
    """On the CPU path the step sees the padded batch, as it would under a real capture."""
    seen = []

    @graphguard.graphed(warmup=0, buckets=[4])
    def step(x):
        seen.append(x.shape[0])
        return x + 1

    assert step(torch.zeros(3, 2)).shape == (3, 2)
    assert step(torch.zeros(3, 2)).shape == (3, 2)
    assert seen[-1] == 4
