"""GPU tests of the fused Triton scorer: float64 accuracy, -inf pattern, capture, selection."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from benchmarks._timing import warm_up
from dsa import DSAIndexer, IndexerOutput, _triton, indexer_scores

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
