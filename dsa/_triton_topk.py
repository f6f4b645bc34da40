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

That is the "merge" method. With ``segments=S > 1`` it takes two launches, so that more than
one SM works on a row: the first splits each row into S segments and reduces each to its own
top k (steps 1 and 2, the picks kept packed in index order, the mask row filled with -inf); the
second runs steps 1 to 3 on the S * k packed candidates of each row and writes the zeros of the
mask at its picks. Ordering by the packed value (key, then lower index) is a total order, so the
top k of the union of the segments' top k is the top k of the row, ties included: the result
does not depend on S.

The "bucket" method (``default_method`` takes it for rows of at least 8k scores) first narrows
each row to a small candidate set, in three launches over segments of ``segment_length``
scores. (1) Each program computes the coarse digit of its scores: the top byte of the
order-preserving 16-bit key of the score clamped to float16's range and rounded to float16
(sign, five exponent bits, two mantissa bits: a quarter octave; NaN 255). Clamping and rounding
are monotone, so a larger key never has a smaller digit. It stores its segment's largest digit
(the top) and the histogram of the 128 digits at and below it (32 octaves; below a positive
top: every positive score and zero too); lower digits are not counted.
(2) Each program takes its row's top (the largest segment top) and shifts every segment's
histogram by that segment's distance to it: a segment's window starts at or below the row's, so
the sum is the row's exact histogram over the row's 128-digit window. From it: the digit of the
k-th largest score (the bucket), or digit 0 (every score) when fewer than k scores lie in the
window. The program writes every score of its segment whose digit is at or above the bucket,
packed (key, index), from the offset that the segments before it take, so each row's
candidates are in index order; it also fills its part of the mask row with -inf. (3) The merge
kernel, reading each row's candidate count from the device, runs steps 1 to 3 on the
candidates and writes the zeros of the mask; its radix passes run on each key's offset from a
lower bound of the bucket's keys, capped at the offset of an upper bound (both bounds from the
bucket's digit, written by the gather; from digit 0 to the row's top when the bucket lies below
the window), from the bit length of that range: bits that every key of the bucket shares cost
no pass. A key above the bucket (a pick) lies above every key of the bucket, and capping keeps
its offset above theirs (every bucket key lies below the upper bound, but for NaN's bucket,
which has nothing above it), so the k-th
largest offset is the k-th largest key's and no key above the bucket ties with it. The
candidates hold every score above the bucket
and the whole bucket, hence the k largest and all their ties: the result is the merge method's,
bit for bit. Their buffer has room for a whole row, so a row whose scores share one bucket, or
whose k-th score lies below the window (a negative one far below a positive largest score), is
still exact, only as slow as the merge method with one program per row.

The "histogram" method runs the same radix select with every pass spread over the whole GPU:
rows are cut into segments of ``segment_length`` scores, and pass p is one launch over all
segments of all rows. Each program replays the digits of passes 0 .. p-1 from the row histograms
of the earlier launches (every program of a row derives the same ones), counts the digits of its
keys that match them, stores that count in a per-segment table and adds it to row histogram p
with atomics (it also adds to ``above[row, seg]`` its keys that the previous pass put above the
threshold, and pass 0 counts its +inf/NaN and -inf keys). A last launch replays every pass,
computes from the tables how many picks (ties in index order) and how many finite picks lie in
the segments before its own, writes its segment's picks from there on (in index order: the
finite picks; in score order: packed, for one more launch that sorts each row's k picks) and its
part of the mask row. The result is the merge method's, bit for bit.

The "rows" method is not a Triton kernel: ``dsa._cuda_topk`` compiles one CUDA kernel with
NVRTC (one block of 1024 threads per row, histograms in shared memory; see that module). It
returns the merge method's result bit for bit; ``default_method`` takes it for long rows when
the batch fills enough of the GPU.

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
the candidate buffer of the two-launch form, the tables of the histogram method, whose row
histograms start from one zero fill) from PyTorch's caching allocator, as graph capture
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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _cuda_topk
from ._mask import _check_mask_and_indices
from ._triton import DISABLE_ENV, _disabled, _import_error, _on_kernel_device

__all__ = [
    "HISTOGRAM_RADIX_BITS",
    "MAX_TOPK",
    "METHODS",
    "ORDERS",
    "RADIX_WIDTHS",
    "default_method",
    "default_segments",
    "fill_index_mask",
    "topk_mask",
    "topk_unsupported_reason",
]

#: How the picks of a row are ordered: by descending score, or by ascending position.
ORDERS = ("score", "index")
#: How a row is selected: "merge", one program per row (rows much longer than k first split
#: into segments that each keep their own top k, merged by a second launch); "histogram", every
#: radix pass one launch over all segments of the row, adding to one histogram per row;
#: "bucket", a float16 top-byte histogram narrows each row to the candidates at or above the
#: k-th score's bucket, and the merge kernel selects among them; "rows", one CUDA block per row
#: with its histograms in shared memory (``dsa._cuda_topk``, compiled by NVRTC; CUDA only).
METHODS = ("merge", "histogram", "bucket", "rows")
#: The digit width of the histogram method when none is given (at most four pass launches).
HISTOGRAM_RADIX_BITS = 8
# Coarse digits counted per segment by the bucket method: the 128 at and below the segment's
# largest (32 octaves; below a positive top, every positive score, zero and the negative ones
# down to some magnitude).
_BUCKET_WINDOW = 128
_MAX_BUCKET_SEGMENT = 1 << 14
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
_choose_digit: Any = None
_sort_and_write: Any = None
_coarse_digit: Any = None
_count_digits: Any = None
_slots_of: Any = None
_select_lanes: Any = None
_replay_digits: Any = None
_digit_key_bounds: Any = None


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


class _Kernels(NamedTuple):
    topk: Any
    fill: Any
    histogram_pass: Any
    histogram_write: Any
    sort_picks: Any
    bucket_count: Any
    bucket_gather: Any


@functools.lru_cache(maxsize=1)
def _load() -> _Kernels:
    """Import triton and define the kernels (once)."""
    global tl, _ordered_key, _choose_digit, _sort_and_write, _coarse_digit, _count_digits
    global _slots_of, _select_lanes, _replay_digits, _digit_key_bounds
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

    @triton.jit
    def coarse_digit(x):
        # float32 -> int32 in [0, 256): the top byte of the order-preserving 16-bit key of x
        # rounded to float16 (sign, five exponent bits, two mantissa bits: a quarter octave).
        # Clamping to float16's range and rounding are monotone, so a larger key never has a
        # smaller digit; NaN gets 255.
        # (NaN is tested on x itself: tl.maximum may return the other operand for NaN.)
        clamped = tl.minimum(tl.maximum(tl.where(x == 0.0, 0.0, x), -65504.0), 65504.0)
        half = clamped.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        key = tl.where(half >= 0x8000, half ^ 0xFFFF, half | 0x8000)
        return tl.where(x != x, 255, key >> 8)

    @triton.jit
    def digit_key_bounds(low_digit, high_digit):
        # Ordered float32 keys (ordered_key, as int32 bits) `low` <= `high` with low <= key(x)
        # <= high for every x whose coarse digit lies in [low_digit, high_digit]. x's float16
        # rounding is monotone in x, so x lies above the float16 value just below the first
        # of digit low_digit, and below the first of digit high_digit + 1. Digits <= 5 hold
        # the scores clamped to -65504 and -inf, digits >= 250 those clamped to 65504, +inf
        # and NaN: the bound there is the whole key range.
        below = (low_digit << 8) - 1  # 16-bit ordered keys
        above = (high_digit + 1) << 8
        half_below = tl.where(below >= 0x8000, below ^ 0x8000, below ^ 0xFFFF)
        half_above = tl.where(above >= 0x8000, above ^ 0x8000, above ^ 0xFFFF)
        x_below = half_below.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        x_above = half_above.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        low = tl.where(low_digit <= 5, 0, _ordered_key(x_below).to(tl.int32, bitcast=True))
        high = tl.where(high_digit >= 250, -1, _ordered_key(x_above).to(tl.int32, bitcast=True))
        return low, high

    @triton.jit
    def choose_digit(counts, ties, bins, NBINS: tl.constexpr):
        # counts[j]: keys matching the bits fixed so far whose next digit is j; ties: picks
        # still owed among them. Returns the k-th largest's digit, the picks still owed among
        # the keys with that digit, and how many keys have it.
        at_least = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts  # non-increasing
        digit = tl.sum((at_least >= ties).to(tl.int32), axis=0) - 1
        above = tl.sum(tl.where(bins == digit, at_least - counts, 0), axis=0)
        matching = tl.sum(tl.where(bins == digit, counts, 0), axis=0)
        return digit, ties - above, matching

    @triton.jit
    def count_digits(digit, live, bins, CHUNK: tl.constexpr, NBINS: tl.constexpr):
        # The histogram of `digit` over the live lanes. Dead lanes are counted in bin 0 and
        # taken out again (no histogram mask argument, which older Triton releases lack).
        dead = CHUNK - tl.sum(live.to(tl.int32), axis=0)
        return tl.histogram(tl.where(live, digit, 0), NBINS) - tl.where(bins == 0, dead, 0)

    @triton.jit
    def slots_of(sel_i, picked):
        # Where each selected lane goes: `picked` plus the selected lanes before it.
        return picked + tl.cumsum(sel_i, axis=0) - sel_i

    @triton.jit
    def select_lanes(key, live, threshold, ties, ties_seen, all_ties):
        # The picks of one chunk: every key above the threshold and, in index order, the first
        # `ties` keys equal to it (`ties_seen` of them were in earlier chunks); just key >=
        # threshold when every tied key is a pick. Also returns the tied lanes.
        tie = (live & (key == threshold)).to(tl.int32)
        if all_ties:
            sel = live & (key >= threshold)
        else:
            tie_rank = ties_seen + tl.cumsum(tie, axis=0) - tie
            sel = (live & (key > threshold)) | ((tie > 0) & (tie_rank < ties))
        return sel, tie

    @triton.jit
    def replay_digits(
        hist_row, take, NUM: tl.constexpr, RADIX_BITS: tl.constexpr, NBINS: tl.constexpr,
        PASSES: tl.constexpr,
    ):  # fmt: skip
        # The histogram method: the digits of passes 0 .. NUM-1 from the row histograms of the
        # earlier launches (every program of a row derives the same ones). Returns the bits of
        # the threshold fixed so far, the picks still owed among the keys matching them, how
        # many keys match them, and the last pass that ran with its digit.
        threshold = tl.zeros([1], tl.uint32)
        ties = take
        matching = take + 1
        last = 0
        last_digit = 0
        bins = tl.arange(0, NBINS)
        for q in tl.static_range(NUM):
            if ties < matching:
                counts = tl.load(hist_row + q * NBINS + bins)
                digit, ties, matching = _choose_digit(counts, ties, bins, NBINS)
                shift = (32 - RADIX_BITS * (q + 1)) * (q < PASSES - 1)
                threshold = threshold | (digit.to(tl.uint32) << shift)
                last = q
                last_digit = digit
        return threshold, ties, matching, last, last_digit

    @triton.jit
    def sort_and_write(
        out_row, has_keys_ptr, row, take, k, K_BLOCK: tl.constexpr, WRITE_HAS_KEYS: tl.constexpr
    ):
        # The `take` packed picks at out_row[0:take], sorted (descending key, then ascending
        # index), replaced by their indices; -1 for non-finite picks and slots past take.
        slots = tl.arange(0, K_BLOCK)
        tl.debug_barrier()  # the compaction stores are read back by other threads
        packed = tl.load(out_row + slots, mask=slots < take, other=-9223372036854775808)
        packed = tl.sort(packed, descending=True)
        signed_key = (packed >> 32).to(tl.int32)
        index = 2147483647 - (packed & 2147483647)
        real = (slots < take) & (signed_key > -2139095041) & (signed_key < 2139095040)
        tl.debug_barrier()  # every thread has read its picks before any is overwritten
        tl.store(out_row + slots, tl.where(real, index, -1), mask=slots < k)
        if WRITE_HAS_KEYS:
            tl.store(has_keys_ptr + row, (tl.sum(real.to(tl.int32), axis=0) > 0).to(tl.uint8))

    _ordered_key, _choose_digit, _sort_and_write = ordered_key, choose_digit, sort_and_write
    _coarse_digit, _count_digits, _slots_of = coarse_digit, count_digits, slots_of
    _digit_key_bounds = digit_key_bounds
    _select_lanes, _replay_digits = select_lanes, replay_digits

    @triton.jit
    def _topk_mask_kernel(
        src_ptr,
        out_ptr,
        mask_ptr,
        has_keys_ptr,
        row_info_ptr,
        length,
        seg_len,
        k,
        stride_src,
        stride_out,
        stride_mask,
        CHUNK: tl.constexpr,
        K_BLOCK: tl.constexpr,
        ROW_INFO: tl.constexpr,
        PACKED_INPUT: tl.constexpr,
        CANDIDATES: tl.constexpr,
        MASK_MODE: tl.constexpr,
        WRITE_HAS_KEYS: tl.constexpr,
        BY_SCORE: tl.constexpr,
        RADIX_BITS: tl.constexpr,
        NBINS: tl.constexpr,
        PASSES: tl.constexpr,
        ONE_CHUNK: tl.constexpr,
    ):
        # One program selects the top k of one segment [seg_start, seg_end) of one row.
        # ONE_CHUNK: the segment fits in one chunk; it is loaded once, before the passes, and
        # every pass and the compaction reuse the registers instead of reading it again.
        # PACKED_INPUT: the row holds packed (key, index) int64 candidates, not float scores.
        # CANDIDATES: write the segment's picks packed, in index order, into k slots of its own
        # (the first launch of a two-launch selection); else sort them and write indices.
        # MASK_MODE 0: no mask; 1: the whole mask row (-inf, 0 at finite picks); 2: -inf over
        # the segment; 3: 0 at the finite picks (the second launch, after a mode-2 first one).
        # ROW_INFO (the bucket method's candidates): row r holds row_info[r, 0] entries, not
        # `length`; every key of the bucket lies in [low, high] = row_info[r, 1:3] (unsigned),
        # every other candidate's above them. The radix passes and the compaction run on
        # min(key - low, high - low), from the highest set bit of high - low down instead of
        # from bit 31: the bits that every key of the bucket shares cost no pass. A key above
        # the bucket (a pick) keeps an offset above every bucket key's: every bucket key lies
        # below high (the key of the next digit's first float16 value, or at the top end the
        # largest key, NaN's, which is a bucket key only when nothing lies above the bucket).
        row = tl.program_id(0).to(tl.int64)
        seg = tl.program_id(1)
        if ROW_INFO:
            length = tl.load(row_info_ptr + row * 3)
            low = tl.load(row_info_ptr + row * 3 + 1).to(tl.uint32, bitcast=True)
            span = tl.load(row_info_ptr + row * 3 + 2).to(tl.uint32, bitcast=True) - low
            bit = tl.arange(0, 32).to(tl.uint32)
            top_bit = tl.sum(((span >> bit) != 0).to(tl.int32), axis=0)  # span's bit length
        seg_start = seg * seg_len
        seg_end = tl.minimum(seg_start + seg_len, length)
        src_row = src_ptr + row * stride_src
        out_row = out_ptr + row * stride_out + seg.to(tl.int64) * k
        mask_row = mask_ptr + row * stride_mask
        offs = tl.arange(0, CHUNK)
        bins = tl.arange(0, NBINS)
        take = tl.minimum(k, seg_end - seg_start)  # picks this segment can hold
        if PACKED_INPUT:  # what a masked-off lane reads: below every real key
            filler = -9223372036854775808
        else:
            filler = 0.0  # type: ignore[assignment]  # a compile-time branch: one of the two
        if ONE_CHUNK:
            held = tl.load(
                src_row + seg_start + offs, mask=seg_start + offs < seg_end, other=filler
            )

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
            if ROW_INFO:
                # the bits >= top are fixed; a pass with no bit left below top does not run
                top_s = top_bit - RADIX_BITS * p
                run = (ties < matching) & (top_s > 0)
                top = tl.maximum(top_s, 0).to(tl.uint32)
                shift = tl.maximum(top_s - RADIX_BITS, 0).to(tl.uint32)
            else:
                top = 32 - RADIX_BITS * p  # constexprs: p is one; the bits >= top are fixed
                shift = (top - RADIX_BITS) * (p < PASSES - 1)  # the last pass starts at bit 0
                run = ties < matching
            if run:
                counts = tl.zeros([NBINS], tl.int32)
                for start in range(seg_start, seg_end, CHUNK):
                    pos = start + offs
                    live = pos < seg_end
                    if ONE_CHUNK:
                        loaded = held
                    else:
                        loaded = tl.load(src_row + pos, mask=live, other=filler)
                    if PACKED_INPUT:
                        signed = (loaded >> 32).to(tl.int32)
                        key = (signed ^ -2147483648).to(tl.uint32, bitcast=True)
                    else:
                        key = _ordered_key(loaded.to(tl.float32))
                    if ROW_INFO:
                        key = tl.minimum(key - low, span)
                    if p > 0:
                        high = (key >> top) == (threshold >> top)
                        live = live & high
                    digit = ((key >> shift) & (NBINS - 1)).to(tl.int32)
                    counts += _count_digits(digit, live, bins, CHUNK, NBINS)
                byte, ties, matching = _choose_digit(counts, ties, bins, NBINS)
                threshold = threshold | (byte.to(tl.uint32) << shift)
        # Every key equal to the threshold is a pick (the usual case: one such key, or an early
        # exit): the selection is key >= threshold, without ranking the ties.
        all_ties = ties >= matching

        # 2. Compaction in index order; the mask in the same pass.
        picked = 0
        ties_seen = 0
        for start in range(seg_start, seg_end, CHUNK):
            pos = start + offs
            live = pos < seg_end
            if ONE_CHUNK:
                loaded = held
            else:
                loaded = tl.load(src_row + pos, mask=live, other=filler)
            if PACKED_INPUT:
                packed = loaded
                signed_key = (packed >> 32).to(tl.int32)
                key = (signed_key ^ -2147483648).to(tl.uint32, bitcast=True)
                index = 2147483647 - (packed & 2147483647)
            else:
                key = _ordered_key(loaded.to(tl.float32))
                signed_key = (key ^ 0x80000000).to(tl.int32, bitcast=True)
                index = pos.to(tl.int64)
                packed = (signed_key.to(tl.int64) << 32) | (2147483647 - index)
            if ROW_INFO:
                key = tl.minimum(key - low, span)
            sel, tie = _select_lanes(key, live, threshold, ties, ties_seen, all_ties)
            # finite scores lie strictly between the keys of -inf and +inf (signed form)
            finite = (signed_key > -2139095041) & (signed_key < 2139095040)
            if CANDIDATES or BY_SCORE:
                sel_i = sel.to(tl.int32)
                slot = _slots_of(sel_i, picked)
                tl.store(out_row + slot, packed, mask=sel)
            else:
                # Index order: the finite picks are the result, in the order compacted here
                # (ascending position: the candidates of a second launch are in that order
                # too); no read-back. `picked` counts finite picks only.
                sel_i = (sel & finite).to(tl.int32)
                slot = _slots_of(sel_i, picked)
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
            _sort_and_write(out_row, has_keys_ptr, row, take, k, K_BLOCK, WRITE_HAS_KEYS)

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

    @triton.jit
    def _histogram_pass_kernel(
        src_ptr,
        hist_ptr,
        seg_hist_ptr,
        above_ptr,
        nonfinite_ptr,
        length,
        k,
        stride_src,
        segments,
        SEG: tl.constexpr,
        CHUNK: tl.constexpr,
        PASS: tl.constexpr,
        RADIX_BITS: tl.constexpr,
        NBINS: tl.constexpr,
        PASSES: tl.constexpr,
    ):
        # Radix pass PASS of the histogram method, for segment `seg` of one row. The digits of
        # passes 0 .. PASS-1 are read back from the row histograms of the earlier launches
        # (every program of the row derives the same ones). If the selection is still open, the
        # program counts the digits of its keys that match the bits fixed so far, keeps that
        # count per segment and adds it to the row histogram of this pass (atomics). It also
        # adds to above[row, seg] its keys that the previous pass put above the threshold.
        row = tl.program_id(0).to(tl.int64)
        seg = tl.program_id(1)
        seg_start = seg * SEG
        seg_end = tl.minimum(seg_start + SEG, length)
        src_row = src_ptr + row * stride_src
        hist_row = hist_ptr + row * (PASSES * NBINS)
        cell = row * segments + seg
        offs = tl.arange(0, CHUNK)
        bins = tl.arange(0, NBINS)
        threshold, ties, matching, _, last_digit = _replay_digits(
            hist_row, tl.minimum(k, length), PASS, RADIX_BITS, NBINS, PASSES
        )
        top = 32 - RADIX_BITS * PASS
        shift = (top - RADIX_BITS) * (PASS < PASSES - 1)
        if ties < matching:
            # Still open, so every earlier pass ran: this segment's keys that pass PASS-1 put
            # above the threshold, from its own histogram of that pass.
            above_before = 0
            if PASS > 0:
                mine = tl.load(
                    seg_hist_ptr + ((row * PASSES + PASS - 1) * segments + seg) * NBINS + bins
                )
                above_before = tl.sum(tl.where(bins > last_digit, mine, 0), axis=0)
            counts = tl.zeros([NBINS], tl.int32)
            high = 0  # keys of +inf and NaN (pass 0 only)
            low = 0  # keys of -inf (pass 0 only)
            for start in range(seg_start, seg_end, CHUNK):
                pos = start + offs
                live = pos < seg_end
                x = tl.load(src_row + pos, mask=live, other=0.0).to(tl.float32)
                key = _ordered_key(x)
                if PASS == 0:
                    signed_key = (key ^ 0x80000000).to(tl.int32, bitcast=True)
                    high += tl.sum((live & (signed_key >= 2139095040)).to(tl.int32), axis=0)
                    low += tl.sum((live & (signed_key <= -2139095041)).to(tl.int32), axis=0)
                else:
                    live = live & ((key >> top) == (threshold >> top))
                digit = ((key >> shift) & (NBINS - 1)).to(tl.int32)
                counts += _count_digits(digit, live, bins, CHUNK, NBINS)
            tl.store(seg_hist_ptr + ((row * PASSES + PASS) * segments + seg) * NBINS + bins, counts)
            tl.atomic_add(hist_row + PASS * NBINS + bins, counts, mask=counts > 0, sem="relaxed")
            if PASS == 0:
                tl.store(above_ptr + cell, above_before)
                tl.store(nonfinite_ptr + 2 * cell, high)
                tl.store(nonfinite_ptr + 2 * cell + 1, low)
            else:
                tl.store(above_ptr + cell, tl.load(above_ptr + cell) + above_before)

    @triton.jit
    def _histogram_write_kernel(
        src_ptr,
        out_ptr,
        mask_ptr,
        has_keys_ptr,
        hist_ptr,
        seg_hist_ptr,
        above_ptr,
        nonfinite_ptr,
        length,
        k,
        stride_src,
        stride_out,
        stride_mask,
        segments,
        SEG: tl.constexpr,
        CHUNK: tl.constexpr,
        SEG_BLOCK: tl.constexpr,
        K_BLOCK: tl.constexpr,
        HAS_MASK: tl.constexpr,
        WRITE_HAS_KEYS: tl.constexpr,
        BY_SCORE: tl.constexpr,
        RADIX_BITS: tl.constexpr,
        NBINS: tl.constexpr,
        PASSES: tl.constexpr,
    ):
        # The last launch of the histogram method, for segment `seg` of one row: the threshold
        # from the row histograms; from the per-segment tables, how many picks (and ties) lie in
        # the segments before this one; then this segment's picks are written from there on, in
        # index order, and its part of the mask row.
        row = tl.program_id(0).to(tl.int64)
        seg = tl.program_id(1)
        seg_start = seg * SEG
        seg_end = tl.minimum(seg_start + SEG, length)
        src_row = src_ptr + row * stride_src
        out_row = out_ptr + row * stride_out
        mask_row = mask_ptr + row * stride_mask
        hist_row = hist_ptr + row * (PASSES * NBINS)
        offs = tl.arange(0, CHUNK)
        bins = tl.arange(0, NBINS)
        threshold, ties, matching, last, last_digit = _replay_digits(
            hist_row, tl.minimum(k, length), PASSES, RADIX_BITS, NBINS, PASSES
        )
        all_ties = ties >= matching
        # Per segment: keys above the threshold (earlier passes from `above`, the last pass
        # from its per-segment histogram), keys in the threshold's bucket, non-finite keys.
        gt_before = 0
        bucket_before = 0
        high_before = 0
        low_before = 0
        gt_all = 0
        bucket_all = 0
        high_all = 0
        low_all = 0
        for s0 in range(0, segments, SEG_BLOCK):
            ids = s0 + tl.arange(0, SEG_BLOCK)
            valid = ids < segments
            before = valid & (ids < seg)
            cells = row * segments + ids
            last_hist = tl.load(
                seg_hist_ptr
                + ((row * PASSES + last) * segments + ids[:, None]) * NBINS
                + bins[None, :],
                mask=valid[:, None],
                other=0,
            )
            gt = tl.load(above_ptr + cells, mask=valid, other=0)
            gt += tl.sum(tl.where(bins[None, :] > last_digit, last_hist, 0), axis=1)
            bucket = tl.sum(tl.where(bins[None, :] == last_digit, last_hist, 0), axis=1)
            high = tl.load(nonfinite_ptr + 2 * cells, mask=valid, other=0)
            low = tl.load(nonfinite_ptr + 2 * cells + 1, mask=valid, other=0)
            gt_before += tl.sum(tl.where(before, gt, 0), axis=0)
            bucket_before += tl.sum(tl.where(before, bucket, 0), axis=0)
            high_before += tl.sum(tl.where(before, high, 0), axis=0)
            low_before += tl.sum(tl.where(before, low, 0), axis=0)
            gt_all += tl.sum(tl.where(valid, gt, 0), axis=0)
            bucket_all += tl.sum(tl.where(valid, bucket, 0), axis=0)
            high_all += tl.sum(tl.where(valid, high, 0), axis=0)
            low_all += tl.sum(tl.where(valid, low, 0), axis=0)
        size_before = seg_start
        # Ties are picked in index order: the segments before this one took the first of them.
        picks_before = gt_before + tl.where(
            all_ties, bucket_before, tl.minimum(ties, bucket_before)
        )
        picks_all = gt_all + tl.where(all_ties, bucket_all, tl.minimum(ties, bucket_all))
        # Finite picks: every finite key when the threshold is at or below -inf's key; none when
        # it is at or above +inf's; else every pick but the +inf and NaN keys (all of them picks).
        signed_t = tl.sum((threshold ^ 0x80000000).to(tl.int32, bitcast=True), axis=0)
        finite_before = tl.where(
            signed_t >= 2139095040,
            0,
            tl.where(
                signed_t <= -2139095041,
                size_before - high_before - low_before,
                picks_before - high_before,
            ),
        )
        finite_all = tl.where(
            signed_t >= 2139095040,
            0,
            tl.where(signed_t <= -2139095041, length - high_all - low_all, picks_all - high_all),
        )
        if BY_SCORE:
            picked = picks_before
        else:
            picked = finite_before
        ties_seen = bucket_before
        for start in range(seg_start, seg_end, CHUNK):
            pos = start + offs
            live = pos < seg_end
            x = tl.load(src_row + pos, mask=live, other=0.0).to(tl.float32)
            key = _ordered_key(x)
            signed_key = (key ^ 0x80000000).to(tl.int32, bitcast=True)
            sel, tie = _select_lanes(key, live, threshold, ties, ties_seen, all_ties)
            finite = (signed_key > -2139095041) & (signed_key < 2139095040)
            if BY_SCORE:
                sel_i = sel.to(tl.int32)
                slot = _slots_of(sel_i, picked)
                index = pos.to(tl.int64)
                packed = (signed_key.to(tl.int64) << 32) | (2147483647 - index)
                tl.store(out_row + slot, packed, mask=sel)
            else:
                sel_i = (sel & finite).to(tl.int32)
                slot = _slots_of(sel_i, picked)
                tl.store(out_row + slot, pos.to(tl.int64), mask=sel & finite)
            if HAS_MASK:
                value = tl.where(sel & finite, 0.0, float("-inf"))
                tl.store(mask_row + pos, value.to(mask_ptr.dtype.element_ty), mask=live)
            picked += tl.sum(sel_i, axis=0)
            ties_seen += tl.sum(tie, axis=0)
        if not BY_SCORE:  # compile-time test outside, run-time test inside
            if seg == 0:
                slots = tl.arange(0, K_BLOCK)
                unused = (slots >= finite_all) & (slots < k)
                tl.store(out_row + slots, tl.full([K_BLOCK], -1, tl.int64), mask=unused)
                if WRITE_HAS_KEYS:
                    tl.store(has_keys_ptr + row, (finite_all > 0).to(tl.uint8))

    @triton.jit
    def _sort_picks_kernel(
        out_ptr,
        has_keys_ptr,
        take,
        k,
        stride_out,
        K_BLOCK: tl.constexpr,
        WRITE_HAS_KEYS: tl.constexpr,
    ):
        # Score order after the histogram method: sort each row's packed picks, write indices.
        row = tl.program_id(0).to(tl.int64)
        _sort_and_write(
            out_ptr + row * stride_out, has_keys_ptr, row, take, k, K_BLOCK, WRITE_HAS_KEYS
        )

    @triton.jit
    def _bucket_count_kernel(
        src_ptr,
        seg_hist_ptr,
        seg_top_ptr,
        length,
        stride_src,
        segments,
        SEG: tl.constexpr,
        WINDOW: tl.constexpr,
    ):
        # The bucket method's first launch, for one segment of one row, held in registers: the
        # segment's largest coarse digit (its top) and the histogram of the digits in the
        # WINDOW just below it, top - WINDOW + 1 to top; lower digits are not counted. Stored
        # per segment (no atomics: the next launch combines the segments).
        row = tl.program_id(0).to(tl.int64)
        seg = tl.program_id(1)
        pos = seg * SEG + tl.arange(0, SEG)
        live = pos < length
        x = tl.load(src_ptr + row * stride_src + pos, mask=live, other=0.0).to(tl.float32)
        digit = _coarse_digit(x)
        top = tl.max(tl.where(live, digit, 0), axis=0)
        rel = digit - (top - (WINDOW - 1))
        counted = live & (rel >= 0)
        counts = tl.histogram(tl.where(counted, rel, 0), WINDOW, mask=counted)
        tl.store(seg_hist_ptr + (row * segments + seg) * WINDOW + tl.arange(0, WINDOW), counts)
        tl.store(seg_top_ptr + row * segments + seg, top)

    @triton.jit
    def _bucket_gather_kernel(
        src_ptr,
        cand_ptr,
        info_ptr,
        mask_ptr,
        seg_hist_ptr,
        seg_top_ptr,
        length,
        k,
        stride_src,
        stride_cand,
        stride_mask,
        segments,
        SEG: tl.constexpr,
        CHUNK: tl.constexpr,
        SEG_BLOCK: tl.constexpr,
        WINDOW: tl.constexpr,
        HAS_MASK: tl.constexpr,
    ):
        # The bucket method's second launch, for one segment of one row. The row's top digit
        # is the largest segment top; every segment's window covers the WINDOW digits below
        # the row's top, so shifting each segment's histogram by its distance to the row's top
        # gives the row's exact histogram over those digits. From it: the coarse digit of the
        # k-th largest score (the bucket; digit 0, every score, when fewer than k scores lie in
        # the window), and how many scores at or above it lie in the segments before this one.
        # Every score of this segment with a digit at or above the bucket is written packed
        # (key, index) from there on, so each row's candidates (a superset of its top k) are in
        # index order; the mask gets -inf over the segment (the last launch writes the zeros).
        # info[row] = (candidates, low, high): every key of the bucket lies in [low, high], every
        # other candidate's above it (below the window: every candidate's in [low, high]).
        row = tl.program_id(0).to(tl.int64)
        seg = tl.program_id(1)
        seg_start = seg * SEG
        seg_end = tl.minimum(seg_start + SEG, length)
        src_row = src_ptr + row * stride_src
        cand_row = cand_ptr + row * stride_cand
        mask_row = mask_ptr + row * stride_mask
        bins = tl.arange(0, WINDOW)
        tops = seg_top_ptr + row * segments
        row_top = 0
        for s0 in range(0, segments, SEG_BLOCK):
            ids = s0 + tl.arange(0, SEG_BLOCK)
            row_top = tl.maximum(row_top, tl.max(tl.load(tops + ids, mask=ids < segments, other=0)))
        row_counts = tl.zeros([WINDOW], tl.int32)
        counts_before = tl.zeros([WINDOW], tl.int32)
        for s0 in range(0, segments, SEG_BLOCK):
            ids = s0 + tl.arange(0, SEG_BLOCK)
            shift = row_top - tl.load(tops + ids, mask=ids < segments, other=0)  # >= 0
            at = bins[None, :] + shift[:, None]
            hist = tl.load(
                seg_hist_ptr + (row * segments + ids[:, None]) * WINDOW + at,
                mask=(ids < segments)[:, None] & (at < WINDOW),
                other=0,
            )
            row_counts += tl.sum(hist, axis=0)
            counts_before += tl.sum(tl.where((ids < seg)[:, None], hist, 0), axis=0)
        ties = tl.minimum(k, length)
        in_window = tl.sum(row_counts, axis=0) >= ties
        bucket, _, _ = _choose_digit(row_counts, ties, bins, WINDOW)
        bucket = tl.where(in_window, bucket, 0)
        threshold = tl.where(in_window, row_top - (WINDOW - 1) + bucket, 0)
        picked = tl.where(
            in_window, tl.sum(tl.where(bins >= bucket, counts_before, 0), axis=0), seg_start
        )
        if seg == 0:
            total = tl.where(
                in_window, tl.sum(tl.where(bins >= bucket, row_counts, 0), axis=0), length
            )
            # the bucket's keys; below the window, every score's up to the row's top
            low, high = _digit_key_bounds(threshold, tl.where(in_window, threshold, row_top))
            tl.store(info_ptr + row * 3, total)
            tl.store(info_ptr + row * 3 + 1, low)
            tl.store(info_ptr + row * 3 + 2, high)
        offs = tl.arange(0, CHUNK)
        for start in range(seg_start, seg_end, CHUNK):
            pos = start + offs
            live = pos < seg_end
            x = tl.load(src_row + pos, mask=live, other=0.0).to(tl.float32)
            sel = live & (_coarse_digit(x) >= threshold)
            sel_i = sel.to(tl.int32)
            slot = _slots_of(sel_i, picked)
            signed_key = (_ordered_key(x) ^ 0x80000000).to(tl.int32, bitcast=True)
            packed = (signed_key.to(tl.int64) << 32) | (2147483647 - pos.to(tl.int64))
            tl.store(cand_row + slot, packed, mask=sel)
            if HAS_MASK:
                value = tl.full([CHUNK], float("-inf"), tl.float32)
                tl.store(mask_row + pos, value.to(mask_ptr.dtype.element_ty), mask=live)
            picked += tl.sum(sel_i, axis=0)

    return _Kernels(
        _topk_mask_kernel,
        _fill_index_mask_kernel,
        _histogram_pass_kernel,
        _histogram_write_kernel,
        _sort_picks_kernel,
        _bucket_count_kernel,
        _bucket_gather_kernel,
    )


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


def default_method(rows: int, length: int, k: int, device: torch.device) -> str:
    """The selection method used when none is given: a choice by shape and device.

    "merge" for rows shorter than 8 * k scores; longer rows take "rows" (one CUDA block per
    row) on a CUDA device where that kernel can run (``rows_method_available``) when there are
    at least 3/8 as many rows as the device has SMs, else "bucket". On an H200 (132 SMs),
    k=2048, mask written, index order, indexer logits, side by side in one run
    (``benchmarks/results/gpu-tests-h200-tenth.txt``, run 4): the rows method took 51.4
    against 61.8 µs (bucket) at B=64, L=65536, 22.5 against 32.0 at B=64, L=16384 and 67.6
    against 100.0 at B=128, L=65536, but 49.8 against 44.9 at B=32, L=65536 and 47.9 against
    33.7 at B=8: one block's time per row does not fall with fewer rows, the bucket method's
    does. Among the Triton methods the bucket method was the fastest on rows of at least
    16384 scores (``benchmarks/results/dsa_topk_methods-h200.md``): 62.1 against 122.9 µs
    (merge) and 146.7 µs (histogram) at B=64, L=65536. On rows of 4096 the merge method's
    single launch is the fastest (15.6 against 22.9 µs for the bucket method and 17.3 for the
    rows method at B=64).
    """
    if length < 8 * k:
        return "merge"
    if device.type == "cuda" and rows_method_available(device):
        index = torch.cuda.current_device() if device.index is None else device.index
        if 8 * rows >= 3 * _sm_count(index):
            return "rows"
    return "bucket"


def rows_method_available(device: torch.device) -> bool:
    """Whether the "rows" method's CUDA kernel can run on this device: a CUDA device of compute
    capability 7.0 or newer, NVRTC and the CUDA driver loadable (``dsa._cuda_topk``), Triton's
    kernels not disabled (``DSA_DISABLE_TRITON`` turns every fused kernel off)."""
    if device.type != "cuda" or _disabled():
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return _cuda_topk.device_reason(index) is None


def _histogram_segment(rows: int, length: int, device: torch.device) -> int:
    """Scores per program of the histogram and bucket methods: a power of two in [1024, 8192],
    aiming at about four programs per SM over all rows (shape and SM count only)."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        programs = 4 * _sm_count(index)
    else:  # the interpreter: small segments, so that tests cross segment boundaries
        return 1024
    per_program = -(-rows * length // programs)
    return min(max(_next_power_of_two(per_program), 1024), 8192)


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
    method: str | None = None,
    segment_length: int | None = None,
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
            (5) when None, ``HISTOGRAM_RADIX_BITS`` (8) with the histogram method. The
            result does not depend on it; the speed does (``benchmarks/dsa_topk_parts.py
            --radix``).
        method: "merge", "histogram", "bucket" or "rows" (see ``METHODS`` and the module
            docstring; "rows" is CUDA only, takes float32, bf16 or fp16 masks, and none of
            ``segments``, ``segment_length``, ``radix_bits`` or ``num_warps``);
            ``default_method`` when None. The result does not depend on it.
        segment_length: scores per program of the histogram and bucket methods (a power of
            two >= 256, at most 16384 with the bucket method); ``_histogram_segment`` when
            None. Given alone, it selects the bucket method; ``segments`` given alone selects
            the merge method; each with the other method, or both together, is refused
            (ValueError).

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
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if segment_length is not None and (
        isinstance(segment_length, bool)
        or not isinstance(segment_length, int)
        or segment_length < 256
        or segment_length & (segment_length - 1)
    ):
        raise ValueError(f"segment_length must be a power of two >= 256; got {segment_length!r}")
    if (
        segment_length is not None
        and segment_length > _MAX_BUCKET_SEGMENT
        and method in (None, "bucket")
    ):
        raise ValueError(
            f"the bucket method holds a segment in registers: segment_length must be at most "
            f"{_MAX_BUCKET_SEGMENT}; got {segment_length}"
        )
    if segments is not None and (method in ("histogram", "bucket") or segment_length is not None):
        raise ValueError(
            "segments is the merge method's; the histogram and bucket methods take segment_length"
        )
    if segment_length is not None and method == "merge":
        raise ValueError(
            "segment_length is the histogram and bucket methods'; the merge method takes segments"
        )
    if method == "rows":
        given = [
            name
            for name, value in (
                ("segments", segments),
                ("segment_length", segment_length),
                ("radix_bits", radix_bits),
                ("num_warps", num_warps),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"the rows method (one CUDA block per row) takes none of {', '.join(given)}"
            )
    if radix_bits is not None and (
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
    chosen = method is None  # by default_method, not by the caller
    if method is None:
        if segments is not None:
            method = "merge"
        elif segment_length is not None:
            method = "bucket"
        else:
            method = default_method(rows, length, k, scores.device)
    if method == "rows":
        reason = _cuda_topk.unsupported_reason(flat_scores, k, mask_rows)
        if reason is not None and not chosen:
            raise ValueError(f'method="rows" cannot run on these inputs: {reason}')
        if reason is not None:
            method = "bucket"  # the default's choice cannot take these inputs (a float64 mask)
    # every Triton method's first arguments
    rows_args = (flat_scores, flat_out, mask_rows, has_keys, has_keys_arg, k, order)
    if method == "rows":
        _cuda_topk.topk_mask_rows(
            flat_scores,
            flat_out,
            mask_rows,
            None if has_keys is None else has_keys.view(torch.uint8),
            k,
            order,
        )
    elif method == "bucket":
        _bucket_select(
            *rows_args,
            DEFAULT_RADIX_BITS if radix_bits is None else radix_bits,
            segment_length or _histogram_segment(rows, length, scores.device),
            num_warps,
        )
    elif method == "histogram":
        _histogram_select(
            *rows_args,
            HISTOGRAM_RADIX_BITS if radix_bits is None else radix_bits,
            segment_length or _histogram_segment(rows, length, scores.device),
        )
    else:
        _merge_select(
            *rows_args,
            DEFAULT_RADIX_BITS if radix_bits is None else radix_bits,
            default_segments(rows, length, k, scores.device) if segments is None else segments,
            num_warps,
        )
    if mask is not None and mask_rows is not None and mask_rows.data_ptr() != mask.data_ptr():
        mask.copy_(mask_rows.view(mask.shape))  # a mask the kernels could not address by row
    return out


def _merge_select(
    flat_scores: Tensor,
    flat_out: Tensor,
    mask_rows: Tensor | None,
    has_keys: Tensor | None,
    has_keys_arg: Tensor,
    k: int,
    order: str,
    radix_bits: int,
    segments: int,
    num_warps: int | None,
) -> None:
    """The merge method on [rows, L] scores: one launch (segments=1), or a launch that reduces
    each of S segments of a row to its top k (packed, in index order; the mask row filled with
    -inf) and one that selects the top k of the S * k candidates and writes the mask's zeros."""
    rows, length = flat_scores.shape
    k_block = _next_power_of_two(k)
    mask_arg = mask_rows if mask_rows is not None else flat_scores
    mask_stride = mask_rows.stride(0) if mask_rows is not None else 0
    segments = min(segments, length)
    seg_len = -(-length // segments)
    segments = -(-length // seg_len)  # no empty segment
    kernel = _load().topk
    with _launch_context(flat_scores):
        if segments == 1:
            kernel[(rows, 1)](
                flat_scores,
                flat_out,
                mask_arg,
                has_keys_arg,
                has_keys_arg,  # no row info
                length,
                length,
                k,
                flat_scores.stride(0),
                flat_out.stride(0),
                mask_stride,
                CHUNK=_chunk(length),
                K_BLOCK=k_block,
                ROW_INFO=False,
                PACKED_INPUT=False,
                CANDIDATES=False,
                MASK_MODE=0 if mask_rows is None else 1,
                WRITE_HAS_KEYS=has_keys is not None,
                BY_SCORE=order == "score",
                RADIX_BITS=radix_bits,
                NBINS=1 << radix_bits,
                PASSES=-(-32 // radix_bits),
                ONE_CHUNK=length <= _chunk(length),
                num_warps=num_warps or _warps(_chunk(length), k_block),
            )
        else:
            candidates = torch.empty(
                (rows, segments * k), dtype=torch.long, device=flat_scores.device
            )
            kernel[(rows, segments)](
                flat_scores,
                candidates,
                mask_arg,
                has_keys_arg,
                has_keys_arg,  # no row info
                length,
                seg_len,
                k,
                flat_scores.stride(0),
                candidates.stride(0),
                mask_stride,
                CHUNK=_chunk(seg_len),
                K_BLOCK=k_block,
                ROW_INFO=False,
                PACKED_INPUT=False,
                CANDIDATES=True,
                MASK_MODE=0 if mask_rows is None else 2,
                WRITE_HAS_KEYS=False,
                BY_SCORE=True,
                RADIX_BITS=radix_bits,
                NBINS=1 << radix_bits,
                PASSES=-(-32 // radix_bits),
                ONE_CHUNK=seg_len <= _chunk(seg_len),
                num_warps=num_warps or _warps(_chunk(seg_len), k_block),
            )
            width = segments * k
            kernel[(rows, 1)](
                candidates,
                flat_out,
                mask_arg,
                has_keys_arg,
                has_keys_arg,  # no row info
                width,
                width,
                k,
                candidates.stride(0),
                flat_out.stride(0),
                mask_stride,
                CHUNK=_chunk(width),
                K_BLOCK=k_block,
                ROW_INFO=False,
                PACKED_INPUT=True,
                CANDIDATES=False,
                MASK_MODE=0 if mask_rows is None else 3,
                WRITE_HAS_KEYS=has_keys is not None,
                BY_SCORE=order == "score",
                RADIX_BITS=radix_bits,
                NBINS=1 << radix_bits,
                PASSES=-(-32 // radix_bits),
                ONE_CHUNK=width <= _chunk(width),
                num_warps=num_warps or _warps(_chunk(width), k_block),
            )


def _bucket_select(
    flat_scores: Tensor,
    flat_out: Tensor,
    mask_rows: Tensor | None,
    has_keys: Tensor | None,
    has_keys_arg: Tensor,
    k: int,
    order: str,
    radix_bits: int,
    segment_length: int,
    num_warps: int | None,
) -> None:
    """The bucket method on [rows, L] scores: three launches. Per segment, its largest coarse
    (float16 top byte) digit and the histogram of the ``_BUCKET_WINDOW`` digits at and below it;
    the candidates (every score whose digit is at or above the k-th largest's, or every score
    when that lies below the row's window), packed in index order, the -inf mask and bounds of
    the bucket's keys (from its digit); the merge kernel's radix select over each row's
    candidates, on each key's offset from the lower bound, capped at the upper bound's, and from
    the highest bit of that range (not from bit 31), which writes the picks and the mask's
    zeros."""
    rows, length = flat_scores.shape
    segments = -(-length // segment_length)
    device = flat_scores.device
    seg_hist = torch.empty((rows, segments, _BUCKET_WINDOW), dtype=torch.int32, device=device)
    seg_top = torch.empty((rows, segments), dtype=torch.int32, device=device)
    candidates = torch.empty((rows, length), dtype=torch.long, device=device)
    info = torch.empty((rows, 3), dtype=torch.int32, device=device)  # count, low, high
    # The gather, bound by its prefix sums, was fastest with 2048-score chunks on four warps
    # (H200, B=64, L=65536: 28 against 36 us with 4096 on eight); the count, one segment in
    # registers, with 8 warps at 8192 scores (22.2 against 29.1 us on 4 and 23.0 on 16).
    gather_chunk = min(segment_length, 2048)
    mask_arg = mask_rows if mask_rows is not None else flat_scores
    mask_stride = mask_rows.stride(0) if mask_rows is not None else 0
    k_block = _next_power_of_two(k)
    # The select's passes cost per chunk lane, and a row's candidates (about 3,100 on indexer
    # logits at L=65536, up to about 4,800) rarely fill whole 4096-score chunks.
    select_chunk = min(_chunk(length), 2048)
    kernels = _load()
    grid = (rows, segments)
    with _launch_context(flat_scores):
        kernels.bucket_count[grid](
            flat_scores,
            seg_hist,
            seg_top,
            length,
            flat_scores.stride(0),
            segments,
            SEG=segment_length,
            WINDOW=_BUCKET_WINDOW,
            num_warps=min(max(segment_length // 1024, 4), 16),
        )
        kernels.bucket_gather[grid](
            flat_scores,
            candidates,
            info,
            mask_arg,
            seg_hist,
            seg_top,
            length,
            k,
            flat_scores.stride(0),
            candidates.stride(0),
            mask_stride,
            segments,
            SEG=segment_length,
            CHUNK=gather_chunk,
            SEG_BLOCK=max(1, min(_next_power_of_two(segments), 16)),
            WINDOW=_BUCKET_WINDOW,
            HAS_MASK=mask_rows is not None,
            num_warps=4,
        )
        kernels.topk[(rows, 1)](
            candidates,
            flat_out,
            mask_arg,
            has_keys_arg,
            info,
            length,
            length,
            k,
            candidates.stride(0),
            flat_out.stride(0),
            mask_stride,
            CHUNK=select_chunk,
            K_BLOCK=k_block,
            ROW_INFO=True,
            PACKED_INPUT=True,
            CANDIDATES=False,
            MASK_MODE=0 if mask_rows is None else 3,
            WRITE_HAS_KEYS=has_keys is not None,
            BY_SCORE=order == "score",
            RADIX_BITS=radix_bits,
            NBINS=1 << radix_bits,
            PASSES=-(-32 // radix_bits),
            ONE_CHUNK=False,
            num_warps=num_warps or _warps(select_chunk, k_block),
        )


def _histogram_select(
    flat_scores: Tensor,
    flat_out: Tensor,
    mask_rows: Tensor | None,
    has_keys: Tensor | None,
    has_keys_arg: Tensor,
    k: int,
    order: str,
    radix_bits: int,
    segment_length: int,
) -> None:
    """The histogram method on [rows, L] scores: ceil(32 / radix_bits) pass launches, one
    write launch, and in score order one sort launch. Scratch tables come from the caching
    allocator; the row histograms start from zeros (one fill)."""
    rows, length = flat_scores.shape
    segments = -(-length // segment_length)
    passes = -(-32 // radix_bits)
    nbins = 1 << radix_bits
    device = flat_scores.device
    hist = torch.zeros((rows, passes, nbins), dtype=torch.int32, device=device)
    seg_hist = torch.empty((rows, passes, segments, nbins), dtype=torch.int32, device=device)
    above = torch.empty((rows, segments), dtype=torch.int32, device=device)
    nonfinite = torch.empty((rows, segments, 2), dtype=torch.int32, device=device)
    chunk = min(segment_length, 4096)
    warps = 8 if chunk >= 4096 else 4
    kernels = _load()
    grid = (rows, segments)
    with _launch_context(flat_scores):
        for p in range(passes):
            kernels.histogram_pass[grid](
                flat_scores,
                hist,
                seg_hist,
                above,
                nonfinite,
                length,
                k,
                flat_scores.stride(0),
                segments,
                SEG=segment_length,
                CHUNK=chunk,
                PASS=p,
                RADIX_BITS=radix_bits,
                NBINS=nbins,
                PASSES=passes,
                num_warps=warps,
            )
        k_block = _next_power_of_two(k)
        by_score = order == "score"
        kernels.histogram_write[grid](
            flat_scores,
            flat_out,
            mask_rows if mask_rows is not None else flat_scores,
            has_keys_arg,
            hist,
            seg_hist,
            above,
            nonfinite,
            length,
            k,
            flat_scores.stride(0),
            flat_out.stride(0),
            mask_rows.stride(0) if mask_rows is not None else 0,
            segments,
            SEG=segment_length,
            CHUNK=chunk,
            SEG_BLOCK=max(1, min(_next_power_of_two(segments), 4096 // nbins)),
            K_BLOCK=k_block,
            HAS_MASK=mask_rows is not None,
            WRITE_HAS_KEYS=has_keys is not None and not by_score,
            BY_SCORE=by_score,
            RADIX_BITS=radix_bits,
            NBINS=nbins,
            PASSES=passes,
            num_warps=max(warps, 8 if k_block >= 2048 else 4),
        )
        if by_score:
            kernels.sort_picks[(rows,)](
                flat_out,
                has_keys_arg,
                min(k, length),
                k,
                flat_out.stride(0),
                K_BLOCK=k_block,
                WRITE_HAS_KEYS=has_keys is not None,
                num_warps=_warps(0, k_block),
            )


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
    _check_mask_and_indices(mask, idx)
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
    kernel = _load().fill
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
