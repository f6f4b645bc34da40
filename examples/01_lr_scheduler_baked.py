"""A learning-rate scheduler against a graphed training step: the baked-lr hazard, and two fixes.

A CUDA graph records the optimizer's ``lr`` as a constant. When ``StepLR`` lowers the learning
rate after the capture, replaying the graph would keep training with the old value, silently.
``graphguard.graphed`` checks the scalars the captured step consumed before every replay, so the
call after the change raises ``graphguard.StaleHostScalarError`` (rule GG601) naming the
``opt.step()`` line, and nothing runs.

Two honest fixes follow, each checked against a plain eager training run:

1. re-capture when the learning rate changes (cheap for step schedules: one new graph per
   change, replays everywhere else);
2. ``on_hazard="fallback"``: at the change the step reports GG601 once and runs eagerly from
   then on, correct but without graphs.

The fix that keeps a single graph for the whole run is to keep the learning rate on the device:
``torch.optim.Adam(params, lr=torch.tensor(1e-3, device="cuda"), capturable=True)``. Schedulers
update a tensor lr in place (``fill_``), and a capturable optimizer reads it inside the graph.
A tensor lr alone is not enough: ``SGD`` (which has no ``capturable`` mode) still turns it into
a Python number when it steps, so the captured value is fixed all the same.

Expected output (the diagnostic is abridged here)::

    device: cpu
    call 1: loss=... lr=0.1
    call 2: loss=... lr=0.1
    call 3: loss=... lr=0.1
    call 4 refused before replay:
    GG601 [stale-host-scalar] a Python scalar baked into the graph has changed
      --> .../examples/01_lr_scheduler_baked.py:71 in train_step
    ...
    fix 1 (re-capture on lr change): 3 graphs, weights equal eager training
    fix 2 (on_hazard='fallback'): eager from the lr change, weights equal eager training
    OK

Run with ``python examples/01_lr_scheduler_baked.py`` (exit status 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import structlog
import torch

import graphguard

# graphguard logs each hazard as a structlog event; this program prints the diagnostic itself,
# so it turns the duplicate event off. Logging configuration belongs to the application, which
# is why graphguard never calls structlog.configure.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

device = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 8


def make_training(
    seed: int = 0,
) -> tuple[torch.nn.Linear, torch.optim.SGD, torch.optim.lr_scheduler.StepLR, Callable]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1, device=device)
    # A float lr is read on the host at every step: a capture records its current value.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=False)  # keep .grad tensors in place for the graph
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return model, opt, sched, train_step


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 4, generator=g).to(device), torch.randn(16, 1, generator=g).to(device)


def eager_weights() -> torch.Tensor:
    """The reference: STEPS plain eager steps with the same schedule."""
    model, _opt, sched, train_step = make_training()
    for i in range(STEPS):
        train_step(*batch(i))
        sched.step()
    return model.weight.detach().clone()


def show_the_hazard() -> None:
    _model, opt, sched, train_step = make_training()
    # call 1 warms up (eagerly), call 2 captures, later calls replay
    step = graphguard.graphed(train_step, warmup=1, label="train_step")
    for i in range(STEPS):
        lr = opt.param_groups[0]["lr"]
        try:
            loss = step(*batch(i))
        except graphguard.StaleHostScalarError as err:
            print(f"call {i + 1} refused before replay:")
            print(err)
            return
        print(f"call {i + 1}: loss={float(loss):.4f} lr={lr:g}")
        sched.step()  # lowers lr from 0.1 to 0.05 after the third call
    raise SystemExit("expected StaleHostScalarError after the learning rate changed")


def fix_recapture(reference: torch.Tensor) -> None:
    model, opt, sched, train_step = make_training()
    graphs = 0
    step, captured_lr = None, None
    for i in range(STEPS):
        lr = opt.param_groups[0]["lr"]
        if lr != captured_lr:  # a new learning rate: build (and so capture) a new graphed step
            if step is not None:
                graphs += step.stats["graphs"]
            step, captured_lr = graphguard.graphed(train_step, warmup=1, label="train_step"), lr
        step(*batch(i))
        sched.step()
    assert step is not None
    graphs += step.stats["graphs"]
    torch.testing.assert_close(model.weight.detach(), reference)
    print(f"fix 1 (re-capture on lr change): {graphs} graphs, weights equal eager training")


def fix_fallback(reference: torch.Tensor) -> None:
    model, _opt, sched, train_step = make_training()
    step = graphguard.graphed(train_step, warmup=1, on_hazard="fallback", label="train_step")
    for i in range(STEPS):
        step(*batch(i))  # the call after the first lr change reports GG601 and runs eagerly
        sched.step()
    assert step.stats["eager"], step.stats
    torch.testing.assert_close(model.weight.detach(), reference)
    print("fix 2 (on_hazard='fallback'): eager from the lr change, weights equal eager training")


def main() -> None:
    print(f"device: {device}")
    show_the_hazard()
    reference = eager_weights()
    fix_recapture(reference)
    fix_fallback(reference)
    print("OK")


if __name__ == "__main__":
    main()
