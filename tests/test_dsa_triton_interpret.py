"""The fused Triton kernels (top-k + mask, mask writer, fp8 scorer) run on CPU in the interpreter.

These tests run only where triton imports and ``TRITON_INTERPRET=1`` is set; CI has no triton,
so they skip there. They hold the kernels to the PyTorch reference: ``select_topk`` bit for bit
(same picks, same order) wherever it defines the result, the mask of ``fill_(-inf)`` followed by
``update_index_mask``, and the PyTorch fp8 scorer. bf16 is left to the GPU tests: the
interpreter has no bf16 arithmetic of its own, so fp16 stands in for it here.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest
import torch
from torch import Tensor

from dsa import (
    DSAIndexer,
    indexer_scores,
    quantize_keys_fp8,
    select_topk,
    update_index_mask,
)

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "") != "1":
    pytest.skip("set TRITON_INTERPRET=1 to run the Triton kernels on CPU", allow_module_level=True)

import triton
import triton.language as tl

from dsa import _triton_topk

NEG_INF, POS_INF, NAN = float("-inf"), float("inf"), float("nan")


def reference_mask(scores: Tensor, k: int) -> Tensor:
    """The unfused mask: -inf everywhere, then 0 at the reference picks."""
    mask = torch.full(scores.shape, NEG_INF)
    return update_index_mask(mask, select_topk(scores, k))


def distinct_scores(shape: tuple[int, ...], seed: int) -> Tensor:
    """Scores without ties: a random permutation of distinct values of both signs."""
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    rows = [
        torch.randperm(n, generator=gen).float() - n / 3
        for _ in range(int(torch.tensor(shape[:-1]).prod()))
    ]
    return torch.stack(rows).view(shape) * 0.37


def assert_valid_tie_resolution(got: Tensor, scores: Tensor, k: int) -> None:
    """Where ties leave the reference open: same scores in order, same -1s, lower index first."""
    ref = select_topk(scores, k)
    real = got >= 0
    assert torch.equal(real, ref >= 0)
    taken = torch.gather(scores, -1, got.clamp_min(0))
    expected = torch.gather(scores, -1, ref.clamp_min(0))
    assert torch.equal(taken[real], expected[real])
    # Among equal scores, lower indices come first.
    for row_got, row_taken, row_real in zip(
        got.reshape(-1, k), taken.reshape(-1, k), real.reshape(-1, k), strict=True
    ):
        picks = row_got[row_real].tolist()
        values = row_taken[row_real].tolist()
        for a in range(len(picks) - 1):
            if values[a] == values[a + 1]:
                assert picks[a] < picks[a + 1]


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize(
    ("shape", "k"),
    [((3, 100), 8), ((2, 1, 5000), 64), ((2, 3, 257), 32), ((1, 1), 1), ((2, 64), 64)],
)
def test_topk_equals_reference_bit_for_bit(shape: tuple[int, ...], k: int) -> None:
    """Tie-free rows (some with hidden tails): same indices in the same order, same mask."""
    scores = distinct_scores(shape, seed=sum(shape) + k)
    flat = scores.view(-1, shape[-1])
    flat[0, shape[-1] // 2 :] = NEG_INF  # a short row: fewer visible keys than k, maybe
    mask = torch.full(shape, 5.0)
    got = _triton_topk.topk_mask(scores, k, mask)
    assert got.dtype == torch.int64 and got.shape == (*shape[:-1], k)
    assert torch.equal(got, select_topk(scores, k))
    assert torch.equal(mask, reference_mask(scores, k))


def test_nonfinite_scores_take_slots_like_torch_topk() -> None:
    """NaN and +inf take the first slots as -1, -inf and missing keys trail as -1."""
    scores = torch.tensor([[1.0, NAN, 3.0, POS_INF, NEG_INF, 2.0, -NAN, -7.5]])
    mask = torch.empty(1, 8)
    got = _triton_topk.topk_mask(scores, 7, mask)
    assert torch.equal(got, select_topk(scores, 7))
    assert got.tolist() == [[-1, -1, -1, 2, 5, 0, 7]]
    assert torch.equal(mask, reference_mask(scores, 7))


def test_negative_and_positive_zero_are_one_score() -> None:
    """-0.0 and +0.0 tie; the lower index comes first, as for any tie."""
    scores = torch.tensor([[-0.0, 1.0, 0.0, -1.0]])
    assert _triton_topk.topk_mask(scores, 3).tolist() == [[1, 0, 2]]
    assert _triton_topk.topk_mask(scores, 2).tolist() == [[1, 0]]


def test_all_hidden_row_and_k_wider_than_the_row() -> None:
    """An all -inf row gives all -1 and an all -inf mask; k > L pads every row with -1."""
    scores = distinct_scores((3, 40), seed=1)
    scores[1] = NEG_INF
    scores[2, 7:] = NEG_INF
    mask = torch.zeros(3, 40)
    got = _triton_topk.topk_mask(scores, 300, mask)
    assert torch.equal(got, select_topk(scores, 300))
    assert (got[1] == -1).all() and (mask[1] == NEG_INF).all()
    assert (got[0, 40:] == -1).all() and (got[2, 7:] == -1).all()
    assert torch.equal(mask, reference_mask(scores, 300))


def test_default_topk_2048_over_a_short_row() -> None:
    """k=2048 (the indexer's) over L=100 with 37 visible keys: those keys, sorted, then -1."""
    scores = distinct_scores((1, 100), seed=2)
    scores[0, 37:] = NEG_INF
    got = _triton_topk.topk_mask(scores, 2048)
    assert got.shape == (1, 2048)
    assert torch.equal(got, select_topk(scores, 2048))


def test_ties_resolve_to_lower_indices() -> None:
    """All-equal scores pick indices 0..k-1 in order; partial ties keep the reference values."""
    equal = torch.zeros(2, 64)
    equal[1, 20:] = NEG_INF
    got = _triton_topk.topk_mask(equal, 8)
    assert got.tolist() == [list(range(8)), list(range(8))]
    gen = torch.Generator().manual_seed(3)
    coarse = torch.randint(-4, 5, (4, 200), generator=gen).float()
    coarse[2, 50:] = NEG_INF
    got = _triton_topk.topk_mask(coarse, 33)
    assert_valid_tie_resolution(got, coarse, 33)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores(dtype: torch.dtype) -> None:
    """fp16 and bf16 score rows: the picks of the reference, ties resolved to lower indices."""
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 500, generator=gen).to(dtype)
    scores[1, 100:] = NEG_INF
    assert_valid_tie_resolution(_triton_topk.topk_mask(scores, 48), scores, 48)


def test_mask_written_through_a_strided_buffer() -> None:
    """A mask that is a strided view of a larger buffer is written in place, the rest untouched."""
    scores = distinct_scores((2, 30), seed=5)
    storage = torch.full((4, 40), 9.0)
    view = storage[::2, 5:35]
    _triton_topk.topk_mask(scores, 6, view)
    assert torch.equal(view, reference_mask(scores, 6))
    untouched = storage.clone()
    untouched[::2, 5:35] = 9.0
    assert (untouched == 9.0).all()


@pytest.mark.parametrize("seed", range(4))
def test_random_rows_with_repeated_values(seed: int) -> None:
    """Random rows drawn from few values, hidden tails and NaN: valid picks, the reference mask
    up to the tie choice, identical counts."""
    gen = torch.Generator().manual_seed(10 + seed)
    rows, width, k = 5, 97 + 31 * seed, 1 + 7 * seed
    scores = torch.randint(-20, 20, (rows, width), generator=gen).float() / 4
    for r in range(rows):
        scores[r, int(torch.randint(0, width + 1, (1,), generator=gen)) :] = NEG_INF
    scores[0, 3] = NAN
    got = _triton_topk.topk_mask(scores, k)
    assert_valid_tie_resolution(got, scores, k)


def test_select_topk_triton_backend_runs_the_kernel() -> None:
    """select_topk(backend="triton") is the fused kernel; "auto" stays torch on CPU."""
    scores = distinct_scores((2, 2, 80), seed=6)
    assert torch.equal(select_topk(scores, 16, backend="triton"), select_topk(scores, 16))


# --------------------------------------------------------------------------- mask writer

HAND_L = 16
HAND_IDX = torch.tensor(
    [
        [0, -1, -5, HAND_L, HAND_L + 7, 3],
        [-1, -1, -1, -1, -1, -1],
        [HAND_L - 1, HAND_L, -5, 0, 0, HAND_L + 7],
        [-5, HAND_L + 7, 9, -1, 9, HAND_L],
    ]
)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_fill_index_mask_ignores_invalid_indices(dtype: torch.dtype) -> None:
    """Indices 0, -1, -5, L, L+7 and duplicates: equals fill(-inf) + update_index_mask."""
    mask = torch.randn(4, HAND_L)
    expected = update_index_mask(torch.full((4, HAND_L), NEG_INF), HAND_IDX)
    assert _triton_topk.fill_index_mask(mask, HAND_IDX.to(dtype)) is mask
    assert torch.equal(mask, expected)


def test_fill_index_mask_multi_token_rows_and_k_wider_than_l() -> None:
    """[B, T, k] indices with k > L over a [B, T, L] mask, random valid and invalid values."""
    gen = torch.Generator().manual_seed(7)
    mask = torch.zeros(2, 3, 10)
    idx = torch.randint(-12, 25, (2, 3, 40), generator=gen)
    expected = update_index_mask(torch.full((2, 3, 10), NEG_INF), idx)
    assert torch.equal(_triton_topk.fill_index_mask(mask, idx), expected)


# --------------------------------------------------------------------------- scorer and step


def test_fp8_fused_scores_match_the_torch_fp8_scorer() -> None:
    """The fused scorer on e4m3 keys with scales equals the PyTorch fp8 path (float32)."""
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 2, 16, 32, generator=gen).half()
    k = torch.randn(2, 300, 32, generator=gen) * 2
    w = torch.randn(2, 2, 16, generator=gen) * 0.05
    values, scales = quantize_keys_fp8(k)
    seq_lens = torch.tensor([[300, 299], [77, 0]])
    fused = indexer_scores(q, values, w, seq_lens=seq_lens, k_scale=scales, backend="triton")
    plain = indexer_scores(q.float(), values, w, seq_lens=seq_lens, k_scale=scales)
    finite = torch.isfinite(plain)
    assert torch.equal(torch.isfinite(fused), finite)
    torch.testing.assert_close(fused[finite], plain[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fp8_keys", [False, True], ids=["fp16", "fp8"])
def test_every_scorer_launch_configuration_equals_the_torch_scorer(fp8_keys: bool) -> None:
    """Every configuration of ``CONFIGS``, the persistent grid included (under the interpreter
    it has three program slots per "SM": programs that score parts of two rows, and rows split
    between programs), on 300 keys (a multiple of no block width), two tokens per row and
    limits of 300, 299, 77 and 0: the PyTorch scorer's scores and the same -inf."""
    from dsa import _triton

    gen = torch.Generator().manual_seed(10)
    q = torch.randn(2, 2, 16, 32, generator=gen).half()
    k = torch.randn(2, 300, 32, generator=gen)
    w = torch.randn(2, 2, 16, generator=gen) * 0.05
    seq_lens = torch.tensor([[300, 299], [77, 0]])
    scales = None
    if fp8_keys:
        k, scales = quantize_keys_fp8(k)
    else:
        k = k.half()
    plain = indexer_scores(
        q.float(), k if fp8_keys else k.float(), w, seq_lens=seq_lens, k_scale=scales
    )
    finite = torch.isfinite(plain)
    assert any(cfg.programs_per_sm for cfg in _triton.CONFIGS)
    for cfg in _triton.CONFIGS:
        got = _triton.fused_scores(q, k, w, seq_lens, config=cfg, k_scale=scales)
        assert torch.equal(torch.isfinite(got), finite), cfg.name
        torch.testing.assert_close(got[finite], plain[finite], rtol=1e-3, atol=1e-3, msg=cfg.name)


def test_fp8_query_quantisation_in_the_kernel_equals_the_torch_one() -> None:
    """Heads of magnitudes 1e-3 to 1e3 (each its own power-of-two scale) and values on
    rounding ties: the kernel's in-register e4m3 queries are the torch ones, so the scores
    agree to float32 summation order (the interpreter's own fp8 cast does not round to
    nearest even; the kernel rounds before it casts)."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 1, 16, 32, generator=gen) * torch.logspace(-3, 3, 16)[:, None]
    q[0, 0, 3, :4] = torch.tensor([116.0, 272.0, -125.9375, 31.5]) * 2.0**-6
    q = q.half()
    k = torch.randn(1, 200, 32, generator=gen)
    w = torch.rand(1, 1, 16, generator=gen)
    values, scales = quantize_keys_fp8(k)
    fused = indexer_scores(q, values, w, k_scale=scales, backend="triton")
    plain = indexer_scores(q.float(), values, w, k_scale=scales)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


@pytest.mark.parametrize("fp8_keys", [False, True], ids=["fp16", "fp8"])
def test_indexer_step_triton_equals_torch(fp8_keys: bool) -> None:
    """DSAIndexer on the Triton path (scorer, top-k + mask) equals the PyTorch path, patched and
    unpatched forms alike, on ragged lengths with a padding row."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(4, 1, 16, 32, generator=gen).half()
    k = torch.randn(4, 300, 32, generator=gen).half()
    w = torch.randn(4, 1, 16, generator=gen) * 0.05
    seq_lens = torch.tensor([300, 77, 0, 1])
    fused = DSAIndexer(16, 32, 64, backend="triton", fp8_keys=fp8_keys)(q, k, w, seq_lens)
    branchy = DSAIndexer(16, 32, 64, backend="triton", fp8_keys=fp8_keys, patched=False)
    seed_form = branchy(q, k, w, seq_lens)
    plain = DSAIndexer(16, 32, 64, backend="torch", fp8_keys=fp8_keys)
    reference = plain(q.float(), k if fp8_keys else k.float(), w, seq_lens)
    assert torch.equal(fused.indices, seed_form.indices)
    assert torch.equal(fused.mask, seed_form.mask)
    assert torch.equal(fused.indices, reference.indices)
    assert torch.equal(fused.mask, reference.mask)
    assert fused.row_has_keys.flatten().tolist() == [True, True, False, True]


# --------------------------------------------------------------------------- two-launch selection


@pytest.mark.parametrize("segments", [2, 3, 8])
def test_segmented_selection_equals_the_single_launch(segments: int) -> None:
    """Rows split into segments (first launch) then merged (second): the reference picks, in
    order, and the reference mask, for tie-free rows of several visible lengths."""
    scores = distinct_scores((4, 1000), seed=40 + segments)
    for r, visible in enumerate([1000, 0, 15, 333]):
        scores[r, visible:] = NEG_INF
    mask = torch.full((4, 1000), 2.0)
    got = _triton_topk.topk_mask(scores, 16, mask, segments=segments)
    assert torch.equal(got, select_topk(scores, 16))
    assert torch.equal(mask, reference_mask(scores, 16))


def test_segmented_selection_keeps_the_tie_rule_and_nonfinite_slots() -> None:
    """With ties, NaN and +inf, any segment count gives the single launch's result exactly."""
    gen = torch.Generator().manual_seed(41)
    scores = torch.randint(-3, 4, (3, 500), generator=gen).float()
    scores[1, 100:] = NEG_INF
    scores[2, 7], scores[2, 9], scores[2, 400] = NAN, POS_INF, NAN
    single_mask, split_mask = torch.empty(3, 500), torch.empty(3, 500)
    single = _triton_topk.topk_mask(scores, 40, single_mask, segments=1)
    assert_valid_tie_resolution(single, scores, 40)
    for segments in (2, 5, 7):
        assert torch.equal(
            _triton_topk.topk_mask(scores, 40, split_mask, segments=segments), single
        )
        assert torch.equal(split_mask, single_mask)


def test_segments_that_hold_fewer_keys_than_k() -> None:
    """Segments shorter than k pad their candidates; the merge still returns every key."""
    scores = distinct_scores((2, 50), seed=42)
    scores[1, 20:] = NEG_INF
    got = _triton_topk.topk_mask(scores, 64, segments=4)
    assert torch.equal(got, select_topk(scores, 64))


def test_default_segments_depend_on_shape_only() -> None:
    """One launch for rows shorter than 4k; a power of two near sqrt(L / k) otherwise."""
    cpu = torch.device("cpu")
    assert _triton_topk.default_segments(1, 4096, 2048, cpu) == 1
    assert _triton_topk.default_segments(1, 65536, 2048, cpu) == 4
    assert _triton_topk.default_segments(1, 131072, 2048, cpu) == 4  # at most 4 off-GPU
    assert _triton_topk.default_segments(1, 65536, 64, cpu) == 4


@pytest.mark.parametrize("segments", [1, 3])
def test_has_keys_output_equals_any_real_pick(segments: int) -> None:
    """The kernel's row flag equals (indices >= 0).any(-1): false for all -inf and all-NaN
    rows, true for a row whose only finite score follows NaN and +inf."""
    scores = distinct_scores((4, 200), seed=43)
    scores[1] = NEG_INF
    scores[2] = NAN
    scores[3, :] = NEG_INF
    scores[3, 0], scores[3, 1], scores[3, 2] = NAN, POS_INF, 1.5
    has_keys = torch.empty(4, dtype=torch.bool)
    got = _triton_topk.topk_mask(scores, 8, segments=segments, has_keys=has_keys)
    assert has_keys.tolist() == [True, False, False, True]
    assert torch.equal(has_keys, (got >= 0).any(-1))
    assert got[3].tolist() == [-1, -1, 2, -1, -1, -1, -1, -1]


def test_fill_index_mask_refuses_bad_arguments() -> None:
    """The same argument checks as update_index_mask: a floating mask, integer indices that
    share its leading dims."""
    mask = torch.zeros(2, 8)
    idx = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="mask must be a floating tensor"):
        _triton_topk.fill_index_mask(mask.long(), idx)
    with pytest.raises(TypeError, match="idx must be an integer tensor"):
        _triton_topk.fill_index_mask(mask, idx.float())
    with pytest.raises(ValueError, match="leading dims"):
        _triton_topk.fill_index_mask(mask, torch.zeros(3, 3, dtype=torch.long))
    assert torch.equal(mask, torch.zeros(2, 8))


def test_fill_index_mask_through_a_transposed_view() -> None:
    """A mask whose last dim is not unit-stride is written correctly (through a copy)."""
    storage = torch.zeros(HAND_L, 4)
    mask = storage.t()  # [4, HAND_L], stride (1, 4)
    expected = update_index_mask(torch.full((4, HAND_L), NEG_INF), HAND_IDX)
    _triton_topk.fill_index_mask(mask, HAND_IDX)
    assert torch.equal(mask, expected)
    assert torch.equal(storage.t(), expected)


# ------------------------------------------------------------------ index order (no sort)


@pytest.mark.parametrize("segments", [1, 3])
def test_index_order_equals_the_torch_index_order(segments: int) -> None:
    """order="index" in the kernel: the torch path's result bit for bit (tie-free rows), with
    hidden keys, NaN and +inf, an empty row and k wider than some rows; the same mask and row
    flags as order="score"."""
    scores = distinct_scores((4, 600), seed=90 + segments)
    scores[0, 100:] = NEG_INF
    scores[1, 3] = NAN
    scores[1, 10:12] = POS_INF
    scores[2] = NEG_INF
    for k in (7, 64, 200):
        want = select_topk(scores, k, order="index")
        mask_by_index = torch.full_like(scores, 2.0)
        mask_by_score = torch.full_like(scores, 2.0)
        has_by_index = torch.empty(4, dtype=torch.uint8)
        has_by_score = torch.empty(4, dtype=torch.uint8)
        got = _triton_topk.topk_mask(
            scores, k, mask_by_index, segments=segments, has_keys=has_by_index, order="index"
        )
        _triton_topk.topk_mask(scores, k, mask_by_score, segments=segments, has_keys=has_by_score)
        assert torch.equal(got, want)
        assert torch.equal(mask_by_index, mask_by_score)
        assert torch.equal(has_by_index, has_by_score)
    assert torch.equal(
        select_topk(scores, 7, backend="triton", order="index"),
        select_topk(scores, 7, order="index"),
    )


def test_indexer_step_in_index_order_triton_equals_torch() -> None:
    """DSAIndexer(order="index") on the Triton path equals the PyTorch path, and its mask the
    score-ordered step's."""
    gen = torch.Generator().manual_seed(19)
    q = torch.randn(3, 1, 16, 32, generator=gen).half()
    k = torch.randn(3, 300, 32, generator=gen).half()
    w = torch.randn(3, 1, 16, generator=gen) * 0.05
    seq_lens = torch.tensor([300, 50, 0])
    fused = DSAIndexer(16, 32, 64, backend="triton", order="index")(q, k, w, seq_lens)
    plain = DSAIndexer(16, 32, 64, backend="torch", order="index")
    reference = plain(q.float(), k.float(), w, seq_lens)
    by_score = DSAIndexer(16, 32, 64, backend="triton")(q, k, w, seq_lens)
    assert torch.equal(fused.indices, reference.indices)
    assert torch.equal(fused.mask, reference.mask)
    assert torch.equal(fused.mask, by_score.mask)
    assert torch.equal(fused.row_has_keys, by_score.row_has_keys)


# ------------------------------------------------------------------ radix digit width


@pytest.mark.parametrize("segments", [1, 3])
@pytest.mark.parametrize("order", ["score", "index"])
def test_radix_width_does_not_change_the_result(order: str, segments: int) -> None:
    """Every digit width selects what four passes of 8 bits do: the same indices in the same
    order, mask and row flags, with ties, NaN, +inf, hidden rows and k up to L; on a tie-free
    row all equal the torch path."""
    gen = torch.Generator().manual_seed(97)
    ties = torch.randint(-3, 4, (4, 500), generator=gen).float()
    ties[1, 100:] = NEG_INF
    ties[2, 7], ties[2, 9], ties[2, 400] = NAN, POS_INF, NAN
    ties[3] = NEG_INF
    distinct = distinct_scores((2, 500), seed=98)
    for scores in (ties, distinct):
        for k in (1, 40, 500):
            results = []
            for bits in _triton_topk.RADIX_WIDTHS:
                mask = torch.full_like(scores, 2.0)
                has_keys = torch.empty(scores.shape[0], dtype=torch.uint8)
                got = _triton_topk.topk_mask(
                    scores,
                    k,
                    mask,
                    segments=segments,
                    has_keys=has_keys,
                    order=order,
                    radix_bits=bits,
                )
                results.append((got, mask, has_keys))
            got8, mask8, has8 = results[_triton_topk.RADIX_WIDTHS.index(8)]
            for got, mask, has_keys in results:
                assert torch.equal(got, got8) and torch.equal(mask, mask8)
                assert torch.equal(has_keys, has8)
            if scores is distinct:
                assert torch.equal(got8, select_topk(scores, k, order=order))


@pytest.mark.parametrize("bits", [11, 3, 5.0, True, "5"])
def test_radix_width_outside_the_supported_ones_is_refused(bits: object) -> None:
    with pytest.raises(ValueError, match="radix_bits must be one of"):
        _triton_topk.topk_mask(torch.zeros(2, 8), 2, radix_bits=bits)  # type: ignore[arg-type]


# ------------------------------------------------------------------ histogram method


def edge_rows(gen: torch.Generator) -> Tensor:
    """[6, 600] small-integer scores (ties everywhere) with NaN, +inf, -inf, -0.0, a hidden row,
    an all +inf row and rows with fewer finite scores than most k."""
    ties = torch.randint(-3, 4, (6, 600), generator=gen).float()
    ties[1, 100:] = NEG_INF
    ties[2, 7], ties[2, 9], ties[2, 400], ties[2, 500] = NAN, POS_INF, NAN, -0.0
    ties[3] = NEG_INF
    ties[4, :] = POS_INF
    ties[4, 300] = NAN
    ties[5, ::2] = NEG_INF
    return ties


def assert_matches_merge(
    cases: list[tuple[Tensor, tuple[int, ...], bool]], order: str, **method: object
) -> None:
    """For each (scores, ks, tie_free) case and each k, ``topk_mask(**method)`` returns the
    one-launch merge kernel's indices, mask and row flags; on tie-free rows also the torch
    path's indices."""
    for scores, ks, tie_free in cases:
        for k in ks:
            want_mask = torch.full_like(scores, 2.0)
            want_keys = torch.empty(scores.shape[0], dtype=torch.uint8)
            want = _triton_topk.topk_mask(
                scores, k, want_mask, method="merge", segments=1, has_keys=want_keys, order=order
            )
            mask = torch.full_like(scores, 2.0)
            has_keys = torch.empty(scores.shape[0], dtype=torch.uint8)
            got = _triton_topk.topk_mask(
                scores,
                k,
                mask,
                has_keys=has_keys,
                order=order,
                **method,  # type: ignore[arg-type]
            )
            assert torch.equal(got, want), (k, order, method)
            assert torch.equal(mask, want_mask) and torch.equal(has_keys, want_keys)
            if tie_free:
                assert torch.equal(got, select_topk(scores, k, order=order))


@pytest.mark.parametrize("bits", [8, 5])
@pytest.mark.parametrize("order", ["score", "index"])
def test_histogram_method_selects_what_one_program_per_row_does(order: str, bits: int) -> None:
    """One launch per radix pass over 256-score segments: the one-launch merge kernel's
    indices, mask and row flags, with ties across segments, NaN, +inf, -inf, -0.0, a hidden
    row, rows with fewer finite scores than k, and k up to L; on tie-free rows the torch path."""
    gen = torch.Generator().manual_seed(131)
    cases = [
        (edge_rows(gen), (40, 290, 700), False),
        (distinct_scores((2, 600), seed=132), (1, 300), True),
    ]
    assert_matches_merge(cases, order, method="histogram", segment_length=256, radix_bits=bits)


# ------------------------------------------------------------------ bucket method


@pytest.mark.parametrize("order", ["score", "index"])
def test_bucket_method_selects_what_one_program_per_row_does(order: str) -> None:
    """A coarse histogram, the candidates at or above the k-th score's bucket, a radix select
    over them: the merge kernel's indices, mask and row flags, with ties, NaN, +inf, -inf,
    -0.0, hidden rows, rows with fewer finite scores than k, k up to L, rows whose scores all
    share one bucket (every score a candidate), magnitudes past float16's range (which round
    to +-inf in the coarse digit) and below it (subnormal or zero there), a row of 4500
    scores in one bucket, whose candidates span several of the select's chunks, and rows
    whose k-th score or whose segments lie more than the counted window below the row's
    largest score."""
    gen = torch.Generator().manual_seed(141)
    ties = edge_rows(gen)
    spread = distinct_scores((2, 600), seed=143)
    one_bucket = 1.0 + (spread - spread.min()) * 1e-4  # all in [1, 1.25): one coarse bucket
    exponents = torch.randint(-30, 30, (3, 600), generator=gen).float()
    magnitudes = distinct_scores((3, 600), seed=144).sign() * 2.0**exponents
    magnitudes = magnitudes * (1 + torch.rand(3, 600, generator=gen))
    wide = distinct_scores((1, 4500), seed=145)
    wide_bucket = 1.0 + (wide - wide.min()) * 1e-5  # 4500 candidates: three 2048-wide chunks
    # Each segment counts only the 128 coarse digits at and below its own largest score: below
    # a positive one, every positive score, zero and the negative ones down to some magnitude.
    # Row 0: five scores near 1e4 over negative ones (-0.1 to -23), below that window, so for
    # k > 5 every score is a candidate. Row 1: the first segment holds large positive scores,
    # the other segments negative ones whose windows lie wholly below the row's; row 2: the
    # reverse, the last segment on top.
    far = distinct_scores((3, 600), seed=146)
    far = (far - far.min() + 1) * 1e-3  # distinct, in [1e-3, 0.23]
    far[0] *= -100.0
    far[0, torch.tensor([3, 250, 251, 480, 599])] = torch.tensor([1e4, 2e4, 3e4, 4e4, 5e4])
    far[1, :256] *= 2.0**20
    far[1, 256:] *= -100.0
    far[2, :512] *= -100.0
    far[2, 512:] *= 2.0**20
    cases = [
        (ties, (40, 290, 700), False),
        (distinct_scores((2, 600), seed=142), (1, 300), True),
        (one_bucket, (5, 599), True),
        (magnitudes, (17, 256), True),
        (wide_bucket, (2048,), True),
        (far, (3, 5, 6, 100, 300), True),
    ]
    assert_matches_merge(cases, order, method="bucket", segment_length=256)


def float16_of_key(key16: int) -> float:
    """The float16 value whose order-preserving 16-bit key is key16 (as the kernels' coarse
    digit builds it: sign bit set for x >= 0, every bit flipped for x < 0)."""
    bits = key16 ^ 0x8000 if key16 >= 0x8000 else key16 ^ 0xFFFF
    return float(torch.tensor([bits], dtype=torch.int32).to(torch.int16).view(torch.float16))


def around(x: float) -> list[float]:
    """x rounded to float32 and its two float32 neighbours on each side."""
    f = torch.tensor([x], dtype=torch.float32)
    up = torch.tensor([float("inf")])
    down = torch.tensor([float("-inf")])
    values = [f]
    for toward in (up, down):
        g = f
        for _ in range(2):
            g = torch.nextafter(g, toward)
            values.append(g)
    return [float(v) for v in values]


def digit_edge_row(low_digit: int, high_digit: int, k: int, length: int, seed: int) -> Tensor:
    """A row whose k-th largest score lies among the float32 values around the lower edge of
    coarse digit ``low_digit`` (the float16 rounding midpoint between its first value and the
    value below, and both of those), with three scores at the upper edge of ``high_digit``
    (around the midpoint between its last value and the next digit's first) and the rest
    below: the select's candidates reach both ends of their digit range."""
    first = float16_of_key(low_digit << 8)
    below = float16_of_key((low_digit << 8) - 1)
    edge = sorted({*around((first + below) / 2), first, below}, reverse=True)
    last = float16_of_key((high_digit << 8) + 255)
    nxt = float16_of_key((high_digit + 1) << 8)
    top = sorted(set(around((last + nxt) / 2)), reverse=True)[:3]
    gen = torch.Generator().manual_seed(seed)
    middle_count = k - len(top) - len(edge) // 2
    middle = first + (last - first) * (0.25 + 0.5 * torch.rand(middle_count, generator=gen))
    rest = length - len(top) - middle_count - len(edge)
    floor = float16_of_key(max((low_digit - 3) << 8, 0))
    filler = floor - torch.rand(rest, generator=gen).abs() * (1 + abs(floor))
    row = torch.cat([torch.tensor(top + edge), middle, filler]).float()
    return row[torch.randperm(length, generator=gen)]


def coarse_digits(keys: Tensor) -> Tensor:
    """The kernels' coarse digit of the float32 values whose ordered keys are ``keys`` (int64
    in [0, 2**32)): float16 rounding of the value clamped to +-65504, top byte of its ordered
    16-bit key."""
    bits = torch.where(keys >= 2**31, keys - 2**31, keys ^ 0xFFFFFFFF)
    x = bits.to(torch.int64).to(torch.int32).view(torch.float32)  # two's-complement wrap
    half = x.clamp(-65504.0, 65504.0).half().view(torch.int16).to(torch.int32) & 0xFFFF
    key16 = torch.where(half >= 0x8000, half ^ 0xFFFF, half | 0x8000)
    return key16 >> 8


def first_key_of_digit(digit: Tensor) -> Tensor:
    """The smallest ordered float32 key at or above -inf's whose coarse digit is at least
    ``digit`` (a binary search per digit); NaN's (all ones) past +inf's."""
    lo = torch.full_like(digit, 0x007FFFFF, dtype=torch.int64)  # -inf
    hi = torch.full_like(digit, 0xFF800000, dtype=torch.int64)  # +inf
    for _ in range(33):
        mid = (lo + hi) // 2
        below = coarse_digits(mid) < digit
        lo = torch.where(below, mid + 1, lo)
        hi = torch.where(below, hi, mid)
    # past +inf: only NaN, whose key the kernels make all ones
    return torch.where(lo > 0xFF800000, 0xFFFFFFFF, lo)


_triton_topk._load()
digit_key_bounds = _triton_topk._digit_key_bounds  # a global: jit code resolves names there


@triton.jit
def _bounds_kernel(digit_ptr, low_ptr, high_ptr, N: tl.constexpr):  # type: ignore[no-untyped-def]
    i = tl.arange(0, N)
    d = tl.load(digit_ptr + i)
    low, high = digit_key_bounds(d, d)
    tl.store(low_ptr + i, low)
    tl.store(high_ptr + i, high)


def test_digit_key_bounds_contain_every_key_of_the_digit_range() -> None:
    """For every coarse digit d, the select's lower bound lies at or below the key of every
    float32 whose digit is at least d, and its upper bound at or above the key of every
    float32 whose digit is at most d; both within 2**15 + 1 keys of those extremes (about half
    a float16 step: 2**12 keys for normal float16 values, more among its subnormals), except
    at the clamped ends, where they are the whole range."""
    digits = torch.arange(256, dtype=torch.int32)
    low = torch.empty(256, dtype=torch.int32)
    high = torch.empty(256, dtype=torch.int32)
    _bounds_kernel[(1,)](digits, low, high, N=256)
    low64 = low.to(torch.int64) & 0xFFFFFFFF
    high64 = high.to(torch.int64) & 0xFFFFFFFF
    first = first_key_of_digit(digits.to(torch.int64))  # smallest key of digit >= d
    last = first_key_of_digit(digits.to(torch.int64) + 1) - 1  # largest key of digit <= d
    last = last.clamp(max=0xFF800000)  # +inf's key, but for digit 255 (NaN)
    last[-1] = 0xFFFFFFFF
    assert bool((low64 <= first).all()) and bool((high64 >= last).all())
    inner = (digits > 5) & (digits < 250)
    assert bool((low64[digits <= 5] == 0).all())
    assert bool((high64[digits >= 250] == 0xFFFFFFFF).all())
    assert int((first - low64)[inner].max()) <= 2**15 + 1
    assert int((high64 - last)[inner].max()) <= 2**15 + 1


@pytest.mark.parametrize("order", ["score", "index"])
def test_bucket_select_bounds_hold_at_the_edges_of_the_digit_range(order: str) -> None:
    """The select runs on each candidate's offset from a lower bound derived from the k-th
    score's coarse digit, over the bit length of the range up to the row's largest digit: rows
    whose candidates sit exactly on the float16 rounding edges of both digits (positive,
    negative, across zero, near float16's subnormals and near its largest values), with the
    k-th score among the edge values, give the merge kernel's result."""
    pairs = [(190, 193), (188, 188), (60, 66), (120, 140), (127, 129), (128, 128), (6, 20),
             (240, 249), (7, 7), (249, 249)]  # fmt: skip
    rows = [digit_edge_row(lo, hi, 40, 600, seed=150 + i) for i, (lo, hi) in enumerate(pairs)]
    scores = torch.stack(rows)
    cases = [(scores, (40, 37, 43), False)]
    assert_matches_merge(cases, order, method="bucket", segment_length=256)


def test_default_method_depends_on_shapes_only() -> None:
    """On CPU (the interpreter): bucket for rows of at least 8k scores, whatever the row
    count; merge otherwise."""
    cpu = torch.device("cpu")
    assert _triton_topk.default_method(1, 4096, 2048, cpu) == "merge"
    assert _triton_topk.default_method(1, 16384, 2048, cpu) == "bucket"
    assert _triton_topk.default_method(1, 16383, 2048, cpu) == "merge"
    assert _triton_topk.default_method(8, 65536, 2048, cpu) == "bucket"
    assert _triton_topk.default_method(64, 65536, 2048, cpu) == "bucket"
    assert _triton_topk.default_method(64, 4096, 2048, cpu) == "merge"
    assert not _triton_topk.rows_method_available(cpu)  # the rows method is CUDA only


@pytest.mark.parametrize(
    ("kwargs", "length", "expected"),
    [
        ({}, 512, "merge"),
        ({}, 1024, "bucket"),
        ({"segment_length": 256}, 512, "bucket"),
        ({"segments": 2}, 1024, "merge"),
        ({"method": "histogram"}, 1024, "histogram"),
    ],
)
def test_arguments_given_alone_select_their_method(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, object], length: int, expected: str
) -> None:
    """segment_length alone selects the bucket method and segments alone the merge method;
    with neither, ``default_method`` decides (bucket from 8k scores: k=128 on 512 scores is
    below that, k=64 on 1024 above). Every choice returns select_topk's picks."""
    calls: list[str] = []
    for name, method in (("_bucket_select", "bucket"), ("_histogram_select", "histogram")):
        real = getattr(_triton_topk, name)

        def spy(*args: object, _real: object = real, _method: str = method) -> None:
            calls.append(_method)
            _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(_triton_topk, name, spy)
    scores = distinct_scores((2, length), seed=151)
    k = 64 if length == 1024 else 128
    got = _triton_topk.topk_mask(scores, k, **kwargs)  # type: ignore[arg-type]
    assert (calls[0] if calls else "merge") == expected
    assert torch.equal(got, select_topk(scores, k))


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("reason", [None, "a stand-in reason"])
def test_rows_method_dispatch(
    monkeypatch: pytest.MonkeyPatch, explicit: bool, reason: str | None
) -> None:
    """The rows method chosen by the caller or by ``default_method``: where its kernel takes the
    inputs, topk_mask hands it the flat rows, the row flags as uint8 and the order, and copies
    back a mask the kernel could not address by row; where it cannot, an explicit request is a
    ValueError naming the reason and the default's choice falls back to the bucket method. The
    CUDA kernel is replaced by the merge method here (its own tests run on a GPU)."""
    calls: list[str] = []
    real_merge = _triton_topk._merge_select

    def fake_rows(flat_scores, flat_out, mask_rows, has_keys, k, order):  # type: ignore[no-untyped-def]
        assert has_keys is None or has_keys.dtype == torch.uint8
        calls.append(f"rows k={k} {order}")
        flags = flat_out if has_keys is None else has_keys
        real_merge(flat_scores, flat_out, mask_rows, has_keys, flags, k, order, 5, 1, None)

    def spy(name: str, real: Any) -> Any:
        def select(*args: Any) -> None:
            calls.append(name)
            real(*args)

        return select

    monkeypatch.setattr(_triton_topk._cuda_topk, "unsupported_reason", lambda *a: reason)
    monkeypatch.setattr(_triton_topk._cuda_topk, "topk_mask_rows", fake_rows)
    monkeypatch.setattr(_triton_topk, "default_method", lambda *a: "rows")
    for name in ("merge", "bucket", "histogram"):
        real = getattr(_triton_topk, f"_{name}_select")
        monkeypatch.setattr(_triton_topk, f"_{name}_select", spy(name, real))
    scores = distinct_scores((3, 1024), seed=152)
    want_mask = torch.empty(3, 1024)
    want_flags = torch.empty(3, dtype=torch.bool)
    want = _triton_topk.topk_mask(
        scores, 64, want_mask, method="merge", order="index", has_keys=want_flags
    )
    mask = torch.empty(3, 2048)[:, ::2]  # not addressable row by row: written, then copied
    flags = torch.empty(3, dtype=torch.bool)
    method = {"method": "rows"} if explicit else {}
    if explicit and reason is not None:
        with pytest.raises(ValueError, match="a stand-in reason"):
            _triton_topk.topk_mask(scores, 64, mask, order="index", **method)  # type: ignore[arg-type]
        return
    calls.clear()  # the merge reference above
    got = _triton_topk.topk_mask(
        scores,
        64,
        mask,
        order="index",
        has_keys=flags,
        **method,  # type: ignore[arg-type]
    )
    assert calls == (["bucket"] if reason is not None else ["rows k=64 index"])
    assert torch.equal(got, want)
    assert torch.equal(mask, want_mask) and torch.equal(flags, want_flags)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "radix"}, "method must be one of"),
        ({"method": "histogram", "segment_length": 100}, "segment_length must be a power of two"),
        ({"method": "histogram", "segment_length": 128}, "segment_length must be a power of two"),
        ({"method": "histogram", "segment_length": 512.0}, "segment_length must be a power of two"),
        ({"method": "histogram", "segment_length": True}, "segment_length must be a power of two"),
        ({"method": "histogram", "segments": 2}, "segments is the merge method's"),
        ({"segments": 2, "segment_length": 256}, "segments is the merge method's"),
        ({"method": "bucket", "segments": 2}, "segments is the merge method's"),
        ({"method": "merge", "segment_length": 256}, "segment_length is the histogram and bucket"),
        ({"segment_length": 32768}, "segment_length must be at most 16384"),
        ({"method": "bucket", "segment_length": 32768}, "segment_length must be at most 16384"),
        (
            {"method": "merge", "segment_length": 32768},
            "segment_length is the histogram and bucket",
        ),
        ({"method": "rows", "segments": 2}, "rows method .* takes none of segments"),
        ({"method": "rows", "segment_length": 256}, "takes none of segment_length"),
        ({"method": "rows", "radix_bits": 5}, "takes none of radix_bits"),
        ({"method": "rows", "num_warps": 8}, "takes none of num_warps"),
        ({"method": "rows"}, "needs CUDA scores"),
    ],
)
def test_bad_method_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _triton_topk.topk_mask(torch.zeros(2, 8), 2, **kwargs)  # type: ignore[arg-type]
