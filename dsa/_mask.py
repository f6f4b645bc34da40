"""The index-mask update, in its capture-safe form and in the branchy form it replaced.

Both functions have one contract: every position named by a valid index (0 <= i < L, where L is
``mask.shape[-1]``) becomes exactly 0; every other position keeps whatever value it held; invalid
indices (-1, any other negative, anything >= L) are ignored and never used to address memory.
On CUDA an out-of-range scatter is a device-side assert that kills the context, under graph
replay too, so "ignored" must mean "never indexed", not "clamped and hoped for the best".

``update_index_mask_unpatched`` is kept on purpose as a negative reference: it reads two GPU
reductions back to the host (an ``assert`` and an ``if``), which breaks CUDA-graph capture.
Its two hazard lines carry trailing marker comments that ``unpatched_hazard_lines`` finds, so a
checker can assert that its diagnostics name exactly those lines.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HazardLines",
    "unpatched_hazard_lines",
    "update_index_mask",
    "update_index_mask_unpatched",
]


def _check_mask_and_indices(mask: Tensor, idx: Tensor) -> None:
    if not mask.is_floating_point():
        raise TypeError(f"mask must be a floating tensor; got {mask.dtype}")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"idx must be an integer tensor; got {idx.dtype}")
    if mask.dim() < 1 or idx.dim() != mask.dim() or idx.shape[:-1] != mask.shape[:-1]:
        raise ValueError(
            f"idx [..., k] must share mask's leading dims [..., L]; "
            f"got idx {tuple(idx.shape)} and mask {tuple(mask.shape)}"
        )
    if idx.device != mask.device:
        raise ValueError(f"idx and mask must share a device; got {idx.device} and {mask.device}")


def update_index_mask(mask: Tensor, idx: Tensor) -> Tensor:
    """Set ``mask[..., i] = 0`` for every valid index i in ``idx[...]``, in place; return mask.

    Capture-safe and branchless. Invalid indices are routed to a scratch column L of a
    [..., L + 1] bool "hit" tensor, so every scatter target is in range; the scratch column is
    then dropped. The scatter writes the constant True, so duplicate targets race harmlessly and
    the result does not depend on write order. ``masked_fill_`` then writes exactly 0 at hit
    positions, whatever they held before (-inf, 0, or any other value), and touches nothing else.

    Why not clamp + ``scatter_reduce_(reduce="amax")`` with a 0 / -inf source: amax keeps an
    existing positive value instead of writing 0, so it is only right on masks holding values
    <= 0. A clamp + scatter + "fix column 0" variant is only right on a fresh mask.
    """
    _check_mask_and_indices(mask, idx)
    width = mask.shape[-1]
    idx = idx.long()
    valid = (idx >= 0) & (idx < width)
    target = torch.where(valid, idx, width)
    hit = torch.zeros((*mask.shape[:-1], width + 1), dtype=torch.bool, device=mask.device)
    hit.scatter_(-1, target, True)
    return mask.masked_fill_(hit[..., :width], 0.0)


def update_index_mask_unpatched(mask: Tensor, idx: Tensor) -> Tensor:
    """Same contract as ``update_index_mask``, written the way the seed code was: NOT capture-safe.

    Two lines read a GPU reduction back to the host (each marked by a trailing marker comment):

    - validation: an ``assert`` over ``torch.all(...)``, the shape of the official
      ``assert torch.all(topk_indices == topk_indices_)``. It holds for every integer input, so
      it never changes the result; it only forces a device-to-host sync.
    - branch: ``if torch.any(invalid):`` picks between a fast scatter (all indices valid) and a
      filtering scatter through a widened scratch copy. Both paths give identical results.

    Everything after the branch is itself capture-safe, so under capture the two marked lines
    are the only hazards.
    """
    _check_mask_and_indices(mask, idx)
    width = mask.shape[-1]
    assert torch.all(idx == idx.long()), "indices changed in an int64 round trip"  # dsa: validation
    invalid = (idx < 0) | (idx >= width)
    if torch.any(invalid):  # dsa: branch
        scratch = F.pad(mask, (0, 1))
        scratch.scatter_(-1, torch.where(invalid, width, idx.long()), 0.0)
        mask.copy_(scratch[..., :width])
    else:
        mask.scatter_(-1, idx.long(), 0.0)
    return mask


@dataclass(frozen=True)
class HazardLines:
    """Where ``update_index_mask_unpatched`` reads the GPU: file and 1-based line numbers.

    ``file`` is the function's ``co_filename``, the same string a traceback or a frame walk
    reports for those lines.
    """

    file: str
    validation: int
    branch: int

    def as_dict(self) -> dict[str, int]:
        """Return ``{"validation": line, "branch": line}``."""
        return {"validation": self.validation, "branch": self.branch}


_MARKERS = {"validation": "# dsa: validation", "branch": "# dsa: branch"}


def unpatched_hazard_lines() -> HazardLines:
    """Locate the two marked hazard lines of ``update_index_mask_unpatched`` in its source.

    The lines are found by reading the source, not hard-coded, so edits above them cannot make
    the answer stale. Raises RuntimeError unless each marker ends exactly one line.
    """
    source, first = inspect.getsourcelines(update_index_mask_unpatched)
    found: dict[str, list[int]] = {key: [] for key in _MARKERS}
    for offset, text in enumerate(source):
        for key, marker in _MARKERS.items():
            if text.rstrip().endswith(marker):
                found[key].append(first + offset)
    for key, lines in found.items():
        if len(lines) != 1:
            raise RuntimeError(f"expected one line marked {_MARKERS[key]!r}; found {lines}")
    return HazardLines(
        file=update_index_mask_unpatched.__code__.co_filename,
        validation=found["validation"][0],
        branch=found["branch"][0],
    )
