"""Making a step capture-safe, one rewrite at a time, with graphguard's audit as the checklist.

Version A is written the way eager code usually is: a Python ``if`` on a device reduction, an
``assert`` over ``torch.all(...)``, boolean-mask indexing ``y[y > 0]`` and ``loss.item()`` for
logging. Each of those makes the host wait for the GPU, which a CUDA graph cannot contain.

Each version runs once under ``graphguard.capture(mode="audit", on_hazard="warn")``: the body runs
eagerly (on any machine), every hazard is recorded in ``cap.hazards`` with its rule code, line
and title, and the run continues. The rewrites:

- version B validates on the device (``torch._assert_async``) and returns the loss as a tensor
  instead of ``loss.item()`` (the caller reads it after the step);
- version C replaces the branch and the boolean mask with ``torch.where``.

Version C reports nothing. Every version computes the same loss as version A, and version C then
runs as a graphed step (captured and replayed on a GPU) with the same results as eager.

Expected output::

    device: cpu
    version A (eager original): 4 hazards
      GG102 line 56: Python control flow on a device tensor
            | if (y < 0).any():
      ...
    version B (device-side validation): 2 hazards
      ...
    version C (branchless, static shapes): 0 hazards
    summary: A 4 -> B 2 -> C 0 hazards; losses equal version A's: yes
    version C graphed: 3 calls equal eager
    OK

Run with ``python examples/03_fix_unsafe_step.py`` (exit status 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import structlog
import torch

import graphguard

# The audit below reports hazards on purpose and this program prints them from `cap.hazards`;
# the duplicate structlog events are turned off. Logging configuration belongs to the
# application: graphguard never configures it.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

device = "cuda" if torch.cuda.is_available() else "cpu"


def step_a(x: torch.Tensor, w: torch.Tensor) -> float:
    """The original: correct eagerly, four host synchronisations."""
    y = x @ w
    if (y < 0).any():
        y = y.clamp(min=0)
    assert torch.all(torch.isfinite(y)), "non-finite activations"
    positive = y[y > 0]
    loss = positive.sum() / y.numel()
    return loss.item()


def step_b(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Validation stays on the device; the loss is returned as a tensor."""
    y = x @ w
    if (y < 0).any():
        y = y.clamp(min=0)
    torch._assert_async(torch.all(torch.isfinite(y)))
    positive = y[y > 0]
    return positive.sum() / y.numel()


def step_c(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """No branch and no data-dependent shape: every op has a fixed output shape."""
    y = x @ w
    y = torch.where(y < 0, 0.0, y)  # what the `if ...: clamp` did, for every element
    torch._assert_async(torch.all(torch.isfinite(y)))
    positive = torch.where(y > 0, y, 0.0)  # zeros add nothing to the sum, as dropped rows did
    return positive.sum() / y.numel()


VERSIONS: list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor], object]]] = [
    ("A", "eager original", step_a),
    ("B", "device-side validation", step_b),
    ("C", "branchless, static shapes", step_c),
]


def main() -> None:
    print(f"device: {device}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g).to(device)
    w = torch.randn(32, 16, generator=g).to(device)

    counts, losses = [], []
    for name, what, step in VERSIONS:
        with graphguard.capture(mode="audit", on_hazard="warn", label=f"step_{name}") as cap:
            result = step(x, w)
        losses.append(float(result))  # read on the host after the step, never inside it
        counts.append(len(cap.hazards))
        print(f"version {name} ({what}): {len(cap.hazards)} hazards")
        for h in cap.hazards:
            print(f"  {h.code} line {h.lineno}: {h.title}")
            print(f"        | {h.source_line}")

    same = all(abs(v - losses[0]) <= 1e-6 * max(1.0, abs(losses[0])) for v in losses)
    print(
        f"summary: A {counts[0]} -> B {counts[1]} -> C {counts[2]} hazards; "
        f"losses equal version A's: {'yes' if same else 'no'}"
    )
    assert counts[0] > counts[1] > counts[2] == 0 and same, (counts, losses)

    # The clean version as a graphed step: on a GPU it is captured once and replayed.
    fast = graphguard.graphed(step_c, warmup=1)
    for i in range(3):
        xi = x + i
        torch.testing.assert_close(fast(xi, w) * 1, step_c(xi, w))
    print("version C graphed: 3 calls equal eager")
    print("OK")


if __name__ == "__main__":
    main()
