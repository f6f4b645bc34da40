"""Static-width top-k selection with a -1 sentinel, the graph-safe form of the indexer's top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _triton_topk

__all__ = ["select_topk"]

TOPK_BACKENDS = ("auto", "torch", "triton")


def use_fused_topk(backend: str, scores: Tensor, k: int) -> bool:
    """Resolve ``backend`` for these scores; raise ValueError for an unknown or impossible one.

    "torch" never takes the fused kernel; "triton" always does (ValueError where it cannot run);
    "auto" takes it for CUDA scores it supports, outside ``torch.compile`` tracing.
    """
    if backend not in TOPK_BACKENDS:
        raise ValueError(f"backend must be one of {TOPK_BACKENDS}; got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        if not scores.is_cuda or torch.compiler.is_compiling():
            return False
        return _triton_topk.topk_unsupported_reason(scores, k) is None
    reason = _triton_topk.topk_unsupported_reason(scores, k)
    if reason is not None:
        raise ValueError(f'backend="triton" cannot run on these inputs: {reason}')
    return True


def select_topk(scores: Tensor, k: int, *, backend: str = "torch", order: str = "score") -> Tensor:
    """Return int64 indices [..., k] of the k largest finite scores along the last dim.

    Slots that have no finite score to take hold the sentinel -1 (the vLLM, SGLang and FlashMLA
    convention). The width is always k, even when k exceeds the row width L: the missing slots
    are -1, so the result has a static shape and no host sync decides how many picks are real.

    Picks come in descending score order, so every -1 for a hidden (-inf) or missing key sits
    after every real pick. Scores that are -inf (hidden keys), +inf or NaN are never returned
    as picks (+inf and NaN still rank first and use up slots, which then hold -1: those -1
    come first). Among equal scores the order, and at the k-th place the choice, is
    unspecified: compare selections as sets. -0.0 and +0.0 are equal scores.

    ``backend``: "torch" (default, the reference) uses ``torch.topk``; "triton" uses the fused
    radix-select kernel of ``dsa._triton_topk`` (CUDA, or CPU under ``TRITON_INTERPRET=1``),
    which returns the same picks in the same order and resolves what is unspecified above
    deterministically, lower index first; "auto" takes "triton" for CUDA scores it supports
    and "torch" otherwise.

    ``order="index"`` returns the same picks by ascending position instead (the -1 still
    after every real pick): for consumers that gather by index and need no order, such as
    sparse attention. The fused kernel then skips its sort of the k picks.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if order not in _triton_topk.ORDERS:
        raise ValueError(f"order must be one of {_triton_topk.ORDERS}; got {order!r}")
    if use_fused_topk(backend, scores, k):
        return _triton_topk.topk_mask(scores, k, order=order)
    width = scores.shape[-1]
    take = min(k, width)
    if take == 0:
        return torch.full((*scores.shape[:-1], k), -1, dtype=torch.long, device=scores.device)
    values, indices = torch.topk(scores, take, dim=-1, largest=True, sorted=True)
    indices = indices.masked_fill_(~torch.isfinite(values), -1)
    if order == "index":  # the real picks by position, then -1 (sorted last as `width`)
        indices = indices.masked_fill_(indices < 0, width).sort(dim=-1).values
        indices = indices.masked_fill_(indices == width, -1)
    if take < k:
        indices = F.pad(indices, (0, k - take), value=-1)
    return indices
