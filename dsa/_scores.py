"""Lightning-indexer scores: I[b,t,n] = sum_h w[b,t,h] * relu(q[b,t,h,:] . k[b,n,:]).

Everything here is capture-safe: shapes depend only on tensor shapes (never on tensor values),
lengths and positions stay on the device, and no Python branch looks at a tensor's contents.

Two backends compute the same scores: the pure-PyTorch path below (the reference, and the only
one on CPU) and the fused Triton kernel of ``_triton.py`` (CUDA, bf16/fp16 q and k), which
"auto" picks whenever it can take the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _triton
from ._fp8 import FP8_DTYPE, quantize_queries_fp8

__all__ = ["indexer_scores"]

BACKENDS = ("auto", "torch", "triton")

# `aten::bmm.dtype` (half inputs, float32 output) arrived in torch 2.8. It lets the head-weighted
# sum accumulate and land in float32 without first writing a float32 copy of the [B*T, H, L]
# logits, which is the largest tensor of the step. It has a CUDA kernel only and no autograd
# formula, so the float32 fallback below stays the reference path.
_HAS_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_inputs(q: Tensor, k: Tensor, w: Tensor, k_scale: Tensor | None) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, D]; got shape {tuple(q.shape)}")
    batch, tokens, heads, dim = q.shape
    if k.dim() != 3 or k.shape[0] != batch or k.shape[2] != dim:
        raise ValueError(f"k must be [B={batch}, L, D={dim}]; got shape {tuple(k.shape)}")
    if tuple(w.shape) != (batch, tokens, heads):
        raise ValueError(f"w must be [B={batch}, T={tokens}, H={heads}]; got {tuple(w.shape)}")
    if k.dtype == FP8_DTYPE:
        if k_scale is None:
            raise TypeError("fp8 keys need their per-key scales: pass k_scale [B, L] (float32)")
        if tuple(k_scale.shape) != tuple(k.shape[:2]) or k_scale.dtype != torch.float32:
            raise ValueError(
                f"k_scale must be float32 [B, L] = {tuple(k.shape[:2])}; "
                f"got {k_scale.dtype} {tuple(k_scale.shape)}"
            )
        if k_scale.device != k.device:
            raise ValueError(f"k_scale must be on {k.device}; got {k_scale.device}")
        if not q.is_floating_point() or q.dtype == FP8_DTYPE:
            raise TypeError(f"q must be float16, bfloat16 or float32 with fp8 keys; got {q.dtype}")
    elif k_scale is not None:
        raise TypeError(f"k_scale goes with float8_e4m3fn keys only; k is {k.dtype}")
    elif q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype; got {q.dtype} and {k.dtype}")
    if not (q.device == k.device == w.device):
        raise ValueError(f"q, k, w must share a device; got {q.device}, {k.device}, {w.device}")


def _visible_limit(
    seq_lens: Tensor | None,
    causal_positions: Tensor | None,
    batch: int,
    tokens: int,
    device: torch.device,
) -> Tensor | None:
    """Per-token count of visible keys, broadcastable to [B, T]; None when every key is visible.

    Key n is visible to token t of row b iff n < seq_lens[b] (or seq_lens[b, t]) and, when
    positions are given, n <= causal_positions[b, t]. Both bounds fold into one limit,
    min(seq_len, position + 1), so the mask is a single comparison against arange(L).
    """
    limit: Tensor | None = None
    if seq_lens is not None:
        if seq_lens.device != device or not _is_integer(seq_lens):
            raise TypeError(f"seq_lens must be an integer tensor on {device}")
        if tuple(seq_lens.shape) == (batch,):
            limit = seq_lens.view(batch, 1)
        elif tuple(seq_lens.shape) == (batch, tokens):
            limit = seq_lens
        else:
            raise ValueError(
                f"seq_lens must be [B={batch}] or [B={batch}, T={tokens}]; "
                f"got {tuple(seq_lens.shape)}"
            )
    if causal_positions is not None:
        if causal_positions.device != device or not _is_integer(causal_positions):
            raise TypeError(f"causal_positions must be an integer tensor on {device}")
        if tuple(causal_positions.shape) == (tokens,):
            upto = causal_positions.view(1, tokens) + 1
        elif tuple(causal_positions.shape) == (batch, tokens):
            upto = causal_positions + 1
        else:
            raise ValueError(
                f"causal_positions must be [T={tokens}] or [B={batch}, T={tokens}]; "
                f"got {tuple(causal_positions.shape)}"
            )
        limit = upto if limit is None else torch.minimum(limit, upto)
    return limit


def _use_triton(backend: str, q: Tensor, k: Tensor, w: Tensor, k_scale: Tensor | None) -> bool:
    """Resolve ``backend`` for these inputs; raise ValueError for an unknown or impossible one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        if not q.is_cuda or torch.compiler.is_compiling():
            return False
        return _triton.unsupported_reason(q, k, w, k_scale) is None
    reason = _triton.unsupported_reason(q, k, w, k_scale)
    if reason is not None:
        raise ValueError(f'backend="triton" cannot run on these inputs: {reason}')
    return True


def _weighted_relu_sum(weights: Tensor, logits: Tensor) -> Tensor:
    """float32 result of bmm(weights [N, 1, H], logits [N, H, L]), accumulated in float32."""
    if (
        _HAS_BMM_OUT_DTYPE
        and logits.is_cuda
        and logits.dtype in _HALF_DTYPES
        and weights.dtype == logits.dtype
        and not (logits.requires_grad or weights.requires_grad)
    ):
        return torch.bmm(weights, logits, out_dtype=torch.float32)
    return torch.bmm(weights.float(), logits.float())


def indexer_scores(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    *,
    seq_lens: Tensor | None = None,
    causal_positions: Tensor | None = None,
    backend: str = "auto",
    k_scale: Tensor | None = None,
) -> Tensor:
    """Return the float32 index scores [B, T, L]; keys a token may not see score -inf.

    Args:
        q: index queries [B, T, H, D].
        k: index keys [B, L, D], one key head shared by all H index heads. L is the static
            buffer width (L_max), not the live length. Either q's dtype, or float8_e4m3fn
            with ``k_scale`` (see ``quantize_keys_fp8``).
        w: per-token head weights [B, T, H] (the model's ``weights_proj(x) * H**-0.5 * D**-0.5``).
        seq_lens: integer device tensor, [B] (one length per row; 0 marks a padding row) or
            [B, T] (one length per query token, for multi-token prediction). Key n is visible
            iff n < length. Values above L mean "all of the buffer"; values <= 0 hide every key.
        causal_positions: integer device tensor, [T] (shared by the batch) or [B, T]: the
            absolute position of each query token. Key n is visible iff n <= position, which
            is the prefill causal mask. Combined with ``seq_lens`` by taking the stricter bound.
        backend: "torch" runs the pure-PyTorch path: q . k as one batched matmul in the input
            dtype (bf16 on GPU), relu per head, the head-weighted sum accumulated in float32.
            "triton" runs the fused kernel (``dsa._triton.fused_scores``): q . k accumulates
            in float32 on the tensor cores and the logits never reach memory; it raises
            ValueError where it cannot run (CPU tensors, no triton, unsupported dtype or
            geometry, ``DSA_DISABLE_TRITON=1``). "auto" (default) takes "triton" when it can
            run on these inputs and "torch" otherwise (always "torch" on CPU and while
            ``torch.compile`` traces). The fused kernel compiles on its first call: make that
            call eagerly (the usual warm-up) before capturing a CUDA graph.
        k_scale: float32 [B, L], the per-key scales of fp8 keys (required with them, refused
            without): key n stands for ``k[b, n].float() * k_scale[b, n]``. With fp8 keys both
            backends quantise q as well (``quantize_queries_fp8``: e4m3 values, a power-of-two
            scale per head folded into the head weight, the published design), compute q . k
            on the e4m3 values (exact products, float32 sums) and multiply each key's score by
            its scale after the head-weighted sum (scales are positive, so they commute with
            relu).

    No host reads, no value-dependent shapes, with either backend.
    """
    _check_inputs(q, k, w, k_scale)
    use_triton = _use_triton(backend, q, k, w, k_scale)
    batch, tokens, heads, dim = q.shape
    length = k.shape[1]
    limit = _visible_limit(seq_lens, causal_positions, batch, tokens, q.device)
    if use_triton:
        return _triton.fused_scores(q, k, w, limit, k_scale=k_scale)

    # bf16 q . k with float32 output (fp8 keys on CUDA), else q . k in the operands' dtype
    float32_out = False
    if k_scale is not None:
        # fp8 queries as well (see dsa._fp8): e4m3 values with a power-of-two scale per head,
        # the scale folded into the head weight; the products of e4m3 values are exact.
        # Products of e4m3 values reach 448**2, past float16's range: q . k runs in bfloat16
        # with float32 output where bmm offers it (CUDA), else in float32; both are exact
        # before the float32 sums.
        q_values, q_scales = quantize_queries_fp8(q)
        w = w.float() * q_scales
        float32_out = q.is_cuda and _HAS_BMM_OUT_DTYPE
        exact = torch.bfloat16 if float32_out else torch.float32
        q, k = q_values.to(exact), k.to(exact)
    # [B, T*H, D] @ [B, D, L] -> [B, T*H, L]: one GEMM reads the key cache once for all heads.
    if float32_out:
        logits = torch.bmm(
            q.reshape(batch, tokens * heads, dim), k.transpose(1, 2), out_dtype=torch.float32
        )
    else:
        logits = torch.bmm(q.reshape(batch, tokens * heads, dim), k.transpose(1, 2))
    logits = torch.relu_(logits).view(batch * tokens, heads, length)
    weights = w.reshape(batch * tokens, 1, heads)
    scores = _weighted_relu_sum(weights, logits).view(batch, tokens, length)
    if k_scale is not None:
        scores = scores.mul_(k_scale.view(batch, 1, length))

    if limit is not None:
        hidden = torch.arange(length, device=q.device) >= limit.unsqueeze(-1)
        scores = scores.masked_fill_(hidden, float("-inf"))
    return scores
