"""DSAIndexer: one lightning-indexer step (scores, top-k, index mask) with static shapes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import _triton_topk
from ._fp8 import FP8_DTYPE, quantize_keys_fp8
from ._mask import update_index_mask, update_index_mask_unpatched
from ._scores import BACKENDS, indexer_scores
from ._topk import select_topk, use_fused_topk

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

    ``backend`` picks the kernels: "torch" runs the pure-PyTorch scorer, ``torch.topk`` and the
    mask update (the reference, and the only path on CPU); "triton" runs the fused Triton scorer
    (``indexer_scores``) and the fused top-k + mask kernels (``dsa._triton_topk.topk_mask``:
    one to three launches, by row length and batch, select, sort and write the whole mask
    row, with no separate fill or scatter; for large batches of long rows one CUDA kernel
    compiled by NVRTC), raising ValueError where they cannot run; "auto" (default)
    takes each Triton kernel where it can run on the inputs and PyTorch elsewhere. Both paths
    return the same picks in the same order; where ``select_topk`` leaves ties open the Triton
    top-k takes lower indices first. With Triton, run the step once eagerly before capturing a
    graph so the kernels compile outside capture.
    ``patched=False`` keeps the branchy mask update whatever the backend (its top-k follows the
    backend, so both forms return identical outputs).

    ``order="index"`` returns each row's picks by ascending key position instead of by
    descending score (the same set, the same mask, -1 still last): sparse attention gathers by
    index and needs no order, and the fused kernel then skips its sort of the picks.

    ``fp8_keys=True`` stores nothing but changes what ``forward`` expects: float keys are
    quantised per key to e4m3 with a float32 scale (``quantize_keys_fp8``) before scoring, and
    keys that already are float8_e4m3fn are scored with their ``k_scale`` as given (the fast
    form: a real fp8 key cache, 132 bytes per key at D=128). fp8 keys with ``k_scale`` are
    accepted with ``fp8_keys=False`` too; the option only adds the quantisation of float keys.
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
        fp8_keys: bool = False,
        order: str = "score",
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
        if order not in _triton_topk.ORDERS:
            raise ValueError(f"order must be one of {_triton_topk.ORDERS}; got {order!r}")
        self.order = order
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.topk = topk
        self.patched = patched
        self.mask_dtype = mask_dtype
        self.backend = backend
        self.fp8_keys = fp8_keys

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, head_dim={self.head_dim}, topk={self.topk}, "
            f"patched={self.patched}, mask_dtype={self.mask_dtype}, backend={self.backend!r}, "
            f"fp8_keys={self.fp8_keys}, order={self.order!r}"
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
        k_scale: Tensor | None = None,
    ) -> IndexerOutput:
        """Run one indexer step.

        Args:
            q: [B, T, n_heads, head_dim]. k: [B, L, head_dim], in q's dtype or float8_e4m3fn
                (then with ``k_scale``). w: [B, T, n_heads].
            seq_lens: integer device tensor [B] or [B, T]; see ``indexer_scores``.
            mask: optional output buffer [B, T, L]; it is overwritten (filled with -inf, then
                updated) and returned, so a static buffer works under graph capture. When None,
                a fresh buffer of ``mask_dtype`` is allocated.
            causal_positions: integer device tensor [T] or [B, T]; see ``indexer_scores``.
            k_scale: float32 [B, L] per-key scales of float8_e4m3fn keys; see
                ``indexer_scores`` and ``quantize_keys_fp8``.
        """
        if q.dim() != 4 or q.shape[2] != self.n_heads or q.shape[3] != self.head_dim:
            raise ValueError(
                f"q must be [B, T, {self.n_heads}, {self.head_dim}]; got {tuple(q.shape)}"
            )
        if self.fp8_keys and k.dtype != FP8_DTYPE:
            if k_scale is not None:
                raise TypeError("k_scale goes with float8_e4m3fn keys; these keys are float")
            k, k_scale = quantize_keys_fp8(k)
        scores = indexer_scores(
            q,
            k,
            w,
            seq_lens=seq_lens,
            causal_positions=causal_positions,
            backend=self.backend,
            k_scale=k_scale,
        )
        if mask is None:
            mask = torch.empty(scores.shape, dtype=self.mask_dtype, device=scores.device)
        elif mask.shape != scores.shape or mask.device != scores.device:
            raise ValueError(
                f"mask must be {tuple(scores.shape)} on {scores.device}; "
                f"got {tuple(mask.shape)} on {mask.device}"
            )
        fused = use_fused_topk(self.backend, scores, self.topk)
        if fused and self.patched:
            # The fused kernel(s) write the picks, the whole mask row (-inf fill and selected
            # zeros) and row_has_keys; nothing else is launched.
            has_keys = torch.empty(scores.shape[:-1], dtype=torch.uint8, device=scores.device)
            indices = _triton_topk.topk_mask(
                scores, self.topk, mask, has_keys=has_keys, order=self.order
            )
            return IndexerOutput(indices, mask, has_keys.view(torch.bool))
        if fused:
            indices = _triton_topk.topk_mask(scores, self.topk, order=self.order)
        else:
            indices = select_topk(scores, self.topk, order=self.order)
        mask.fill_(float("-inf"))
        update = update_index_mask if self.patched else update_index_mask_unpatched
        update(mask, indices)
        # Not slot 0 alone: NaN or +inf scores put their -1 before the real picks.
        row_has_keys = (indices >= 0).any(dim=-1)
        return IndexerOutput(indices, mask, row_has_keys)
