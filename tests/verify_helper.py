"""A helper module for the replay-verification cases: a Python float read inside a helper.

graphguard's stale-scalar tracking reads the step's own code and the ``forward`` of its modules,
not the helper functions of other modules; a graph bakes ``SCALE`` at capture, so a change is
visible only to ``graphed(..., verify=N)``.
"""

from __future__ import annotations

import torch

SCALE = 0.5


def scaled(x: torch.Tensor) -> torch.Tensor:
    return x * SCALE
