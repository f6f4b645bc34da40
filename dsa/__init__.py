"""DeepSeek Sparse Attention (DSA) lightning-indexer workload in pure PyTorch.

The indexer scores every cached key for each query token,

    I[b, t, n] = sum_h w[b, t, h] * relu(q[b, t, h, :] . k[b, n, :]),

keeps the top k keys per token and turns them into an additive attention mask (0 where
selected, -inf elsewhere). This package writes that step with static shapes so one CUDA graph
captured at (B_max, L_max) replays for every live length:

- ``indexer_scores``: float32 scores [B, T, L]; keys past ``seq_lens`` or after a token's causal
  position score -inf.
- ``select_topk``: int64 indices [B, T, k] with -1 sentinels; width k even when k > L.
- ``update_index_mask``: branchless, in-place, order-independent mask update that never
  addresses memory with an invalid index.
- ``update_index_mask_unpatched``: the branchy seed form, kept as a negative reference; its two
  host reads are located by ``unpatched_hazard_lines``.
- ``DSAIndexer``: the whole step as an ``nn.Module`` (``patched=False`` for the seed form;
  ``backend="torch" | "triton" | "auto"`` picks the kernels; ``fp8_keys`` scores e4m3 keys).
- ``quantize_keys_fp8``: e4m3 keys with one float32 scale per key (132 bytes per key at D=128);
  ``quantize_queries_fp8``: the queries' e4m3 form that the scorers use with fp8 keys.

Triton is optional: ``import dsa`` never imports it. The fused kernels live in ``dsa._triton``
(scorer) and ``dsa._triton_topk`` (top-k + mask); the PyTorch path is the reference.

All-invalid rows: a token with no visible key (a padding row, seq_len 0) keeps an all -inf
mask row and an all -1 index row; ``DSAIndexer`` also returns ``row_has_keys`` (bool [B, T])
so the consumer can zero the NaN that softmax gives for such a row, without a host read.
"""

from __future__ import annotations

from ._fp8 import quantize_keys_fp8, quantize_queries_fp8
from ._indexer import DSAIndexer, IndexerOutput
from ._mask import (
    HazardLines,
    unpatched_hazard_lines,
    update_index_mask,
    update_index_mask_unpatched,
)
from ._scores import indexer_scores
from ._topk import select_topk

__all__ = [
    "DSAIndexer",
    "HazardLines",
    "IndexerOutput",
    "indexer_scores",
    "quantize_keys_fp8",
    "quantize_queries_fp8",
    "select_topk",
    "unpatched_hazard_lines",
    "update_index_mask",
    "update_index_mask_unpatched",
]
