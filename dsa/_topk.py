"""Static-width top-k selection with a -1 sentinel, the graph-safe form of the indexer's top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["select_topk"]


def select_topk(scores: Tensor, k: int) -> Tensor:
    """Return int64 indices [..., k] of the k largest finite scores along the last dim.

    Slots that have no finite score to take hold the sentinel -1 (the vLLM, SGLang and FlashMLA
    convention). The width is always k, even when k exceeds the row width L: the missing slots
    are -1, so the result has a static shape and no host sync decides how many picks are real.

    Picks come in descending score order, so every -1 sits after every real pick. Scores that
    are -inf (hidden keys), +inf or NaN are never returned as picks (+inf and NaN still rank
    first and use up slots, which then hold -1). Among equal scores the
    order, and at the k-th place the choice, is unspecified: compare selections as sets.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    width = scores.shape[-1]
    take = min(k, width)
    if take == 0:
        return torch.full((*scores.shape[:-1], k), -1, dtype=torch.long, device=scores.device)
    values, indices = torch.topk(scores, take, dim=-1, largest=True, sorted=True)
    indices = indices.masked_fill_(~torch.isfinite(values), -1)
    if take < k:
        indices = F.pad(indices, (0, k - take), value=-1)
    return indices
