"""graph_safe_optimizer: a learning-rate schedule that a graphed step honours at every call."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import graphguard
from graphguard._emulation import LIVE_SCALAR_ATTR
from graphguard._optim import graph_safe_optimizer
from graphguard._scalars import TensorIdentity, optimizer_scalars

HAS_CUDA = torch.cuda.is_available()
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="the CPU path of the recipe; CUDA tests below")

STEPS = 8


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(
        device
    )


def _batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 8, generator=gen).to(device), torch.randn(6, 4, generator=gen).to(device))
        for _ in range(STEPS)
    ]


def _train(
    device: str,
    make_opt: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    *,
    recipe: bool,
    graphed: bool,
    clip: bool = True,
    schedule: bool = True,
) -> tuple[list[torch.Tensor], list[float], graphguard.Graphed | None]:
    """Train STEPS steps with a cosine schedule: parameters, the lr of each call, the step."""
    model = _model(device)
    opt = make_opt(list(model.parameters()))
    if recipe:
        graph_safe_optimizer(opt)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss.detach()

    step = graphguard.graphed(train_step) if graphed else train_step
    lrs = []
    for x, y in _batches(device):
        lrs.append(float(opt.param_groups[0]["lr"]))
        step(x, y)
        if schedule:
            sched.step()
    params = [p.detach().cpu().clone() for p in model.parameters()]
    return params, lrs, step if isinstance(step, graphguard.Graphed) else None


def _adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(a, b, strict=True))


# --- what the recipe does to the optimizer ------------------------------------------------------
@cpu_only
def test_cpu_lr_becomes_live_cpu_tensor() -> None:
    """On the CPU each group's lr becomes a 0-dim CPU tensor holding the same value."""
    opt = graph_safe_optimizer(_adamw(list(_model("cpu").parameters())))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dim() == 0 and lr.device.type == "cpu"
    assert lr.item() == pytest.approx(1e-2)


@cpu_only
def test_cpu_optimizer_stays_non_capturable() -> None:
    """On the CPU an Adam-family optimizer keeps capturable=False, which torch requires there."""
    opt = torch.optim.AdamW(_model("cpu").parameters(), lr=1e-2, capturable=True)
    graph_safe_optimizer(opt)
    assert opt.param_groups[0]["capturable"] is False


@cpu_only
def test_cpu_foreach_is_turned_off_for_adam() -> None:
    """On the CPU foreach=True is turned off, since torch refuses a tensor lr with it there."""
    opt = graph_safe_optimizer(torch.optim.Adam(_model("cpu").parameters(), foreach=True))
    assert opt.param_groups[0]["foreach"] is False


def test_returns_the_same_optimizer() -> None:
    """The optimizer is changed in place and returned."""
    opt = _adamw(list(_model("cpu").parameters()))
    assert graph_safe_optimizer(opt) is opt


def test_every_param_group_gets_its_own_lr_tensor() -> None:
    """Each param group gets its own tensor, so a scheduler can move them independently."""
    model = _model("cpu")
    opt = torch.optim.AdamW(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 5e-3}]
    )
    graph_safe_optimizer(opt)
    first, second = (g["lr"] for g in opt.param_groups)
    assert first is not second and second.item() == pytest.approx(5e-3)


def test_live_lr_is_tracked_by_identity_not_by_value() -> None:
    """The recipe's lr tensors are live state: their value may change (in place), but not which
    object the group holds."""
    opt = graph_safe_optimizer(_adamw(list(_model("cpu").parameters())))
    assert getattr(opt.param_groups[0]["lr"], LIVE_SCALAR_ATTR) is True
    items = {t.name: t for t in optimizer_scalars(opt, "AdamW", "f.py", 1)}
    lr = items["AdamW.param_groups[0]['lr']"]
    assert isinstance(lr.captured, TensorIdentity)
    assert "AdamW.param_groups[0]['weight_decay']" in items
    opt.param_groups[0]["lr"].fill_(1e-4)
    assert lr.read() == lr.captured  # filled in place: the same object
    opt.param_groups[0]["lr"] = 1e-4
    assert lr.read() != lr.captured  # another object: the graph would not read it


def test_plain_cpu_tensor_lr_is_still_tracked() -> None:
    """A CPU tensor lr the recipe did not make stays a tracked (baked) host scalar."""
    opt = torch.optim.AdamW(_model("cpu").parameters(), lr=torch.tensor(1e-2))
    names = [t.name for t in optimizer_scalars(opt, "AdamW", "f.py", 1)]
    assert "AdamW.param_groups[0]['lr']" in names


def test_scheduler_updates_the_lr_tensor_in_place() -> None:
    """torch's schedulers fill_ the recipe's lr tensor, so the object the step reads stays."""
    opt = graph_safe_optimizer(_adamw(list(_model("cpu").parameters())))
    lr = opt.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] is lr and lr.item() < 1e-2


# --- refusals -----------------------------------------------------------------------------------
def test_unsupported_optimizer_is_refused() -> None:
    """An optimizer class whose lr torch cannot read on the device is a ConfigError naming it."""
    opt = torch.optim.RMSprop(_model("cpu").parameters())
    with pytest.raises(graphguard.ConfigError, match="RMSprop is not supported"):
        graph_safe_optimizer(opt)


def test_non_optimizer_is_refused() -> None:
    """Something that is not a torch optimizer is a ConfigError naming its type."""
    with pytest.raises(graphguard.ConfigError, match="got list"):
        graph_safe_optimizer([])  # type: ignore[type-var]


def test_multi_element_lr_is_refused() -> None:
    """A tensor lr of several elements is a ConfigError naming the group."""
    opt = torch.optim.SGD(_model("cpu").parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.2])
    with pytest.raises(graphguard.ConfigError, match=r"param_groups\[0\]\['lr'\]"):
        graph_safe_optimizer(opt)


def test_unsupported_device_is_refused() -> None:
    """Parameters on a device other than CUDA or the CPU are a ConfigError naming the device."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2, device="meta"))])
    with pytest.raises(graphguard.ConfigError, match="meta"):
        graph_safe_optimizer(opt)


# --- the contract on the CPU: schedules honoured under @graphed, audited -----------------------
@cpu_only
def test_cosine_schedule_under_graphed_matches_eager_twin() -> None:
    """A cosine-scheduled AdamW step under @graphed trains exactly like the eager twin."""
    graphed_params, lrs, step = _train("cpu", _adamw, recipe=True, graphed=True)
    twin_params, twin_lrs, _ = _train("cpu", _adamw, recipe=False, graphed=False)
    assert step is not None and step.stats["graphs"] == 1 and not step.stats["eager"]
    assert len(set(lrs)) == STEPS
    assert lrs == pytest.approx(twin_lrs)
    assert _same(graphed_params, twin_params)


def test_without_the_recipe_a_non_capturable_adamw_is_refused_at_its_step() -> None:
    """Without the recipe, AdamW(capturable=False) is GG602 at the first call, at opt.step()."""
    device = "cuda" if HAS_CUDA else "cpu"
    with pytest.raises(graphguard.StaleHostScalarError) as info:
        _train(device, _adamw, recipe=False, graphed=True)
    diagnostic = info.value.diagnostic
    assert diagnostic.code == "GG602"
    assert diagnostic.api == "AdamW.step()"
    assert diagnostic.source_line.strip() == "opt.step()"


def test_explicitly_capturable_adamw_is_not_gg602() -> None:
    """capturable=True groups pass the check (on CPU torch refuses them itself, so only CUDA)."""
    if not HAS_CUDA:
        pytest.skip("torch refuses capturable=True for CPU parameters")
    model = _model("cuda")
    lr = torch.tensor(1e-2, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, capturable=True)
    x, y = _batches("cuda")[0]
    with graphguard.capture(mode="audit", on_hazard="raise"):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_non_capturable_adamw_in_a_graphed_warm_up_is_silent() -> None:
    """GG602 is about capture: outside any region the same optimizer steps silently."""
    model = _model("cpu")
    opt = _adamw(list(model.parameters()))
    x, y = _batches("cpu")[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()  # no region: nothing to report, nothing raised


@cpu_only
def test_without_the_recipe_a_changed_sgd_lr_is_reported() -> None:
    """SGD has no capturable flag: without the recipe its scheduled lr is baked (GG601)."""
    with pytest.raises(graphguard.StaleHostScalarError) as info:
        _train("cpu", lambda p: torch.optim.SGD(p, lr=1e-2), recipe=False, graphed=True)
    assert info.value.diagnostic.code == "GG601"
    assert "SGD.param_groups[0]['lr']" in dict(info.value.diagnostic.details)


@cpu_only
def test_audit_still_checks_the_step() -> None:
    """With the recipe on the CPU, a host sync inside the graphed step is still reported."""
    model = _model("cpu")
    opt = graph_safe_optimizer(_adamw(list(model.parameters())))

    @graphguard.graphed
    def train_step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    x, y = _batches("cpu")[0]
    with pytest.raises(graphguard.HostSyncError):
        train_step(x, y)


@cpu_only
def test_changed_weight_decay_is_still_reported() -> None:
    """Hyperparameters other than lr stay baked numbers: changing one after capture is GG601."""
    model = _model("cpu")
    opt = graph_safe_optimizer(_adamw(list(model.parameters())))

    @graphguard.graphed
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss.detach()

    batches = _batches("cpu")
    for x, y in batches[:4]:
        train_step(x, y)
    opt.param_groups[0]["weight_decay"] = 0.2
    with pytest.raises(graphguard.StaleHostScalarError, match="weight_decay"):
        train_step(*batches[4])


# --- the contract on a GPU: one real graph, every lr change honoured ---------------------------
@pytest.mark.cuda
@pytest.mark.parametrize(
    "make_opt",
    [
        _adamw,
        lambda params: torch.optim.Adam(params, lr=1e-2),
        lambda params: torch.optim.AdamW(params, lr=1e-2, fused=True),
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, fused=True),
    ],
    ids=["adamw", "adam", "adamw-fused", "sgd-fused"],
)
def test_cuda_cosine_schedule_replays_with_every_lr(make_opt: Callable) -> None:
    """On CUDA one captured graph replays every step and matches the eager twin's parameters."""
    graphed_params, lrs, step = _train("cuda", make_opt, recipe=True, graphed=True)
    twin_params, _twin_lrs, _ = _train("cuda", make_opt, recipe=False, graphed=False)
    assert step is not None
    stats = step.stats
    assert stats["graphs"] == 1 and stats["replays"] == STEPS - 3 and not stats["eager"]
    assert len(set(lrs)) == STEPS
    assert _same(graphed_params, twin_params)


@pytest.mark.cuda
def test_cuda_replays_honour_the_lr_not_the_captured_value() -> None:
    """On CUDA the graphed run differs from a twin whose lr stays at its captured value."""
    graphed_params, _lrs, _ = _train("cuda", _adamw, recipe=True, graphed=True)
    frozen_params, _lrs, _ = _train("cuda", _adamw, recipe=True, graphed=True, schedule=False)
    assert not _same(graphed_params, frozen_params)


@pytest.mark.cuda
def test_cuda_lr_is_a_device_tensor_and_adam_is_capturable() -> None:
    """On CUDA each group's lr is a 0-dim CUDA tensor and Adam gets capturable=True."""
    opt = graph_safe_optimizer(_adamw(list(_model("cuda").parameters())))
    group = opt.param_groups[0]
    assert group["lr"].is_cuda and group["lr"].dim() == 0 and group["capturable"] is True


@pytest.mark.cuda
def test_cuda_existing_step_state_moves_to_the_device() -> None:
    """On CUDA state['step'] from earlier eager steps moves to the device, as capturable needs."""
    model = _model("cuda")
    opt = _adamw(list(model.parameters()))
    model(torch.randn(2, 8, device="cuda")).sum().backward()
    opt.step()
    graph_safe_optimizer(opt)
    assert all(s["step"].is_cuda for s in opt.state.values())


@pytest.mark.cuda
def test_cuda_sgd_without_fused_is_refused() -> None:
    """On CUDA SGD without fused=True is a ConfigError: it reads a tensor lr on the host."""
    opt = torch.optim.SGD(_model("cuda").parameters(), lr=0.1)
    with pytest.raises(graphguard.ConfigError, match="fused=True"):
        graph_safe_optimizer(opt)


@pytest.mark.cuda
def test_cuda_capture_replay_refuses_a_replaced_device_lr() -> None:
    """A capture whose Adam reads a CUDA tensor lr: ``fill_`` replays fine, putting a float in
    its place is GG601 at ``cap.replay()`` (the graph would keep reading the old tensor)."""
    model = _model("cuda")
    lr = torch.tensor(1e-3, device="cuda")
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=True)
    x = torch.randn(4, 8, device="cuda")

    def step() -> None:
        model(x).square().mean().backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    with graphguard.capture() as cap:
        step()
    lr.fill_(5e-4)
    cap.replay()
    opt.param_groups[0]["lr"] = 5e-4
    with pytest.raises(graphguard.StaleHostScalarError, match=r"param_groups\[0\]\['lr'\]"):
        cap.replay()
    torch.cuda.synchronize()
