"""GPU tests: the patched DSA indexer under real CUDA-graph capture matches eager execution."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from benchmarks._timing import warm_up
from dsa import DSAIndexer, IndexerOutput, indexer_scores, update_index_mask

pytestmark = pytest.mark.cuda

NEG_INF = float("-inf")
HEADS, DIM, TOPK = 64, 128, 2048


def capture(step: Callable[[], IndexerOutput | Tensor]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Warm `step` up on a side stream, then capture it once; return the graph and its outputs."""
    warm_up(step, 3)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


def random_qkw(
    batch: int, tokens: int, length: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    q = torch.randn(batch, tokens, HEADS, DIM, generator=gen, device="cuda").bfloat16()
    k = torch.randn(batch, length, DIM, generator=gen, device="cuda").bfloat16()
    w = torch.randn(batch, tokens, HEADS, generator=gen, device="cuda") * HEADS**-0.5 * DIM**-0.5
    return q, k, w.bfloat16()


def assert_same_selection(replayed: IndexerOutput, eager: IndexerOutput) -> None:
    """Same finite mask pattern, same selected sets per row, same row flags (order may differ)."""
    assert torch.equal(torch.isfinite(replayed.mask), torch.isfinite(eager.mask))
    assert (replayed.mask[torch.isfinite(replayed.mask)] == 0).all()
    assert torch.equal(replayed.indices.sort(dim=-1).values, eager.indices.sort(dim=-1).values)
    assert torch.equal(replayed.row_has_keys, eager.row_has_keys)


def test_bf16_scores_match_float64_reference() -> None:
    """bf16 scores on the GPU agree with a float64 reference within bf16 logit rounding."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, w = random_qkw(2, 1, 1024, gen)
    seq_lens = torch.tensor([1024, 300], device="cuda")
    got = indexer_scores(q, k, w, seq_lens=seq_lens)
    logits = torch.einsum("bthd,bnd->bthn", q.double(), k.double()).clamp_min(0)
    ref = torch.einsum("bth,bthn->btn", w.double(), logits)
    ref[1, :, 300:] = NEG_INF
    assert got.dtype == torch.float32
    assert torch.equal(torch.isfinite(got), torch.isfinite(ref))
    finite = torch.isfinite(ref)
    scale = ref[finite].abs().max()
    assert (got.double()[finite] - ref[finite]).abs().max() <= 1e-2 * scale


def test_decode_graph_replay_matches_eager_across_lengths() -> None:
    """One decode graph captured at B=4, L=4096 replays like eager for lengths 0..L_max."""
    batch, length = 4, 4096
    gen = torch.Generator(device="cuda").manual_seed(1)
    indexer = DSAIndexer(HEADS, DIM, TOPK)
    q, k, w = random_qkw(batch, 1, length, gen)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")
    mask = torch.empty(batch, 1, length, device="cuda")
    graph, out = capture(lambda: indexer(q, k, w, seq_lens, mask))
    assert isinstance(out, IndexerOutput)

    draws = [
        [0, 1, TOPK - 1, length],
        [TOPK, TOPK + 1, 0, 1],
        [length, 0, TOPK + 1, TOPK],
        [0, 0, 0, 0],
        [length, length, length, length],
    ]
    for lens in draws:
        new_q, new_k, new_w = random_qkw(batch, 1, length, gen)
        q.copy_(new_q)
        k.copy_(new_k)
        w.copy_(new_w)
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        eager = indexer(new_q, new_k, new_w, seq_lens.clone())
        assert_same_selection(out, eager)
        counts = torch.isfinite(out.mask).sum(-1).flatten().tolist()
        assert counts == [min(n, TOPK) for n in lens]
        assert out.row_has_keys.flatten().tolist() == [n > 0 for n in lens]


def test_graph_with_topk_wider_than_the_buffer_pads_with_sentinels() -> None:
    """Captured with k=2048 over L=1000, replays keep width k: every visible key, then -1."""
    batch, length = 2, 1000
    gen = torch.Generator(device="cuda").manual_seed(4)
    indexer = DSAIndexer(HEADS, DIM, TOPK)
    q, k, w = random_qkw(batch, 1, length, gen)
    seq_lens = torch.zeros(batch, dtype=torch.long, device="cuda")
    graph, out = capture(lambda: indexer(q, k, w, seq_lens))
    assert isinstance(out, IndexerOutput)
    for lens in ([0, length], [length - 1, 1], [length, length]):
        seq_lens.copy_(torch.tensor(lens))
        graph.replay()
        torch.cuda.synchronize()
        assert out.indices.shape == (batch, 1, TOPK)
        for b, n in enumerate(lens):
            assert set(out.indices[b, 0].tolist()) == set(range(n)) | {-1}
            assert torch.isfinite(out.mask[b, 0]).sum().item() == n


def test_prefill_graph_replay_matches_eager() -> None:
    """A prefill graph (B=1, S=256, causal) replays like eager, padding tokens included."""
    tokens, topk = 256, 128
    gen = torch.Generator(device="cuda").manual_seed(2)
    indexer = DSAIndexer(HEADS, DIM, topk)
    q, k, w = random_qkw(1, tokens, tokens, gen)
    seq_lens = torch.tensor([tokens], device="cuda")
    positions = torch.arange(tokens, device="cuda")
    graph, out = capture(lambda: indexer(q, k, w, seq_lens, causal_positions=positions))
    assert isinstance(out, IndexerOutput)

    for live in (tokens, 100, 1, 0):
        new_q, new_k, new_w = random_qkw(1, tokens, tokens, gen)
        q.copy_(new_q)
        k.copy_(new_k)
        w.copy_(new_w)
        seq_lens.fill_(live)
        graph.replay()
        torch.cuda.synchronize()
        eager = indexer(new_q, new_k, new_w, seq_lens.clone(), causal_positions=positions)
        assert_same_selection(out, eager)
        counts = torch.isfinite(out.mask[0]).sum(-1).tolist()
        assert counts == [min(t + 1, live, topk) for t in range(tokens)]
        assert not torch.isfinite(out.mask[0]).triu(diagonal=1).any()


def test_patched_update_under_capture_ignores_invalid_indices() -> None:
    """Captured update_index_mask on indices -1, -5, L and L+7 matches eager and stays alive."""
    width = 64
    mask = torch.empty(3, width, device="cuda")
    prior = torch.full((3, width), NEG_INF, device="cuda")
    idx = torch.zeros(3, 6, dtype=torch.long, device="cuda")

    def step() -> Tensor:
        mask.copy_(prior)
        return update_index_mask(mask, idx)

    graph, _ = capture(step)
    cases = [
        [[0, -1, -5, width, width + 7, 3], [-1] * 6, [width - 1, width, 0, 0, -5, 9]],
        [[width + 7] * 6, [5, 5, 5, -1, -1, 63], [0, 1, 2, 3, 4, 5]],
    ]
    priors = [
        torch.full((3, width), NEG_INF, device="cuda"),
        torch.randn(3, width, device="cuda"),
    ]
    for rows, new_prior in zip(cases, priors, strict=True):
        idx.copy_(torch.tensor(rows))
        prior.copy_(new_prior)
        graph.replay()
        torch.cuda.synchronize()
        eager = update_index_mask(new_prior.clone(), idx.clone())
        assert torch.equal(mask, eager)
        expected = new_prior.cpu()
        for r, row in enumerate(rows):
            for i in row:
                if 0 <= i < width:
                    expected[r, i] = 0.0
        assert torch.equal(mask.cpu(), expected)
    # A device-side assert from an out-of-range scatter would surface here.
    assert torch.randn(8, device="cuda").sum().isfinite().item()


def test_unpatched_eager_matches_patched_on_gpu() -> None:
    """Eagerly (no capture) the unpatched indexer returns the same outputs as the patched one."""
    batch, length = 4, 4096
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, w = random_qkw(batch, 1, length, gen)
    seq_lens = torch.tensor([0, 1, TOPK + 1, length], device="cuda")
    patched = DSAIndexer(HEADS, DIM, TOPK)(q, k, w, seq_lens)
    unpatched = DSAIndexer(HEADS, DIM, TOPK, patched=False)(q, k, w, seq_lens)
    assert torch.equal(patched.indices, unpatched.indices)
    assert torch.equal(patched.mask, unpatched.mask)
