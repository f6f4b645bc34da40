"""GPU tests of the fused Triton kernels: the scorer (bf16 and fp8 keys) against float64, the
fused top-k + mask against ``select_topk`` bit for bit, capture and replay, and certify."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import dsa._indexer
from benchmarks._timing import warm_up
from dsa import (
    DSAIndexer,
    IndexerOutput,
    _cuda_topk,
    _triton,
    _triton_topk,
    indexer_scores,
    quantize_keys_fp8,
    quantize_queries_fp8,
    select_topk,
    update_index_mask,
)

pytestmark = pytest.mark.cuda
pytest.importorskip("triton")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

NEG_INF = float("-inf")
HEADS, DIM, TOPK = 64, 128, 2048
REL_TOL = 1e-2


# --------------------------------------------------------------------------- helpers


def random_qkw(
    batch: int,
    tokens: int,
    length: int,
    gen: torch.Generator,
    *,
    dtype: torch.dtype = torch.bfloat16,
    w_dtype: torch.dtype = torch.float32,
    heads: int = HEADS,
    dim: int = DIM,
) -> tuple[Tensor, Tensor, Tensor]:
    q = torch.randn(batch, tokens, heads, dim, generator=gen, device="cuda").to(dtype)
    k = torch.randn(batch, length, dim, generator=gen, device="cuda").to(dtype)
    w = torch.randn(batch, tokens, heads, generator=gen, device="cuda") * (heads * dim) ** -0.5
    return q, k, w.to(w_dtype)


def reference(q: Tensor, k: Tensor, w: Tensor, limit: Tensor | None) -> Tensor:
    """float64 scores of the (already rounded) inputs; limit [B, T]: visible keys per token."""
    logits = torch.einsum("bthd,bnd->bthn", q.double(), k.double()).clamp_min(0)
    ref = torch.einsum("bth,bthn->btn", w.double(), logits)
    if limit is not None:
        hidden = torch.arange(k.shape[1], device=k.device) >= limit.to(k.device)[..., None]
        ref = ref.masked_fill(hidden, NEG_INF)
    return ref


def assert_matches_reference(got: Tensor, ref: Tensor) -> None:
    """Same shape, float32, identical -inf pattern, relative L2 error below REL_TOL."""
    assert got.dtype == torch.float32
    assert got.shape == ref.shape
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(got), finite), "finite pattern differs from the reference"
    assert (got[~finite] == NEG_INF).all(), "hidden keys must score exactly -inf"
    if finite.any():
        err = (got.double()[finite] - ref[finite]).norm()
        assert err <= REL_TOL * ref[finite].norm(), f"relative error {err / ref[finite].norm()}"


def lengths_for(batch: int, length: int) -> list[int]:
    """Partial, padding (0), full, 1, middle and beyond-the-buffer lengths, cycled to batch."""
    pattern = [max(length - 17, 1), 0, length, 1, length // 2 + 3, length + 5, 63, 129]
    return [pattern[i % len(pattern)] for i in range(batch)]


def capture(step: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Warm `step` up eagerly on a side stream (this compiles the kernel), then capture it."""
    warm_up(step, 3)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    ("batch", "length"),
    [(1, 4096), (3, 1000), (8, 4097), (2, 65), (5, 130), (4, 65536)],
)
def test_decode_scores_match_float64(batch: int, length: int) -> None:
    """Decode (T=1) at several (B, L), L not a multiple of the block included: both backends
    match float64 within 1e-2 relative and hide exactly the keys at or past seq_len."""
    gen = torch.Generator(device="cuda").manual_seed(batch * 100_003 + length)
    w_dtype = torch.bfloat16 if batch % 2 else torch.float32
    q, k, w = random_qkw(batch, 1, length, gen, w_dtype=w_dtype)
    lens_dtype = torch.int32 if batch % 2 else torch.int64
    seq_lens = torch.tensor(lengths_for(batch, length), dtype=lens_dtype, device="cuda")
    ref = reference(q, k, w, seq_lens.view(batch, 1))
    fused = indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton")
    assert_matches_reference(fused, ref)
    assert_matches_reference(indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch"), ref)
    # "auto" takes the fused kernel for these inputs.
    assert torch.equal(indexer_scores(q, k, w, seq_lens=seq_lens), fused)


def test_scores_without_limits_and_with_a_strided_key_cache() -> None:
    """No seq_lens: every key is finite; a non-contiguous slice of a larger cache works."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, _, w = random_qkw(2, 3, 777, gen)
    big = torch.randn(2, 900, DIM, generator=gen, device="cuda").bfloat16()
    k = big[:, :777]
    assert not k.is_contiguous()
    got = indexer_scores(q, k, w, backend="triton")
    assert torch.isfinite(got).all()
    assert_matches_reference(got, reference(q, k, w, None))


def test_fp16_inputs_match_float64() -> None:
    """fp16 q and k with fp16 w go through the fused kernel and match float64."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    q, k, w = random_qkw(3, 1, 2000, gen, dtype=torch.float16, w_dtype=torch.float16)
    seq_lens = torch.tensor([2000, 0, 517], device="cuda")
    got = indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton")
    assert_matches_reference(got, reference(q, k, w, seq_lens.view(3, 1)))


def test_other_power_of_two_geometry() -> None:
    """H=16, D=64 (other powers of two) also run fused and match float64."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, w = random_qkw(2, 2, 300, gen, heads=16, dim=64)
    seq_lens = torch.tensor([[300, 299], [5, 0]], device="cuda")
    got = indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton")
    assert_matches_reference(got, reference(q, k, w, seq_lens))


def test_prefill_causal_positions_match_float64() -> None:
    """Prefill: positions [T] shared by the batch give a lower-triangular finite pattern."""
    gen = torch.Generator(device="cuda").manual_seed(4)
    tokens = 128
    q, k, w = random_qkw(2, tokens, tokens, gen)
    positions = torch.arange(tokens, device="cuda")
    got = indexer_scores(q, k, w, causal_positions=positions, backend="triton")
    limit = (positions + 1).view(1, tokens).expand(2, tokens)
    assert_matches_reference(got, reference(q, k, w, limit))
    tril = torch.ones(tokens, tokens, dtype=torch.bool, device="cuda").tril()
    assert torch.equal(torch.isfinite(got), tril.expand(2, tokens, tokens))


def test_chunked_prefill_takes_the_stricter_bound() -> None:
    """Positions [B, T] with seq_lens [B]: visible keys are min(seq_len, position + 1)."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    batch, tokens, length = 2, 64, 300
    q, k, w = random_qkw(batch, tokens, length, gen)
    positions = torch.stack([torch.arange(tokens), torch.arange(tokens) + 100]).cuda()
    seq_lens = torch.tensor([300, 150], device="cuda")
    got = indexer_scores(q, k, w, seq_lens=seq_lens, causal_positions=positions, backend="triton")
    limit = torch.minimum(seq_lens.view(batch, 1), positions + 1)
    assert_matches_reference(got, reference(q, k, w, limit))


def test_two_tokens_per_row_use_their_own_lengths() -> None:
    """Multi-token prediction: seq_lens [B, 2] gives each token its own visible length."""
    gen = torch.Generator(device="cuda").manual_seed(6)
    length = 1500
    q, k, w = random_qkw(4, 2, length, gen)
    seq_lens = torch.tensor([[1499, 1500], [9, 10], [0, 1], [300, 301]], device="cuda")
    got = indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton")
    assert_matches_reference(got, reference(q, k, w, seq_lens))
    assert torch.isfinite(got).sum(-1).tolist() == seq_lens.tolist()


@pytest.mark.parametrize("config", _triton.CONFIGS, ids=lambda c: c.name)
def test_every_launch_config_matches_float64(config: _triton.ScorerConfig) -> None:
    """Each launch configuration, at L=1100 (a multiple of none of the block widths), with a
    flat [B*T] int32 limit holding full, 0, partial and out-of-range values."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    batch, tokens, length = 3, 2, 1100
    q, k, w = random_qkw(batch, tokens, length, gen)
    limit = torch.tensor([1100, 0, 333, 1, -4, 5000], dtype=torch.int32, device="cuda")
    got = _triton.fused_scores(q, k, w, limit, config=config)
    expected_limit = limit.clamp(0, length).view(batch, tokens)
    assert_matches_reference(got, reference(q, k, w, expected_limit))


# --------------------------------------------------------------------------- dispatch


def test_unsupported_inputs_fall_back_or_refuse() -> None:
    """fp32 q/k and H=8 are outside the kernel: "auto" uses PyTorch, "triton" refuses."""
    gen = torch.Generator(device="cuda").manual_seed(8)
    seq_lens = torch.tensor([100, 7], device="cuda")
    cases = [
        random_qkw(2, 1, 100, gen, dtype=torch.float32),
        random_qkw(2, 1, 100, gen, heads=8),
    ]
    for q, k, w in cases:
        assert not _triton.triton_available(q, k, w)
        auto = indexer_scores(q, k, w, seq_lens=seq_lens)
        assert torch.equal(auto, indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch"))
        with pytest.raises(ValueError, match='backend="triton"'):
            indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton")


def test_disable_env_var_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """DSA_DISABLE_TRITON=1: "auto" equals the PyTorch path and "triton" refuses."""
    gen = torch.Generator(device="cuda").manual_seed(9)
    q, k, w = random_qkw(2, 1, 512, gen)
    seq_lens = torch.tensor([512, 100], device="cuda")
    assert _triton.triton_available(q, k, w)
    monkeypatch.setenv("DSA_DISABLE_TRITON", "1")
    assert not _triton.triton_available(q, k, w)
    auto = indexer_scores(q, k, w, seq_lens=seq_lens)
    assert torch.equal(auto, indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch"))
    with pytest.raises(ValueError, match="DSA_DISABLE_TRITON"):
        indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton")


# --------------------------------------------------------------------------- capture


def test_fused_scores_under_graph_capture_replay_new_inputs() -> None:
    """Captured once at B=4, L=4133, replays on new q, k, w and lengths equal eager exactly
    and match float64."""
    batch, length = 4, 4133
    gen = torch.Generator(device="cuda").manual_seed(10)
    q, k, w = random_qkw(batch, 1, length, gen)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    graph, out = capture(lambda: indexer_scores(q, k, w, seq_lens=seq_lens, backend="triton"))
    assert isinstance(out, Tensor)
    for lens in ([length, 0, 1, 2049], [0, 0, 0, 0], [length + 9, 4096, 4097, 64]):
        new_q, new_k, new_w = random_qkw(batch, 1, length, gen)
        q.copy_(new_q)
        k.copy_(new_k)
        w.copy_(new_w)
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        eager = indexer_scores(new_q, new_k, new_w, seq_lens=seq_lens.clone(), backend="triton")
        assert torch.equal(out, eager)
        assert_matches_reference(out, reference(new_q, new_k, new_w, seq_lens.view(batch, 1)))


def test_indexer_step_with_fused_scorer_replays_like_eager() -> None:
    """DSAIndexer(backend="triton") captured at B=4, L=4096 replays like eager for each draw."""
    batch, length = 4, 4096
    gen = torch.Generator(device="cuda").manual_seed(11)
    indexer = DSAIndexer(HEADS, DIM, TOPK, backend="triton")
    q, k, w = random_qkw(batch, 1, length, gen)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    mask = torch.empty(batch, 1, length, device="cuda")
    graph, out = capture(lambda: indexer(q, k, w, seq_lens, mask))
    assert isinstance(out, IndexerOutput)
    for lens in ([0, 1, TOPK - 1, length], [TOPK, TOPK + 1, 0, length]):
        new_q, new_k, new_w = random_qkw(batch, 1, length, gen)
        q.copy_(new_q)
        k.copy_(new_k)
        w.copy_(new_w)
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        eager = indexer(new_q, new_k, new_w, seq_lens.clone())
        assert torch.equal(torch.isfinite(out.mask), torch.isfinite(eager.mask))
        assert torch.equal(out.indices.sort(dim=-1).values, eager.indices.sort(dim=-1).values)
        counts = torch.isfinite(out.mask).sum(-1).flatten().tolist()
        assert counts == [min(n, TOPK) for n in lens]


# --------------------------------------------------------------------------- selection


def test_triton_and_torch_indexers_select_the_same_keys() -> None:
    """DSAIndexer(backend="triton") and backend="torch" pick the same keys on random inputs.

    Rows with at most k visible keys must pick exactly those keys with both backends. For
    longer rows the two backends round differently (the PyTorch path rounds each head's logit
    to bf16; the fused kernel keeps float32), so keys whose scores sit at the k-th value can
    swap. Checked instead: (1) every pick of either backend is a valid top-k pick of the
    float64 scores up to a tolerance (no picked key scores clearly below the k-th value, no
    unpicked key clearly above it); (2) the fused picks equal the float64 top-k up to 2 swaps,
    since its float32 error is far below the gaps between neighbouring scores; (3) the two
    backends differ by at most k/64 swaps per row."""
    batch, length = 8, 8192
    gen = torch.Generator(device="cuda").manual_seed(12)
    q, k, w = random_qkw(batch, 1, length, gen, w_dtype=torch.bfloat16)
    lens = [0, 1, TOPK - 1, TOPK, TOPK + 1, 5000, length, length + 3]
    seq_lens = torch.tensor(lens, device="cuda")
    fused = DSAIndexer(HEADS, DIM, TOPK, backend="triton")(q, k, w, seq_lens)
    plain = DSAIndexer(HEADS, DIM, TOPK, backend="torch")(q, k, w, seq_lens)
    ref = reference(q, k, w, seq_lens.view(batch, 1))[:, 0].cpu()

    for b, n in enumerate(lens):
        visible = min(n, length)
        take = min(visible, TOPK)
        picks = {}
        for name, out in (("triton", fused), ("torch", plain)):
            row = out.indices[b, 0].tolist()
            chosen = [i for i in row if i >= 0]
            assert len(chosen) == len(set(chosen)) == take, f"{name} row {b}: {len(chosen)} picks"
            assert row[take:] == [-1] * (TOPK - take), f"{name} row {b}: sentinels misplaced"
            assert all(i < visible for i in chosen), f"{name} row {b}: picked a hidden key"
            finite = set(torch.isfinite(out.mask[b, 0]).nonzero().flatten().tolist())
            assert finite == set(chosen), f"{name} row {b}: mask disagrees with indices"
            picks[name] = set(chosen)
        if visible <= TOPK:
            assert picks["triton"] == picks["torch"] == set(range(visible))
            continue
        row_ref = ref[b, :visible]
        kth = row_ref.topk(TOPK).values[-1].item()
        tol = REL_TOL * row_ref.abs().max().item()
        exact = set(row_ref.topk(TOPK).indices.tolist())
        for name, chosen in picks.items():
            in_ref = row_ref[sorted(chosen)]
            left_out = row_ref[sorted(set(range(visible)) - chosen)]
            assert in_ref.min().item() >= kth - tol, f"{name} row {b}: a clearly low pick"
            assert left_out.max().item() <= kth + tol, f"{name} row {b}: a clearly high miss"
        assert len(picks["triton"] - exact) <= 2, f"row {b}: fused picks far from float64"
        assert len(picks["triton"] - picks["torch"]) <= TOPK // 64, f"row {b}: too many swaps"


# --------------------------------------------------------------------------- fused top-k + mask


def distinct_scores(rows: int, length: int, gen: torch.Generator) -> Tensor:
    """[rows, L] float32 scores without ties: permutations of distinct values of both signs."""
    perms = torch.stack([torch.randperm(length, generator=gen) for _ in range(rows)])
    return ((perms.float() - length / 3) * 0.37).cuda()


def reference_mask(scores: Tensor, k: int) -> Tensor:
    return update_index_mask(
        torch.full_like(scores, NEG_INF, dtype=torch.float32), select_topk(scores, k)
    )


@pytest.mark.parametrize(
    ("rows", "length", "k"),
    [
        (4, 65536, 2048),
        (3, 4097, 2048),
        (2, 131072, 2048),
        (5, 1000, 2048),
        (7, 300, 1),
        (2, 9000, 4096),
    ],
)
def test_fused_topk_equals_select_topk_bit_for_bit(rows: int, length: int, k: int) -> None:
    """Tie-free rows with hidden tails of several lengths: same indices, same order, same mask."""
    gen = torch.Generator().manual_seed(rows * 1_000_003 + length + k)
    scores = distinct_scores(rows, length, gen)
    for r, visible in enumerate([length, 0, 1, k - 1, k, k + 1, length // 2][:rows]):
        scores[r, max(visible, 0) :] = NEG_INF
    mask = torch.full((rows, length), 3.0, device="cuda")
    got = _triton_topk.topk_mask(scores, k, mask)
    assert torch.equal(got, select_topk(scores, k))
    assert torch.equal(mask, reference_mask(scores, k))


@pytest.mark.parametrize("segments", [1, 2, 4, 16])
def test_segment_count_does_not_change_the_result(segments: int) -> None:
    """One launch or two (S segments per row, then a merge): identical indices and mask, equal
    to the reference, on tie-free rows and on rows of repeated values."""
    rows, length, k = 3, 65536, 2048
    gen = torch.Generator().manual_seed(30 + segments)
    scores = distinct_scores(rows, length, gen)
    scores[1, 3000:] = NEG_INF
    scores[2] = torch.randint(-50, 50, (length,), generator=gen).float().cuda()
    mask = torch.empty(rows, length, device="cuda")
    got = _triton_topk.topk_mask(scores, k, mask, segments=segments)
    single_mask = torch.empty(rows, length, device="cuda")
    single = _triton_topk.topk_mask(scores, k, single_mask, segments=1)
    assert torch.equal(got, single) and torch.equal(mask, single_mask)
    assert torch.equal(got[:2], select_topk(scores[:2], k))
    assert torch.equal(mask[:2], reference_mask(scores[:2], k))


def test_fused_topk_nonfinite_scores_and_signed_zero() -> None:
    """NaN and +inf take leading -1 slots, -inf trails, -0.0 ties +0.0 (lower index first)."""
    scores = torch.tensor(
        [[1.0, float("nan"), 3.0, float("inf"), NEG_INF, 2.0, -0.0, 0.0]], device="cuda"
    )
    got = _triton_topk.topk_mask(scores, 8)
    assert got.tolist() == [[-1, -1, 2, 5, 0, 6, 7, -1]]
    assert torch.equal(got >= 0, select_topk(scores, 8) >= 0)


def test_fused_topk_ties_take_lower_indices() -> None:
    """Constant rows pick 0..k-1 in order; rows of few distinct values keep the reference
    score sequence."""
    equal = torch.zeros(3, 5000, device="cuda")
    equal[2, 100:] = NEG_INF
    got = _triton_topk.topk_mask(equal, 2048)
    assert got[0].tolist() == list(range(2048))
    assert got[2].tolist() == list(range(100)) + [-1] * 1948
    gen = torch.Generator().manual_seed(21)
    coarse = (torch.randint(-8, 9, (4, 20000), generator=gen).float() / 4).cuda()
    got = _triton_topk.topk_mask(coarse, 2048)
    ref = select_topk(coarse, 2048)
    assert torch.equal(torch.gather(coarse, -1, got), torch.gather(coarse, -1, ref))
    values = torch.gather(coarse, -1, got)
    same = values[:, 1:] == values[:, :-1]
    assert (got[:, 1:][same] > got[:, :-1][same]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_topk_half_precision_scores(dtype: torch.dtype) -> None:
    """bf16 and fp16 scores: the reference score sequence and sentinels."""
    gen = torch.Generator(device="cuda").manual_seed(22)
    scores = torch.randn(3, 2, 10000, generator=gen, device="cuda").to(dtype)
    scores[1, 0, 1500:] = NEG_INF
    got = _triton_topk.topk_mask(scores, 2048)
    ref = select_topk(scores, 2048)
    assert torch.equal(got >= 0, ref >= 0)
    assert torch.equal(
        torch.gather(scores, -1, got.clamp_min(0)), torch.gather(scores, -1, ref.clamp_min(0))
    )


def test_fused_topk_and_mask_under_capture_replay_new_scores() -> None:
    """Captured once at [4, 65536], k=2048: replays on new scores equal eager and the reference."""
    rows, length, k = 4, 65536, 2048
    gen = torch.Generator().manual_seed(23)
    scores = distinct_scores(rows, length, gen)
    mask = torch.empty(rows, length, device="cuda")
    graph, out = capture(lambda: _triton_topk.topk_mask(scores, k, mask))
    assert isinstance(out, Tensor)
    for visible in ([length, 0, 1, 3000], [2047, 2048, 2049, 0]):
        new = distinct_scores(rows, length, gen)
        for r, n in enumerate(visible):
            new[r, n:] = NEG_INF
        scores.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, select_topk(new, k))
        assert torch.equal(mask, reference_mask(new, k))


def test_fill_index_mask_edge_cases_and_capture() -> None:
    """The one-kernel mask writer ignores -1, -5, L, L+7, keeps duplicates harmless, replays."""
    width = 64
    idx = torch.tensor(
        [[0, -1, -5, width, width + 7, 3], [-1] * 6, [width - 1, width, -5, 0, 0, width + 7]],
        device="cuda",
    )
    mask = torch.randn(3, width, device="cuda")
    graph, _ = capture(lambda: _triton_topk.fill_index_mask(mask, idx))
    for rows in (idx.tolist(), [[5, 5, 5, -1, -1, 63], [width + 7] * 6, [0, 1, 2, 3, 4, 5]]):
        idx.copy_(torch.tensor(rows))
        mask.normal_()
        graph.replay()
        torch.cuda.synchronize()
        expected = update_index_mask(torch.full((3, width), NEG_INF, device="cuda"), idx)
        assert torch.equal(mask, expected)
    assert torch.randn(8, device="cuda").sum().isfinite().item()


# --------------------------------------------------------------------------- fp8 keys


def test_fp8_fused_scores_match_float64_of_dequantised_keys() -> None:
    """fp8 keys with scales: the fused scorer matches float64 on the dequantised keys and the
    dequantised e4m3 queries (both scorers quantise q with fp8 keys), and equals the PyTorch
    fp8 path's -inf pattern."""
    gen = torch.Generator(device="cuda").manual_seed(24)
    batch, length = 3, 5000
    q, k, w = random_qkw(batch, 1, length, gen)
    values, scales = quantize_keys_fp8(k)
    seq_lens = torch.tensor([length, 0, 1234], device="cuda")
    fused = indexer_scores(q, values, w, seq_lens=seq_lens, k_scale=scales, backend="triton")
    dequantised = (values.double() * scales.double()[..., None]).to(torch.float64)
    q_values, q_scales = quantize_queries_fp8(q)
    ref = reference(
        q_values.double() * q_scales.double()[..., None], dequantised, w, seq_lens.view(batch, 1)
    )
    assert_matches_reference(fused, ref)
    plain = indexer_scores(q, values, w, seq_lens=seq_lens, k_scale=scales, backend="torch")
    assert_matches_reference(plain, ref)


def test_fp8_indexer_replays_like_eager_and_overlaps_bf16() -> None:
    """DSAIndexer(backend="triton") on an fp8 key cache, captured at B=4, L=16384, replays like
    eager; its selection keeps at least 90% of the bf16 selection on random keys."""
    batch, length = 4, 16384
    gen = torch.Generator(device="cuda").manual_seed(25)
    q, k, w = random_qkw(batch, 1, length, gen)
    values, scales = quantize_keys_fp8(k)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    mask = torch.empty(batch, 1, length, device="cuda")
    indexer = DSAIndexer(HEADS, DIM, TOPK, backend="triton")
    graph, out = capture(lambda: indexer(q, values, w, seq_lens, mask, k_scale=scales))
    assert isinstance(out, IndexerOutput)
    for lens in ([0, 1, TOPK + 1, length], [length, TOPK, TOPK - 1, 0]):
        new_k = random_qkw(batch, 1, length, gen)[1]
        new_values, new_scales = quantize_keys_fp8(new_k)
        values.copy_(new_values)
        scales.copy_(new_scales)
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        eager = indexer(q, new_values, w, seq_lens.clone(), k_scale=new_scales)
        assert torch.equal(out.indices, eager.indices)
        assert torch.equal(out.mask, eager.mask)
        bf16 = DSAIndexer(HEADS, DIM, TOPK, backend="triton")(q, new_k, w, seq_lens.clone())
        for b, n in enumerate(lens):
            a = set(out.indices[b, 0].tolist()) - {-1}
            e = set(bf16.indices[b, 0].tolist()) - {-1}
            assert len(a) == len(e) == min(n, TOPK)
            assert len(a & e) >= 0.9 * len(e)


# --------------------------------------------------------------------------- auto path and certify


def test_auto_indexer_takes_the_fused_topk_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default DSAIndexer on CUDA runs the fused top-k + mask kernel once per step."""
    calls: list[bool] = []
    original = _triton_topk.topk_mask

    def counting(scores: Tensor, k: int, mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        calls.append(mask is not None)
        return original(scores, k, mask, **kwargs)

    monkeypatch.setattr(dsa._indexer._triton_topk, "topk_mask", counting)
    gen = torch.Generator(device="cuda").manual_seed(26)
    q, k, w = random_qkw(3, 1, 4096, gen)
    seq_lens = torch.tensor([4096, 5, 0], device="cuda")
    out = DSAIndexer(HEADS, DIM, TOPK)(q, k, w, seq_lens)
    assert calls == [True]
    assert out.row_has_keys.dtype == torch.bool
    assert out.row_has_keys.flatten().tolist() == [True, True, False]
    reference = DSAIndexer(HEADS, DIM, TOPK, backend="torch")(q, k, w, seq_lens)
    assert torch.equal(torch.isfinite(out.mask)[1], torch.isfinite(reference.mask)[1])


def test_certify_passes_with_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """graphguard certify (quick) is CERTIFIED on this GPU with the fused top-k in the step."""
    from graphguard import _certify

    calls: list[int] = []
    original = _triton_topk.topk_mask

    def counting(scores: Tensor, k: int, mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        calls.append(k)
        return original(scores, k, mask, **kwargs)

    monkeypatch.setattr(dsa._indexer._triton_topk, "topk_mask", counting)
    cert = _certify.certify("dsa", quick=True)
    assert cert.certified, cert.summary()
    assert TOPK in calls, "the replayed step did not run the fused top-k"


@pytest.mark.parametrize(
    ("rows", "length", "segments"), [(4, 4096, 1), (2, 65536, 4), (3, 65536, 1)]
)
def test_fused_topk_in_index_order_equals_the_torch_index_order(
    rows: int, length: int, segments: int
) -> None:
    """order="index": the PyTorch path's picks by position, bit for bit on tie-free rows, and
    the score-ordered kernel's mask and row flags, under graph replay too."""
    k = 2048
    gen = torch.Generator().manual_seed(rows * 7 + length + segments)
    scores = distinct_scores(rows, length, gen)
    scores[1, 1000:] = NEG_INF
    scores[0, 5] = float("nan")
    mask = torch.empty(rows, length, device="cuda")
    flags = torch.empty(rows, dtype=torch.uint8, device="cuda")
    by_score_mask = torch.empty(rows, length, device="cuda")
    by_score_flags = torch.empty(rows, dtype=torch.uint8, device="cuda")
    _triton_topk.topk_mask(scores, k, by_score_mask, segments=segments, has_keys=by_score_flags)

    def step() -> Tensor:
        return _triton_topk.topk_mask(
            scores, k, mask, segments=segments, has_keys=flags, order="index"
        )

    want = select_topk(scores, k, order="index")
    assert torch.equal(step(), want)
    graph, out = capture(step)
    mask.fill_(7.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
    assert torch.equal(mask, by_score_mask) and torch.equal(flags, by_score_flags)


@pytest.mark.parametrize("bits", [b for b in _triton_topk.RADIX_WIDTHS if b != 8])
@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize(("rows", "length", "segments"), [(4, 4096, 1), (2, 65536, 4)])
def test_every_radix_width_selects_what_the_eight_bit_one_does(
    rows: int, length: int, segments: int, order: str, bits: int
) -> None:
    """Every digit width returns the 8-bit kernel's indices, mask and row flags, with ties and
    non-finite scores, under graph replay too."""
    k = 2048
    gen = torch.Generator().manual_seed(rows + length + segments)
    scores = torch.randint(-40, 40, (rows, length), generator=gen).float().div(8).cuda()
    scores[1, 1000:] = NEG_INF
    scores[0, 5], scores[0, 9] = float("nan"), float("inf")
    want_mask = torch.empty(rows, length, device="cuda")
    want_flags = torch.empty(rows, dtype=torch.uint8, device="cuda")
    want = _triton_topk.topk_mask(
        scores, k, want_mask, segments=segments, has_keys=want_flags, order=order, radix_bits=8
    )
    mask = torch.empty(rows, length, device="cuda")
    flags = torch.empty(rows, dtype=torch.uint8, device="cuda")

    def step() -> Tensor:
        return _triton_topk.topk_mask(
            scores, k, mask, segments=segments, has_keys=flags, order=order, radix_bits=bits
        )

    assert torch.equal(step(), want)
    graph, out = capture(step)
    mask.fill_(7.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
    assert torch.equal(mask, want_mask) and torch.equal(flags, want_flags)


def assert_method_matches_merge(scores: Tensor, order: str, **method: object) -> None:
    """``topk_mask(**method)`` returns the one-launch merge kernel's indices, mask and row flags
    (k=2048), eagerly and from a graph replay into refilled buffers."""
    k = 2048
    rows, length = scores.shape
    want_mask = torch.empty(rows, length, device="cuda")
    want_flags = torch.empty(rows, dtype=torch.uint8, device="cuda")
    want = _triton_topk.topk_mask(
        scores, k, want_mask, method="merge", segments=1, has_keys=want_flags, order=order
    )
    mask = torch.empty(rows, length, device="cuda")
    flags = torch.empty(rows, dtype=torch.uint8, device="cuda")

    def step() -> Tensor:
        return _triton_topk.topk_mask(
            scores,
            k,
            mask,
            has_keys=flags,
            order=order,
            **method,  # type: ignore[arg-type]
        )

    assert torch.equal(step(), want)
    assert torch.equal(mask, want_mask) and torch.equal(flags, want_flags)
    graph, out = capture(step)
    mask.fill_(7.0)
    flags.fill_(9)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
    assert torch.equal(mask, want_mask) and torch.equal(flags, want_flags)


def repeated_values_with_edges(rows: int, length: int, gen: torch.Generator) -> Tensor:
    """[rows, length] CPU scores in steps of 1/8 (ties everywhere) with NaN, +inf and -inf in
    row 0 and a hidden tail (fewer finite scores than k) in row 1."""
    scores = torch.randint(-400, 400, (rows, length), generator=gen).float().div(8)
    scores[1, 1000:] = NEG_INF
    scores[0, 5], scores[0, 9], scores[0, 70000 % length] = float("nan"), float("inf"), NEG_INF
    return scores


@pytest.mark.parametrize("bits", [8, 6, 5])
@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize(
    ("rows", "length", "segment_length"),
    [(3, 65536, None), (2, 131072, 1024), (5, 20000, 4096), (64, 16384, None)],
)
def test_histogram_method_selects_what_one_program_per_row_does(
    rows: int, length: int, segment_length: int | None, order: str, bits: int
) -> None:
    """The histogram method (one launch per radix pass over every segment of a row) returns
    the one-launch merge kernel's indices, mask and row flags: rows of repeated values, NaN,
    +inf, hidden tails, a row with fewer finite scores than k, under graph replay too."""
    gen = torch.Generator().manual_seed(rows + length + bits)
    scores = repeated_values_with_edges(rows, length, gen).cuda()
    scores[-1] = distinct_scores(1, length, gen)[0]
    assert_method_matches_merge(
        scores, order, method="histogram", segment_length=segment_length, radix_bits=bits
    )


@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize(
    ("rows", "length", "segment_length"),
    [(3, 65536, None), (2, 131072, 1024), (5, 20000, 4096), (64, 16384, None), (4, 3000, 256)],
)
def test_bucket_method_selects_what_one_program_per_row_does(
    rows: int, length: int, segment_length: int | None, order: str
) -> None:
    """The bucket method (a float16 top-byte histogram, the candidates at or above the k-th
    score's bucket, a radix select over them) returns the one-launch merge kernel's indices,
    mask and row flags: repeated values, NaN, +inf, -inf, a hidden tail, a row with fewer
    finite scores than k, magnitudes past float16's range and below it, a row whose k-th
    score lies below the counted window (every score a candidate), one row whose scores
    all share one bucket, under graph replay too."""
    gen = torch.Generator().manual_seed(rows + length + 7)
    assert_method_matches_merge(
        long_rows(rows, length, gen).cuda(), order, method="bucket", segment_length=segment_length
    )


def long_rows(rows: int, length: int, gen: torch.Generator) -> Tensor:
    """[rows, length] CPU scores for the bucket and rows methods: repeated_values_with_edges,
    with (from 4 rows) a row of magnitudes from 2**-30 to 2**30 of both signs, (from 5 rows) a
    row of 64 scores of 1e4 over negative ones (-1 to -0.004: the k-th lies below every bucket
    window, the 128 coarse digits at and below a segment's largest score), and last a row whose
    scores all lie in [1, 1.25): one float16 top-byte bucket, one bin of the rows method's
    first histogram."""
    scores = repeated_values_with_edges(rows, length, gen)
    if rows >= 4:
        exponents = torch.randint(-30, 30, (length,), generator=gen).float()
        scores[2] = distinct_scores(1, length, gen)[0].cpu().sign() * 2.0**exponents
    if rows >= 5:
        far = distinct_scores(1, length, gen)[0].cpu()
        scores[3] = -(far - far.min() + 64) / (length + 64)
        scores[3, torch.randperm(length, generator=gen)[:64]] = 1e4
    scores[-1] = 1.0 + distinct_scores(1, length, gen)[0].cpu().add(length).mul(1e-6)
    return scores


# ------------------------------------------------------------ the rows method (CUDA, NVRTC)

needs_rows_method = pytest.mark.skipif(
    not _triton_topk.rows_method_available(torch.device("cuda")),
    reason="the rows method's CUDA kernel cannot run here (NVRTC or the driver did not load)",
)


@needs_rows_method
@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize(
    ("rows", "length"), [(3, 65536), (2, 131072), (5, 20000), (64, 16384), (4, 3000), (3, 5001)]
)
def test_rows_method_selects_what_one_program_per_row_does(
    rows: int, length: int, order: str
) -> None:
    """One CUDA block per row (shared-memory histograms of the top 11 key bits, the k-th
    score's bin narrowed in two more passes, a compaction in position order) returns the
    one-launch merge kernel's indices, mask and row flags: repeated values, NaN, +inf, -inf, a
    hidden tail, a row with fewer finite scores than k, magnitudes past float16's range and
    below it, a row of widely spread scores far below a few large ones, and one row whose
    scores all share one bin (more of them than the kernel keeps in shared memory from 20000
    scores on: the narrowing passes read the row again), under graph replay too. 5001 scores
    end mid-vector (the last vector is read score by score)."""
    gen = torch.Generator().manual_seed(rows + length + 11)
    assert length < 20000 or length > _cuda_topk.CACHE_CAP  # the last row's bin overflows
    assert_method_matches_merge(long_rows(rows, length, gen).cuda(), order, method="rows")


@needs_rows_method
@pytest.mark.parametrize("order", ["score", "index"])
@pytest.mark.parametrize("score_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_method_takes_every_score_and_mask_dtype(
    order: str, score_dtype: torch.dtype, mask_dtype: torch.dtype
) -> None:
    """bf16 and fp16 scores (two-byte vector loads) and every mask dtype: the merge kernel's
    result on the same scores, k above and below the row length, rows that start off the
    vector boundary (a view one score in) and a mask that is not addressable row by row."""
    gen = torch.Generator().manual_seed(23)
    base = repeated_values_with_edges(4, 3001, gen).to(score_dtype).cuda()
    for scores in (base, base[:, 1:]):
        rows, length = scores.shape
        for k in (1, 300, 3000, 3001, 4096):
            want_mask = torch.empty(rows, length, device="cuda", dtype=mask_dtype)
            want = _triton_topk.topk_mask(scores, k, want_mask, method="merge", order=order)
            mask = torch.empty(rows, 2 * length, device="cuda", dtype=mask_dtype)[:, ::2]
            flags = torch.empty(rows, dtype=torch.uint8, device="cuda")
            got = _triton_topk.topk_mask(
                scores, k, mask, method="rows", order=order, has_keys=flags
            )
            assert torch.equal(got, want), (k, tuple(scores.shape))
            assert torch.equal(mask, want_mask), (k, tuple(scores.shape))
            assert torch.equal(flags.bool(), (want >= 0).any(dim=-1))


@needs_rows_method
def test_rows_method_refuses_what_it_cannot_take_and_default_falls_back() -> None:
    """Explicit method="rows" with another method's settings or a float64 mask is a
    ValueError; the default choice takes the bucket method for a float64 mask, with the same
    result; a first call under capture (the kernel not yet loaded) is refused before any
    driver call, naming the eager warm-up."""
    scores = torch.randn(64, 16384, device="cuda")
    for extra in ({"segments": 2}, {"segment_length": 1024}, {"radix_bits": 5}, {"num_warps": 8}):
        with pytest.raises(ValueError, match="rows method"):
            _triton_topk.topk_mask(scores, 2048, method="rows", **extra)  # type: ignore[arg-type]
    wide = torch.empty(64, 16384, device="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        _triton_topk.topk_mask(scores, 2048, wide, method="rows")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if 3 * sms <= 8 * 64:
        assert _triton_topk.default_method(64, 16384, 2048, scores.device) == "rows"
    want_mask = torch.empty_like(wide)
    want = _triton_topk.topk_mask(scores, 2048, want_mask, method="bucket")
    assert torch.equal(_triton_topk.topk_mask(scores, 2048, wide), want)
    assert torch.equal(wide, want_mask)
    # float32 scores, bfloat16 mask: as if this pair had never been loaded in this process
    _cuda_topk._loaded.discard((torch.cuda.current_device(), 0, 1))
    mask16 = torch.empty(64, 16384, device="cuda", dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The CUDA Graph is empty")  # nothing was captured
        with pytest.raises(RuntimeError, match="eager call first"), torch.cuda.graph(graph):
            _triton_topk.topk_mask(scores, 2048, mask16, method="rows")
    torch.cuda.synchronize()
    want_mask16 = torch.empty_like(mask16)
    want = _triton_topk.topk_mask(scores, 2048, want_mask16, method="merge")
    assert torch.equal(_triton_topk.topk_mask(scores, 2048, mask16, method="rows"), want)
    assert torch.equal(mask16, want_mask16)
