"""DSAIndexer: one lightning-indexer step (scores, top-k, index mask) with static shapes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._mask import update_index_mask, update_index_mask_unpatched
from ._scores import BACKENDS, indexer_scores
from ._topk import select_topk

__all__ = ["DSAIndexer", "IndexerOutput"]


class IndexerOutput(NamedTuple):
    """What one indexer step returns; every field has a static shape."""

    indices: Tensor
    """int64 [B, T, topk]: selected key positions in descending score order, then -1 sentinels."""
    mask: Tensor
    """[B, T, L]: 0 at selected positions, -inf elsewhere; add it to the attention scores."""
    row_has_keys: Tensor
    """bool [B, T]: False where the token selected nothing (its mask row is all -inf)."""


class DSAIndexer(nn.Module):
    """The DeepSeek Sparse Attention lightning-indexer step, capture-safe by construction.

    ``forward(q, k, w, seq_lens)`` scores every key (``indexer_scores``), keeps the top ``topk``
    (``select_topk``, -1 sentinels past the live length) and writes the additive index mask
    (``update_index_mask``). Shapes depend only on B, T, L_max and ``topk``, so one CUDA graph
    captured at (B_max, L_max) serves every live length: lengths travel in ``seq_lens``.

    Decode: T = 1 and ``seq_lens[b]`` counts the keys of row b (the current token included).
    Prefill: T > 1 and ``causal_positions[t]`` (or ``[b, t]``) is token t's absolute position;
    key n is visible iff n <= position (and n < seq_len when ``seq_lens`` is given too).
    Equivalently, pass ``seq_lens`` of shape [B, T] holding position + 1 for each token.
    Multi-token prediction: ``seq_lens`` of shape [B, T] gives each token its own length.

    All-invalid rows (policy): a token that can see no key (a padding row with seq_len 0, or
    a length <= 0) gets an all -1 index row and an all -inf mask row, unchanged. The mask is
    left honest on purpose: inventing a visible key (say position 0) would make attention read
    a key that does not exist. Softmax over such a row is NaN, so ``row_has_keys`` (bool [B, T])
    is returned for the consumer to zero those outputs without a host read, e.g.
    ``torch.where(out.row_has_keys[..., None], attn, 0)``.

    ``patched=False`` runs the same step with ``update_index_mask_unpatched``, the branchy seed
    form that syncs with the host and breaks capture; it exists so a checker can run one module
    in both forms. The module holds no parameters: the caller supplies q, k and w.

    ``backend`` picks the scorer (see ``indexer_scores``): "auto" (default) uses the fused
    Triton kernel where it can run and PyTorch elsewhere; "torch" and "triton" force one. With
    "triton" (or "auto" on CUDA), run the step once eagerly before capturing a graph so the
    kernel is compiled outside the capture.
    """

    def __init__(
        self,
        n_heads: int = 64,
        head_dim: int = 128,
        topk: int = 2048,
        *,
        patched: bool = True,
        mask_dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if n_heads < 1 or head_dim < 1 or topk < 1:
            raise ValueError(
                f"n_heads, head_dim and topk must be >= 1; got {n_heads}, {head_dim}, {topk}"
            )
        if not mask_dtype.is_floating_point:
            raise TypeError(f"mask_dtype must be a floating dtype; got {mask_dtype}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.topk = topk
        self.patched = patched
        self.mask_dtype = mask_dtype
        self.backend = backend

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, head_dim={self.head_dim}, topk={self.topk}, "
            f"patched={self.patched}, mask_dtype={self.mask_dtype}, backend={self.backend!r}"
        )

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        w: Tensor,
        seq_lens: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        causal_positions: Tensor | None = None,
    ) -> IndexerOutput:
        """Run one indexer step.

        Args:
            q: [B, T, n_heads, head_dim]. k: [B, L, head_dim]. w: [B, T, n_heads].
            seq_lens: integer device tensor [B] or [B, T]; see ``indexer_scores``.
            mask: optional output buffer [B, T, L]; it is overwritten (filled with -inf, then
                updated) and returned, so a static buffer works under graph capture. When None,
                a fresh buffer of ``mask_dtype`` is allocated.
            causal_positions: integer device tensor [T] or [B, T]; see ``indexer_scores``.
        """
        if q.dim() != 4 or q.shape[2] != self.n_heads or q.shape[3] != self.head_dim:
            raise ValueError(
                f"q must be [B, T, {self.n_heads}, {self.head_dim}]; got {tuple(q.shape)}"
            )
        scores = indexer_scores(
            q, k, w, seq_lens=seq_lens, causal_positions=causal_positions, backend=self.backend
        )
        indices = select_topk(scores, self.topk)
        if mask is None:
            mask = torch.full(
                scores.shape, float("-inf"), dtype=self.mask_dtype, device=scores.device
            )
        else:
            if mask.shape != scores.shape or mask.device != scores.device:
                raise ValueError(
                    f"mask must be {tuple(scores.shape)} on {scores.device}; "
                    f"got {tuple(mask.shape)} on {mask.device}"
                )
            mask.fill_(float("-inf"))
        update = update_index_mask if self.patched else update_index_mask_unpatched
        update(mask, indices)
        # With sorted picks, slot 0 alone would do; any() stays right for unsorted variants.
        row_has_keys = (indices >= 0).any(dim=-1)
        return IndexerOutput(indices, mask, row_has_keys)
