"""Fused Triton top-k and index-mask kernels for the indexer (CUDA; CPU under the interpreter).

``topk_mask`` replaces ``select_topk`` followed by the -inf fill and ``update_index_mask`` (and the
``row_has_keys`` reduction of ``DSAIndexer``). One program owns one row of scores [L] (a (b, t)
pair) and:

1. finds the exact k-th largest score by a radix select over order-preserving 32-bit keys:
   passes over the row, each a histogram of one digit of the keys (most significant first;
   ``radix_bits`` wide, 5 by default: 32 bins, at most seven passes) among the keys that match
   the digits chosen so far. After the last pass the threshold T is the k-th largest key and
   ``ties`` is how many keys equal to T belong to the top k. The passes stop early once every
   key matching the digits chosen so far is a pick (usually a pass or two before the last);
   T then has zeros below those digits and every key of that bucket is >= T;
2. compacts the selection in one more pass: every key > T, and the first ``ties`` keys == T in
   index order. Each pick is written as one int64 ``(key << 32) | (2**31 - 1 - index)`` into the
   row of the index output, which doubles as scratch space. The same pass writes the whole mask
   row: 0 at picked positions with a finite score, -inf everywhere else (the fused mask update:
   no separate fill, no scatter, nothing addressed by an index);
3. sorts the k packed picks in registers (a bitonic sort, ``tl.sort``), descending, and writes
   the indices, with -1 for non-finite picks and for the slots past min(k, L), and optionally
   whether the row picked anything. With ``order="index"`` step 2 writes the finite picks'
   indices themselves, in the order it finds them (ascending position), and there is no sort.

Rows much longer than k take two launches, so that more than one SM works on a row: the first
splits each row into S segments and reduces each to its own top k (steps 1 and 2, the picks kept
packed in index order, the mask row filled with -inf); the second runs steps 1 to 3 on the S * k
packed candidates of each row and writes the zeros of the mask at its picks. Ordering by the
packed value (key, then lower index) is a total order, so the top k of the union of the
segments' top k is the top k of the row, ties included: the result does not depend on S.

The order-preserving key of a float32 x is its bit pattern with the sign bit flipped for x >= 0
and every bit flipped for x < 0, so unsigned key order is float order; -0.0 is first folded into
+0.0 (they compare equal) and every NaN becomes the largest key, as ``torch.topk`` ranks NaN
above +inf. Hence the results equal ``select_topk``'s bit for bit wherever ``select_topk``
defines them: the same picks in the same descending order, NaN and +inf taking the first slots
as -1, -inf and missing positions (k > L) as trailing -1. Where ``select_topk`` leaves the
choice open (equal scores at the k-th place, the order among equal scores), this kernel is
deterministic: lower indices first.

Everything is capture-safe: launches depend only on shapes; lengths, thresholds and counts live
on the device; the kernels run on the current stream. The wrappers allocate their outputs (and
the candidate buffer of the two-launch form) from PyTorch's caching allocator, as graph capture
expects, and read nothing back.

``fill_index_mask`` is the mask update alone for indices that come from elsewhere: one kernel
writes -inf over each row and then 0 at its valid indices (0 <= i < L); invalid indices are
masked out of the store, never used as addresses.
"""

# No `from __future__ import annotations` here: Triton reads the kernels' annotations
# (tl.constexpr) as objects.
import functools
import math
import os
from typing import Any

import torch
from torch import Tensor

from ._triton import DISABLE_ENV, _disabled, _import_error, _on_kernel_device

__all__ = [
    "MAX_TOPK",
    "ORDERS",
    "RADIX_WIDTHS",
    "default_segments",
    "fill_index_mask",
    "topk_mask",
    "topk_unsupported_reason",
]

#: How the picks of a row are ordered: by descending score, or by ascending position.
ORDERS = ("score", "index")
#: Digit widths of the radix select (bits per pass; ceil(32 / width) passes).
RADIX_WIDTHS = (4, 5, 6, 7, 8)
#: The width ``topk_mask`` uses when none is given.
DEFAULT_RADIX_BITS = 5
# The picks of one row are sorted in registers: next_power_of_two(k) int64 values per program.
MAX_TOPK = 4096
# Positions are packed into 31 bits next to the key.
_MAX_LENGTH = 1 << 31
_SCORE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Bound by _load(): triton.language and the jitted helper. Kernel bodies resolve names through
# module globals, so both must live here rather than in _load's closure.
tl: Any = None
_ordered_key: Any = None


def _device_reason(*tensors: Tensor) -> str | None:
    if _on_kernel_device(*tensors):
        return None
    devices = ", ".join(str(t.device) for t in tensors)
    return f"the fused kernels need CUDA tensors (got {devices}; CPU needs TRITON_INTERPRET=1)"


def topk_unsupported_reason(scores: Tensor, k: int) -> str | None:
    """Why ``topk_mask`` cannot take these scores, or None when it can.

    Needs: triton importable and not disabled by ``DSA_DISABLE_TRITON``; CUDA scores (or CPU
    with ``TRITON_INTERPRET=1``); float32, bf16 or fp16 scores of at least one dimension;
    1 <= k <= MAX_TOPK; L < 2**31; no autograd.
    """
    if _disabled():
        return f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV)!r}"
    reason = _device_reason(scores)
    if reason is not None:
        return reason
    if scores.dim() < 1:
        return "scores must have at least one dimension"
    if scores.dtype not in _SCORE_DTYPES:
        return f"scores must be float32, bfloat16 or float16 (got {scores.dtype})"
    if not 1 <= k <= MAX_TOPK:
        return f"k must be in [1, {MAX_TOPK}] (got {k})"
    if scores.shape[-1] >= _MAX_LENGTH:
        return f"L must be below {_MAX_LENGTH} (got {scores.shape[-1]})"
    if torch.is_grad_enabled() and scores.requires_grad:
        return "the fused top-k has no autograd formula; scores require grad"
    return _import_error()


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _chunk(length: int) -> int:
    """Scores per loop iteration: the whole row up to 4096, else 4096 (a shape-only choice)."""
    return min(max(_next_power_of_two(length), 256), 4096)


def _warps(chunk: int, k_block: int) -> int:
    """Warps per program; with 16 warps the k=2048 sort and a 4096-score chunk fit in registers
    without local-memory stack (sm_90, checked with cuobjdump --dump-resource-usage)."""
    widest = max(chunk, k_block)
    return 16 if widest >= 2048 else 8 if widest >= 1024 else 4


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    """Import triton and define the kernels (once); return (top-k kernel, mask kernel)."""
    global tl, _ordered_key
    import triton
    import triton.language as language

    tl = language

    @triton.jit
    def ordered_key(x):
        # float32 -> uint32 whose unsigned order is the float order (NaN above +inf).
        x = tl.where(x == 0.0, 0.0, x)  # -0.0 and +0.0 are equal scores: one key
        bits = x.to(tl.int32, bitcast=True)
        flip = (bits >> 31) | -2147483648  # all ones for x < 0, the sign bit for x >= 0
        bits = tl.where(x != x, -1, bits ^ flip)
        return bits.to(tl.uint32, bitcast=True)

    _ordered_key = ordered_key

    @triton.jit
    def _topk_mask_kernel(
        src_ptr,
        out_ptr,
        mask_ptr,
        has_keys_ptr,
        length,
        seg_len,
        k,
        stride_src,
        stride_out,
        stride_mask,
        CHUNK: tl.constexpr,
        K_BLOCK: tl.constexpr,
        PACKED_INPUT: tl.constexpr,
        CANDIDATES: tl.constexpr,
        MASK_MODE: tl.constexpr,
        WRITE_HAS_KEYS: tl.constexpr,
        BY_SCORE: tl.constexpr,
        RADIX_BITS: tl.constexpr,
        NBINS: tl.constexpr,
        PASSES: tl.constexpr,
    ):
        # One program selects the top k of one segment [seg_start, seg_end) of one row.
        # PACKED_INPUT: the row holds packed (key, index) int64 candidates, not float scores.
        # CANDIDATES: write the segment's picks packed, in index order, into k slots of its own
        # (the first launch of a two-launch selection); else sort them and write indices.
        # MASK_MODE 0: no mask; 1: the whole mask row (-inf, 0 at finite picks); 2: -inf over
        # the segment; 3: 0 at the finite picks (the second launch, after a mode-2 first one).
        row = tl.program_id(0).to(tl.int64)
        seg = tl.program_id(1)
        seg_start = seg * seg_len
        seg_end = tl.minimum(seg_start + seg_len, length)
        src_row = src_ptr + row * stride_src
        out_row = out_ptr + row * stride_out + seg.to(tl.int64) * k
        mask_row = mask_ptr + row * stride_mask
        offs = tl.arange(0, CHUNK)
        bins = tl.arange(0, NBINS)
        take = tl.minimum(k, seg_end - seg_start)  # picks this segment can hold

        # 1. Radix select: after pass p, `threshold` holds the top bits of the k-th largest key
        # down to bit `shift` and `ties` counts how many keys matching those bits still belong
        # to the top k. A digit is RADIX_BITS wide; the last pass starts at bit 0 and may
        # overlap the bits already fixed (all live keys share them, so the count is the same).
        # `matching` counts the keys that match the bits fixed so far (more than `ties` before
        # the first pass). Once `ties` equals it, every such key is a pick and the remaining
        # passes are skipped: the threshold keeps zeros below the fixed bits, so every key of
        # that bucket compares >= it, and `ties` covers the keys equal to it. On real-valued
        # scores that happens a pass or two before the last.
        threshold = tl.zeros([1], tl.uint32)
        ties = take
        matching = take + 1
        for p in tl.static_range(PASSES):
            top = 32 - RADIX_BITS * p  # constexprs: p is one; the bits >= top are fixed
            shift = (top - RADIX_BITS) * (p < PASSES - 1)  # the last pass starts at bit 0
            if ties < matching:
                counts = tl.zeros([NBINS], tl.int32)
                for start in range(seg_start, seg_end, CHUNK):
                    pos = start + offs
                    live = pos < seg_end
                    if PACKED_INPUT:
                        packed = tl.load(src_row + pos, mask=live, other=-9223372036854775808)
                        signed = (packed >> 32).to(tl.int32)
                        key = (signed ^ -2147483648).to(tl.uint32, bitcast=True)
                    else:
                        x = tl.load(src_row + pos, mask=live, other=0.0).to(tl.float32)
                        key = _ordered_key(x)
                    if p > 0:
                        high = (key >> top) == (threshold >> top)
                        live = live & high
                    digit = tl.where(live, (key >> shift) & (NBINS - 1), 0).to(tl.int32)
                    # Dead lanes were counted in bin 0; take them out (no histogram mask
                    # argument, which older Triton releases lack).
                    dead = CHUNK - tl.sum(live.to(tl.int32), axis=0)
                    counts += tl.histogram(digit, NBINS) - tl.where(bins == 0, dead, 0)
                # at_least[j]: matching keys whose digit is >= j; non-increasing in j.
                at_least = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts
                byte = tl.sum((at_least >= ties).to(tl.int32), axis=0) - 1
                above = tl.sum(tl.where(bins == byte, at_least - counts, 0), axis=0)
                ties = ties - above
                threshold = threshold | (byte.to(tl.uint32) << shift)
                matching = tl.sum(tl.where(bins == byte, counts, 0), axis=0)
        # Every key equal to the threshold is a pick (the usual case: one such key, or an early
        # exit): the selection is key >= threshold, without ranking the ties.
        all_ties = ties >= matching

        # 2. Compaction in index order; the mask in the same pass.
        picked = 0
        ties_seen = 0
        for start in range(seg_start, seg_end, CHUNK):
            pos = start + offs
            live = pos < seg_end
            if PACKED_INPUT:
                packed = tl.load(src_row + pos, mask=live, other=-9223372036854775808)
                signed_key = (packed >> 32).to(tl.int32)
                key = (signed_key ^ -2147483648).to(tl.uint32, bitcast=True)
                index = 2147483647 - (packed & 2147483647)
            else:
                x = tl.load(src_row + pos, mask=live, other=0.0).to(tl.float32)
                key = _ordered_key(x)
                signed_key = (key ^ 0x80000000).to(tl.int32, bitcast=True)
                index = pos.to(tl.int64)
                packed = (signed_key.to(tl.int64) << 32) | (2147483647 - index)
            tie = (live & (key == threshold)).to(tl.int32)
            if all_ties:
                sel = live & (key >= threshold)
            else:
                tie_rank = ties_seen + tl.cumsum(tie, axis=0) - tie
                sel = (live & (key > threshold)) | ((tie > 0) & (tie_rank < ties))
            # finite scores lie strictly between the keys of -inf and +inf (signed form)
            finite = (signed_key > -2139095041) & (signed_key < 2139095040)
            if CANDIDATES or BY_SCORE:
                sel_i = sel.to(tl.int32)
                slot = picked + tl.cumsum(sel_i, axis=0) - sel_i
                tl.store(out_row + slot, packed, mask=sel)
            else:
                # Index order: the finite picks are the result, in the order compacted here
                # (ascending position: the candidates of a second launch are in that order
                # too); no read-back. `picked` counts finite picks only.
                sel_i = (sel & finite).to(tl.int32)
                slot = picked + tl.cumsum(sel_i, axis=0) - sel_i
                tl.store(out_row + slot, index, mask=sel & finite)
            if MASK_MODE == 1:
                value = tl.where(sel & finite, 0.0, float("-inf"))
                tl.store(mask_row + pos, value.to(mask_ptr.dtype.element_ty), mask=live)
            if MASK_MODE == 2:
                value = tl.full([CHUNK], float("-inf"), tl.float32)
                tl.store(mask_row + pos, value.to(mask_ptr.dtype.element_ty), mask=live)
            if MASK_MODE == 3:
                zero = tl.zeros([CHUNK], tl.float32)
                tl.store(
                    mask_row + tl.where(sel & finite, index, 0),
                    zero.to(mask_ptr.dtype.element_ty),
                    mask=sel & finite,
                )
            picked += tl.sum(sel_i, axis=0)
            ties_seen += tl.sum(tie, axis=0)

        slots = tl.arange(0, K_BLOCK)
        if CANDIDATES:
            # Empty slots get the smallest packed value: a key below -inf's, never a real pick.
            filler = tl.full([K_BLOCK], -9223372036854775808, tl.int64)
            tl.store(out_row + slots, filler, mask=(slots >= take) & (slots < k))
        elif not BY_SCORE:
            # 3'. Index order: the finite picks are written (ascending position); -1 after them.
            unused = (slots >= picked) & (slots < k)
            tl.store(out_row + slots, tl.full([K_BLOCK], -1, tl.int64), mask=unused)
            if WRITE_HAS_KEYS:
                # `picked` is a device scalar here (the loop added tl.sum results to it); mypy
                # sees its first value, the Python int 0
                tl.store(has_keys_ptr + row, (picked > 0).to(tl.uint8))  # type: ignore[attr-defined]
        else:
            # 3. Sort the picks (descending key, then ascending index) and write indices.
            tl.debug_barrier()  # the compaction stores above are read back by other threads
            packed = tl.load(out_row + slots, mask=slots < take, other=-9223372036854775808)
            packed = tl.sort(packed, descending=True)
            signed_key = (packed >> 32).to(tl.int32)
            index = 2147483647 - (packed & 2147483647)
            real = (slots < take) & (signed_key > -2139095041) & (signed_key < 2139095040)
            tl.debug_barrier()  # every thread has read its picks before any is overwritten
            tl.store(out_row + slots, tl.where(real, index, -1), mask=slots < k)
            if WRITE_HAS_KEYS:
                tl.store(has_keys_ptr + row, (tl.sum(real.to(tl.int32), axis=0) > 0).to(tl.uint8))

    @triton.jit
    def _fill_index_mask_kernel(
        mask_ptr,
        idx_ptr,
        length,
        k,
        stride_mask,
        stride_idx,
        CHUNK: tl.constexpr,
        K_BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        mask_row = mask_ptr + row * stride_mask
        offs = tl.arange(0, CHUNK)
        for start in range(0, length, CHUNK):
            pos = start + offs
            neg_inf = tl.full([CHUNK], float("-inf"), tl.float32)
            tl.store(mask_row + pos, neg_inf.to(mask_ptr.dtype.element_ty), mask=pos < length)
        tl.debug_barrier()  # the zeros below land after the fill, whichever thread wrote it
        for start in range(0, k, K_BLOCK):
            slots = start + tl.arange(0, K_BLOCK)
            index = tl.load(idx_ptr + row * stride_idx + slots, mask=slots < k, other=-1)
            index = index.to(tl.int64)
            valid = (slots < k) & (index >= 0) & (index < length)
            zero = tl.zeros([K_BLOCK], tl.float32)
            tl.store(
                mask_row + tl.where(valid, index, 0), zero.to(mask_ptr.dtype.element_ty), mask=valid
            )

    return _topk_mask_kernel, _fill_index_mask_kernel


def _launch_context(t: Tensor) -> Any:
    if t.is_cuda:
        return torch.cuda.device(t.device)
    import contextlib

    return contextlib.nullcontext()


def _rows_view(t: Tensor, rows: int, width: int) -> Tensor | None:
    """t as [rows, width] sharing memory with unit stride along width, or None if impossible."""
    if width > 1 and t.stride(-1) != 1:
        return None
    try:
        return t.view(rows, width)
    except RuntimeError:
        return None


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_segments(rows: int, length: int, k: int, device: torch.device) -> int:
    """How many programs share one row in the first of two launches (1: a single launch).

    A program selects from its row alone, so with few rows most SMs would idle while each
    program streams a long row four times. Splitting a row into S segments, each reduced to
    its own top k by one program, and then selecting the top k of those S * k candidates costs
    about L / S + S * k scores per program on the critical path: least near S = sqrt(L / k).
    S is that, rounded down to a power of two, and at most the SMs per row (one wave), so it
    is 1 for rows shorter than 4 k and for batches as large as the SM count. A shape-only
    choice (the SM count is read once per device), never a measurement at run time.
    """
    if length < 4 * k:
        return 1
    by_length = 1 << (math.isqrt(length // k).bit_length() - 1)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        by_sms = max(1, _sm_count(index) // max(rows, 1))
    else:  # the interpreter: any count is right; keep it small
        by_sms = 4
    return max(1, min(by_length, 1 << (by_sms.bit_length() - 1)))


def topk_mask(
    scores: Tensor,
    k: int,
    mask: Tensor | None = None,
    *,
    segments: int | None = None,
    has_keys: Tensor | None = None,
    num_warps: int | None = None,
    order: str = "score",
    radix_bits: int | None = None,
) -> Tensor:
    """``select_topk(scores, k)`` in fused kernels; when ``mask`` is given, also write it.

    Args:
        scores: float32, bf16 or fp16 [..., L].
        k: number of picks per row, 1 <= k <= MAX_TOPK; the result is [..., k] even when k > L.
        mask: optional floating tensor [..., L] (scores' shape), overwritten: 0 where a finite
            score was picked, -inf everywhere else, i.e. the result of ``mask.fill_(-inf)``
            then ``update_index_mask(mask, indices)``, without a separate fill or scatter.
        segments: programs per row in a first launch (``default_segments`` when None; 1 means
            one launch). With S > 1 each of S segments of a row is reduced to its top k
            (packed, in index order; the mask row is filled with -inf in the same pass), then a
            second launch selects the top k of the S * k candidates, sorts them, writes the
            indices and the zeros of the mask. The result does not depend on S.
        order: "score" (default): the picks by descending score, as ``select_topk``; "index":
            the finite picks by ascending position, then -1 (the same set and the same mask,
            without the sort of the k picks; for consumers that gather by index and need no
            order, such as sparse attention).
        radix_bits: digit width of the radix select, one of ``RADIX_WIDTHS`` (4 to 8 bits:
            2**bits histogram bins, ceil(32 / bits) passes at most); ``DEFAULT_RADIX_BITS``
            (5) when None. The result does not depend on it; the speed does
            (``benchmarks/dsa_topk_parts.py --radix``).

    Returns int64 indices [..., k] equal to ``select_topk(scores, k)`` (see the module
    docstring for the tie rule). Raises ValueError when ``topk_unsupported_reason`` names a
    reason. No host reads, launches that depend only on shapes: safe to capture in a CUDA
    graph after one eager call (the first call compiles the kernels).
    """
    reason = topk_unsupported_reason(scores, k)
    if reason is not None:
        raise ValueError(f"topk_mask cannot run on these inputs: {reason}")
    if mask is not None:
        if mask.shape != scores.shape or mask.device != scores.device:
            raise ValueError(
                f"mask must be {tuple(scores.shape)} on {scores.device}; "
                f"got {tuple(mask.shape)} on {mask.device}"
            )
        if not mask.is_floating_point():
            raise TypeError(f"mask must be a floating tensor; got {mask.dtype}")
    if segments is not None and segments < 1:
        raise ValueError(f"segments must be >= 1; got {segments}")
    if num_warps is not None and num_warps not in (4, 8, 16):
        raise ValueError(f"num_warps must be 4, 8 or 16; got {num_warps}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    if radix_bits is None:
        radix_bits = DEFAULT_RADIX_BITS
    if (
        isinstance(radix_bits, bool)
        or not isinstance(radix_bits, int)
        or (radix_bits not in RADIX_WIDTHS)
    ):
        raise ValueError(f"radix_bits must be one of {RADIX_WIDTHS}; got {radix_bits!r}")
    length = scores.shape[-1]
    lead = scores.shape[:-1]
    if has_keys is not None and (
        has_keys.shape != lead
        or has_keys.dtype not in (torch.uint8, torch.bool)
        or not has_keys.is_contiguous()
        or has_keys.device != scores.device
    ):
        raise ValueError(
            f"has_keys must be a contiguous uint8 or bool tensor {tuple(lead)} on "
            f"{scores.device}; got {has_keys.dtype} {tuple(has_keys.shape)} on {has_keys.device}"
        )
    rows = 1
    for size in lead:
        rows *= size
    out = torch.empty((*lead, k), dtype=torch.long, device=scores.device)
    if rows == 0:
        return out
    if length == 0:
        if has_keys is not None:
            has_keys.zero_()
        return out.fill_(-1)
    has_keys_arg = out if has_keys is None else has_keys.view(torch.uint8)
    flat_scores = scores.reshape(rows, length)
    if flat_scores.stride(-1) != 1:
        flat_scores = flat_scores.contiguous()
    flat_out = out.view(rows, k)
    mask_rows = None if mask is None else _rows_view(mask, rows, length)
    if mask is not None and mask_rows is None:
        # A mask the kernel cannot address row by row: write a contiguous one, then copy.
        mask_rows = torch.empty((rows, length), dtype=mask.dtype, device=mask.device)
    if segments is None:
        segments = default_segments(rows, length, k, scores.device)
    segments = min(segments, length)
    seg_len = -(-length // segments)
    segments = -(-length // seg_len)  # no empty segment
    k_block = _next_power_of_two(k)
    kernel, _ = _load()
    mask_arg = mask_rows if mask_rows is not None else flat_scores
    mask_stride = mask_rows.stride(0) if mask_rows is not None else 0
    with _launch_context(scores):
        if segments == 1:
            kernel[(rows, 1)](
                flat_scores,
                flat_out,
                mask_arg,
                has_keys_arg,
                length,
                length,
                k,
                flat_scores.stride(0),
                flat_out.stride(0),
                mask_stride,
                CHUNK=_chunk(length),
                K_BLOCK=k_block,
                PACKED_INPUT=False,
                CANDIDATES=False,
                MASK_MODE=0 if mask_rows is None else 1,
                WRITE_HAS_KEYS=has_keys is not None,
                BY_SCORE=order == "score",
                RADIX_BITS=radix_bits,
                NBINS=1 << radix_bits,
                PASSES=-(-32 // radix_bits),
                num_warps=num_warps or _warps(_chunk(length), k_block),
            )
        else:
            candidates = torch.empty((rows, segments * k), dtype=torch.long, device=out.device)
            kernel[(rows, segments)](
                flat_scores,
                candidates,
                mask_arg,
                has_keys_arg,
                length,
                seg_len,
                k,
                flat_scores.stride(0),
                candidates.stride(0),
                mask_stride,
                CHUNK=_chunk(seg_len),
                K_BLOCK=k_block,
                PACKED_INPUT=False,
                CANDIDATES=True,
                MASK_MODE=0 if mask_rows is None else 2,
                WRITE_HAS_KEYS=False,
                BY_SCORE=True,
                RADIX_BITS=radix_bits,
                NBINS=1 << radix_bits,
                PASSES=-(-32 // radix_bits),
                num_warps=num_warps or _warps(_chunk(seg_len), k_block),
            )
            width = segments * k
            kernel[(rows, 1)](
                candidates,
                flat_out,
                mask_arg,
                has_keys_arg,
                width,
                width,
                k,
                candidates.stride(0),
                flat_out.stride(0),
                mask_stride,
                CHUNK=_chunk(width),
                K_BLOCK=k_block,
                PACKED_INPUT=True,
                CANDIDATES=False,
                MASK_MODE=0 if mask_rows is None else 3,
                WRITE_HAS_KEYS=has_keys is not None,
                BY_SCORE=order == "score",
                RADIX_BITS=radix_bits,
                NBINS=1 << radix_bits,
                PASSES=-(-32 // radix_bits),
                num_warps=num_warps or _warps(_chunk(width), k_block),
            )
    if mask is not None and mask_rows is not None and mask_rows.data_ptr() != mask.data_ptr():
        mask.copy_(mask_rows.view(mask.shape))
    return out


def fill_index_mask(mask: Tensor, idx: Tensor) -> Tensor:
    """Overwrite ``mask`` [..., L] with -inf, then 0 at each valid index of ``idx`` [..., k].

    One kernel, one program per row; equals ``mask.fill_(-inf)`` followed by
    ``update_index_mask(mask, idx)``: indices < 0 or >= L are ignored (never addressed),
    duplicates are harmless. Returns ``mask``.
    """
    reason = _device_reason(mask, idx)
    if reason is None:
        reason = _import_error()
    if _disabled():
        reason = f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV)!r}"
    if reason is not None:
        raise ValueError(f"fill_index_mask cannot run on these inputs: {reason}")
    if not mask.is_floating_point():
        raise TypeError(f"mask must be a floating tensor; got {mask.dtype}")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"idx must be an integer tensor; got {idx.dtype}")
    if mask.dim() < 1 or idx.dim() != mask.dim() or idx.shape[:-1] != mask.shape[:-1]:
        raise ValueError(
            f"idx [..., k] must share mask's leading dims [..., L]; "
            f"got idx {tuple(idx.shape)} and mask {tuple(mask.shape)}"
        )
    length, k = mask.shape[-1], idx.shape[-1]
    rows = mask.numel() // length if length else idx.numel() // max(k, 1)
    if rows == 0 or length == 0:
        return mask
    mask_rows = _rows_view(mask, rows, length)
    target = (
        mask_rows
        if mask_rows is not None
        else torch.empty((rows, length), dtype=mask.dtype, device=mask.device)
    )
    flat_idx = idx.reshape(rows, k) if k else idx.new_full((rows, 1), -1)
    if flat_idx.stride(-1) != 1:
        flat_idx = flat_idx.contiguous()
    _, kernel = _load()
    with _launch_context(mask):
        kernel[(rows,)](
            target,
            flat_idx,
            length,
            flat_idx.shape[1],
            target.stride(0),
            flat_idx.stride(0),
            CHUNK=_chunk(length),
            K_BLOCK=min(_next_power_of_two(flat_idx.shape[1]), 4096),
            num_warps=4,
        )
    if mask_rows is None:
        mask.copy_(target.view(mask.shape))
    return mask
