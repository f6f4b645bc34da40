"""CPU tests of the DSA indexer workload: scores, top-k, mask update, module and hazard lines."""

from __future__ import annotations

import linecache
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import dsa
from dsa import (
    DSAIndexer,
    indexer_scores,
    quantize_keys_fp8,
    quantize_queries_fp8,
    select_topk,
    unpatched_hazard_lines,
    update_index_mask,
    update_index_mask_unpatched,
)
from dsa._fp8 import round_to_e4m3

NEG_INF = float("-inf")
UPDATES: list[Callable[[Tensor, Tensor], Tensor]] = [update_index_mask, update_index_mask_unpatched]


# --------------------------------------------------------------------------- helpers


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def make_inputs(
    batch: int, tokens: int, heads: int, dim: int, length: int, *, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Random fp32 q [B,T,H,D], k [B,L,D], w [B,T,H]; w has both signs, as in the model."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, tokens, heads, dim, generator=gen)
    k = torch.randn(batch, length, dim, generator=gen)
    w = torch.randn(batch, tokens, heads, generator=gen) * heads**-0.5 * dim**-0.5
    return q, k, w


def reference_scores(q: Tensor, k: Tensor, w: Tensor, limits: list[list[int]]) -> Tensor:
    """float64 scores by explicit loops; limits[b][t] keys are visible to token t of row b."""
    batch, tokens, heads, _ = q.shape
    length = k.shape[1]
    out = torch.empty(batch, tokens, length, dtype=torch.float64)
    for b in range(batch):
        for t in range(tokens):
            row = torch.zeros(length, dtype=torch.float64)
            for h in range(heads):
                logits = k[b].double() @ q[b, t, h].double()
                row += w[b, t, h].double() * logits.clamp_min(0)
            row[max(limits[b][t], 0) :] = NEG_INF
            out[b, t] = row
    return out


def reference_update(mask: Tensor, idx: Tensor) -> Tensor:
    """Loop form of the mask contract: valid indices set 0, everything else untouched."""
    out = mask.clone()
    width = out.shape[-1]
    flat_mask = out.view(-1, width)
    flat_idx = idx.reshape(-1, idx.shape[-1])
    for row in range(flat_mask.shape[0]):
        for i in flat_idx[row].tolist():
            if 0 <= i < width:
                flat_mask[row, i] = 0.0
    return out


def reference_sets(ref: Tensor, k: int) -> list[list[set[int]]]:
    """Expected selection sets from float64 scores: every visible key if few, else the top k."""
    sets: list[list[set[int]]] = []
    for b in range(ref.shape[0]):
        sets.append([])
        for t in range(ref.shape[1]):
            row = ref[b, t]
            visible = int(torch.isfinite(row).sum())
            take = min(visible, k)
            sets[b].append(set(row.topk(take).indices.tolist()) if take else set())
    return sets


def selected_sets(idx: Tensor) -> list[list[set[int]]]:
    """Selections as sets per (b, t), sentinels dropped; fails on a duplicated pick."""
    sets: list[list[set[int]]] = []
    for b in range(idx.shape[0]):
        sets.append([])
        for t in range(idx.shape[1]):
            picks = [i for i in idx[b, t].tolist() if i >= 0]
            assert len(picks) == len(set(picks)), f"duplicate pick in row {b}, token {t}"
            sets[b].append(set(picks))
    return sets


class HostReadRecorder(TorchDispatchMode):
    """Records every aten op; the host-read ones are what breaks CUDA-graph capture."""

    HOST_READS = frozenset({"aten._local_scalar_dense.default", "aten.nonzero.default"})

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    @property
    def host_reads(self) -> list[str]:
        return [op for op in self.ops if op in self.HOST_READS]


@contextmanager
def recording() -> Iterator[HostReadRecorder]:
    with HostReadRecorder() as recorder:
        yield recorder


# --------------------------------------------------------------------------- public surface


def test_all_is_sorted_and_lists_the_public_names() -> None:
    """dsa.__all__ is sorted and names exactly the package's public attributes."""
    public = {name for name in vars(dsa) if not name.startswith("_") and name != "annotations"}
    assert dsa.__all__ == sorted(dsa.__all__)
    assert set(dsa.__all__) == public


# --------------------------------------------------------------------------- scores


def test_scores_match_float64_reference_small() -> None:
    """Scores at B=2 H=4 D=32 L=64, seq_lens [64, 5], match a float64 loop reference."""
    q, k, w = make_inputs(2, 1, 4, 32, 64, seed=0)
    seq_lens = torch.tensor([64, 5])
    got = indexer_scores(q, k, w, seq_lens=seq_lens)
    ref = reference_scores(q, k, w, [[64], [5]])
    assert got.dtype == torch.float32
    assert (ref[torch.isfinite(ref)] < 0).any(), "negative scores must be covered"
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_scores_hide_keys_at_and_past_seq_len() -> None:
    """Keys n >= seq_len score -inf and keys n < seq_len score finite values."""
    q, k, w = make_inputs(4, 1, 4, 32, 128, seed=1)
    seq_lens = torch.tensor([128, 16, 1, 0])
    got = indexer_scores(q, k, w, seq_lens=seq_lens)
    n = torch.arange(128)
    for b, length in enumerate(seq_lens.tolist()):
        assert torch.isfinite(got[b, 0]).tolist() == (n < length).tolist()


def test_scores_without_lengths_see_every_key() -> None:
    """With neither seq_lens nor positions every key scores a finite value."""
    q, k, w = make_inputs(2, 3, 4, 16, 40, seed=2)
    got = indexer_scores(q, k, w)
    ref = reference_scores(q, k, w, [[40] * 3] * 2)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_scores_reject_float_seq_lens() -> None:
    """A floating seq_lens tensor is refused before any work is done."""
    q, k, w = make_inputs(2, 1, 4, 16, 32, seed=3)
    with pytest.raises(TypeError, match="seq_lens"):
        indexer_scores(q, k, w, seq_lens=torch.tensor([3.0, 4.0]))


def test_scores_reject_mismatched_key_dim() -> None:
    """A key cache whose head dim differs from q's is refused with a shape message."""
    q, _, w = make_inputs(2, 1, 4, 16, 32, seed=4)
    with pytest.raises(ValueError, match="k must be"):
        indexer_scores(q, torch.randn(2, 32, 8), w)


# --------------------------------------------------------------------------- top-k


def test_topk_matches_reference_sets_small() -> None:
    """At B=2 L=64 k=8, seq_lens [64, 5], picks equal the float64 reference's top-k sets."""
    q, k, w = make_inputs(2, 1, 4, 32, 64, seed=5)
    idx = select_topk(indexer_scores(q, k, w, seq_lens=torch.tensor([64, 5])), 8)
    ref = reference_scores(q, k, w, [[64], [5]])
    assert idx.shape == (2, 1, 8) and idx.dtype == torch.int64
    assert selected_sets(idx) == reference_sets(ref, 8)
    assert idx[1, 0, 5:].tolist() == [-1, -1, -1]


def test_ragged_rows_pick_min_of_length_and_k() -> None:
    """Ragged B=4 L=128 k=16, seq_lens [128, 16, 1, 0], picks min(len, k) keys then sentinels."""
    q, k, w = make_inputs(4, 1, 4, 32, 128, seed=6)
    idx = select_topk(indexer_scores(q, k, w, seq_lens=torch.tensor([128, 16, 1, 0])), 16)
    ref = reference_scores(q, k, w, [[128], [16], [1], [0]])
    assert selected_sets(idx) == reference_sets(ref, 16)
    assert (idx >= 0).sum(-1).flatten().tolist() == [16, 16, 1, 0]
    # Sorted picks: every sentinel comes after every real pick.
    assert idx[2, 0].tolist() == [0] + [-1] * 15
    assert idx[3, 0].tolist() == [-1] * 16


def test_topk_on_all_equal_scores_picks_k_distinct_visible_positions() -> None:
    """With all-equal scores the picks are k distinct visible keys, compared as sets."""
    scores = torch.zeros(3, 1, 64)
    scores[1, 0, 5:] = NEG_INF
    scores[2, 0, 20:] = NEG_INF
    idx = select_topk(scores, 8)
    sets = selected_sets(idx)
    assert len(sets[0][0]) == 8 and sets[0][0] <= set(range(64))
    assert sets[1][0] == set(range(5))
    assert len(sets[2][0]) == 8 and sets[2][0] <= set(range(20))


def test_k_larger_than_width_pads_with_sentinels() -> None:
    """k=2048 over L=100 returns width 2048: every visible key, then -1 to the end."""
    q, k, w = make_inputs(2, 1, 4, 32, 100, seed=7)
    idx = select_topk(indexer_scores(q, k, w, seq_lens=torch.tensor([100, 37])), 2048)
    assert idx.shape == (2, 1, 2048)
    assert selected_sets(idx) == [[set(range(100))], [set(range(37))]]
    assert (idx[0, 0, 100:] == -1).all() and (idx[1, 0, 37:] == -1).all()


def test_nonfinite_scores_are_never_picked() -> None:
    """NaN and +inf scores take their top slots but come back as -1 sentinels, never as picks."""
    scores = torch.tensor([[[1.0, float("nan"), 3.0, float("inf"), NEG_INF, 2.0]]])
    idx = select_topk(scores, 4)
    assert selected_sets(idx) == [[{2, 5}]]
    assert (idx == -1).sum() == 2


def test_select_topk_rejects_nonpositive_k() -> None:
    """k < 1 is refused with a ValueError."""
    with pytest.raises(ValueError, match="k must be"):
        select_topk(torch.zeros(1, 1, 4), 0)


# --------------------------------------------------------------------------- mask update

HAND_L = 16
HAND_IDX = torch.tensor(
    [
        [0, -1, -5, HAND_L, HAND_L + 7, 3],
        [-1, -1, -1, -1, -1, -1],
        [HAND_L - 1, HAND_L, -5, 0, 0, HAND_L + 7],
        [-5, HAND_L + 7, 9, -1, 9, HAND_L],
    ]
)
HAND_FINITE = [{0, 3}, set(), {0, HAND_L - 1}, {9}]


@pytest.mark.parametrize("update", UPDATES, ids=["patched", "unpatched"])
def test_hand_built_indices_give_the_expected_mask(update: Callable[..., Tensor]) -> None:
    """Rows mixing 0, -1, -5, L and L+7 zero exactly their valid positions of a fresh mask."""
    mask = torch.full((4, HAND_L), NEG_INF)
    out = update(mask, HAND_IDX)
    for row, expected in enumerate(HAND_FINITE):
        finite = {i for i in range(HAND_L) if torch.isfinite(out[row, i])}
        assert finite == expected
    assert (out[torch.isfinite(out)] == 0).all()


def test_out_of_range_indices_never_address_memory() -> None:
    """Indices L and L+7, which a plain scatter rejects, pass through the update unharmed."""
    mask = torch.full((4, HAND_L), NEG_INF)
    with pytest.raises(RuntimeError):
        mask.clone().scatter_(-1, HAND_IDX.clamp_min(0), 0.0)
    torch.testing.assert_close(update_index_mask(mask, HAND_IDX), reference_update(mask, HAND_IDX))


def test_update_is_in_place_and_returns_the_mask() -> None:
    """The update writes into the given tensor and returns that same tensor."""
    mask = torch.full((2, 8), NEG_INF)
    out = update_index_mask(mask, torch.tensor([[1, -1], [7, 8]]))
    assert out is mask
    assert torch.isfinite(mask).nonzero().tolist() == [[0, 1], [1, 7]]


def test_update_writes_through_a_non_contiguous_view() -> None:
    """A strided view of a larger mask is updated in place, leaving the rest untouched."""
    storage = torch.full((4, 12), NEG_INF)
    view = storage[::2, 2:10]
    update_index_mask(view, torch.tensor([[0, 7, -1], [3, 8, 3]]))
    expected = torch.full((4, 12), NEG_INF)
    expected[0, 2] = expected[0, 9] = expected[2, 5] = 0.0
    torch.testing.assert_close(storage, expected)


def test_update_accepts_int32_indices() -> None:
    """int32 indices give the same mask as int64 indices."""
    mask = torch.full((4, HAND_L), NEG_INF)
    got = update_index_mask(mask.clone(), HAND_IDX.int())
    torch.testing.assert_close(got, reference_update(mask, HAND_IDX))


def test_update_rejects_mismatched_leading_dims() -> None:
    """Indices whose leading dims differ from the mask's are refused."""
    with pytest.raises(ValueError, match="leading dims"):
        update_index_mask(torch.zeros(2, 8), torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.parametrize("update", UPDATES, ids=["patched", "unpatched"])
def test_prefilled_zero_inf_mask_keeps_existing_zeros(update: Callable[..., Tensor]) -> None:
    """On a {-inf, 0} mask, earlier zeros stay 0 and newly selected positions become 0."""
    mask = torch.full((2, 10), NEG_INF)
    mask[0, 2] = mask[1, 9] = 0.0
    idx = torch.tensor([[5, -1, 2], [0, 10, -3]])
    out = update(mask.clone(), idx)
    assert torch.isfinite(out).nonzero().tolist() == [[0, 2], [0, 5], [1, 0], [1, 9]]
    torch.testing.assert_close(out, reference_update(mask, idx))


@pytest.mark.parametrize("update", UPDATES, ids=["patched", "unpatched"])
def test_prefilled_arbitrary_mask_selected_become_exactly_zero(
    update: Callable[..., Tensor],
) -> None:
    """Selected positions become exactly 0 even if they held positive values; others keep theirs."""
    mask = torch.tensor([[5.0, -2.0, 3.5, NEG_INF, 0.25, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    idx = torch.tensor([[0, 2, 3, -1], [5, 6, -2, 5]])
    out = update(mask.clone(), idx)
    expected = torch.tensor([[0.0, -2.0, 0.0, 0.0, 0.25, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0, 0.0]])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("update", UPDATES, ids=["patched", "unpatched"])
def test_sentinels_do_not_touch_position_zero(update: Callable[..., Tensor]) -> None:
    """A row picking position 0 among sentinels zeroes it; a row of only sentinels leaves it."""
    mask = torch.full((2, 6), 7.0)
    idx = torch.tensor([[0, -1, -1, -1], [-1, -1, 4, -1]])
    out = update(mask, idx)
    expected = torch.tensor([[0.0, 7, 7, 7, 7, 7], [7.0, 7, 7, 7, 0, 7]])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("seed", range(6))
def test_random_draws_patched_equals_unpatched_and_reference(seed: int) -> None:
    """On random masks and random indices (invalid ones included) both updates equal the loop."""
    gen = torch.Generator().manual_seed(seed)
    batch, tokens, width, k = 3, 2, 33, 12
    mask = torch.randn(batch, tokens, width, generator=gen)
    mask[torch.rand(batch, tokens, width, generator=gen) < 0.4] = NEG_INF
    mask[torch.rand(batch, tokens, width, generator=gen) < 0.2] = 0.0
    idx = torch.randint(-width - 3, 2 * width, (batch, tokens, k), generator=gen)
    idx[0, 0] = -1  # one row of sentinels only
    expected = reference_update(mask, idx)
    patched = update_index_mask(mask.clone(), idx)
    unpatched = update_index_mask_unpatched(mask.clone(), idx)
    torch.testing.assert_close(patched, expected)
    torch.testing.assert_close(unpatched, patched)
    assert torch.equal(patched[0, 0], mask[0, 0])


def test_unpatched_fast_path_equals_patched() -> None:
    """When every index is valid the unpatched fast scatter path matches the patched update."""
    gen = torch.Generator().manual_seed(11)
    mask = torch.randn(4, 50, generator=gen)
    idx = torch.randint(0, 50, (4, 9), generator=gen)
    torch.testing.assert_close(
        update_index_mask_unpatched(mask.clone(), idx), update_index_mask(mask.clone(), idx)
    )


# --------------------------------------------------------------------------- capture safety


def test_patched_step_reads_nothing_back_to_host() -> None:
    """The patched module step (scores, top-k, update) dispatches no host-read op."""
    q, k, w = make_inputs(2, 4, 4, 16, 32, seed=12)
    indexer = DSAIndexer(4, 16, topk=8)
    with recording() as recorder:
        indexer(q, k, w, torch.tensor([32, 3]), causal_positions=torch.arange(4) + 10)
    assert "aten.topk.default" in recorder.ops
    assert recorder.host_reads == []


def test_unpatched_update_reads_back_exactly_twice() -> None:
    """The unpatched update makes exactly two host reads: the validation and the branch."""
    with recording() as recorder:
        update_index_mask_unpatched(torch.zeros(2, 8), torch.tensor([[0, -1], [3, 9]]))
    assert recorder.host_reads == ["aten._local_scalar_dense.default"] * 2


def test_hazard_lines_point_at_the_marked_lines() -> None:
    """unpatched_hazard_lines names the assert line and the if line carrying the markers."""
    lines = unpatched_hazard_lines()
    validation = linecache.getline(lines.file, lines.validation)
    branch = linecache.getline(lines.file, lines.branch)
    assert validation.rstrip().endswith("# dsa: validation")
    assert validation.strip().startswith("assert torch.all(")
    assert branch.rstrip().endswith("# dsa: branch")
    assert branch.strip().startswith("if torch.any(")
    assert lines.as_dict() == {"validation": lines.validation, "branch": lines.branch}


def test_hazard_lines_file_is_the_code_filename() -> None:
    """The reported file is the co_filename that frames of the unpatched update carry."""
    lines = unpatched_hazard_lines()
    assert lines.file == update_index_mask_unpatched.__code__.co_filename
    assert lines.file.endswith("_mask.py")
    code = update_index_mask_unpatched.__code__
    assert code.co_firstlineno < lines.validation < lines.branch


# --------------------------------------------------------------------------- module


def test_full_geometry_matches_reference() -> None:
    """At H=64 D=128 L=256, scores match float64 and top-64 picks equal the reference sets."""
    q, k, w = make_inputs(2, 1, 64, 128, 256, seed=13)
    seq_lens = torch.tensor([256, 200])
    scores = indexer_scores(q, k, w, seq_lens=seq_lens)
    ref = reference_scores(q, k, w, [[256], [200]])
    torch.testing.assert_close(scores.double(), ref, rtol=1e-5, atol=1e-5)
    out = DSAIndexer(topk=64)(q, k, w, seq_lens)
    assert selected_sets(out.indices) == reference_sets(ref, 64)
    assert (torch.isfinite(out.mask).sum(-1) == 64).all()


def test_default_geometry_selects_every_visible_key_below_topk() -> None:
    """The default DSAIndexer (H=64, D=128, topk=2048) at L=256 selects every visible key."""
    q, k, w = make_inputs(2, 1, 64, 128, 256, seed=14)
    out = DSAIndexer()(q, k, w, torch.tensor([256, 77]))
    assert out.indices.shape == (2, 1, 2048)
    assert torch.isfinite(out.mask[0, 0]).all()
    assert torch.isfinite(out.mask[1, 0]).tolist() == [n < 77 for n in range(256)]


def test_padding_row_policy_all_inf_mask_and_row_has_keys_false() -> None:
    """A seq_len-0 row keeps an all -inf mask and all -1 indices and reports no keys."""
    q, k, w = make_inputs(4, 1, 4, 32, 128, seed=15)
    out = DSAIndexer(4, 32, topk=16)(q, k, w, torch.tensor([128, 16, 1, 0]))
    assert out.row_has_keys.tolist() == [[True], [True], [True], [False]]
    assert (out.mask[3] == NEG_INF).all()
    assert (out.indices[3] == -1).all()
    # The row's softmax is NaN, which is why row_has_keys exists; zeroing it needs no host read.
    probs = torch.softmax(out.mask, dim=-1)
    assert torch.isnan(probs[3]).all() and not torch.isnan(probs[:3]).any()
    safe = torch.where(out.row_has_keys[..., None], probs, 0.0)
    assert (safe[3] == 0).all() and torch.equal(safe[:3], probs[:3])


def test_prefill_causal_scores_hide_future_keys() -> None:
    """In prefill, token t scores keys n <= t finite and keys n > t -inf."""
    q, k, w = make_inputs(1, 12, 4, 16, 12, seed=16)
    got = indexer_scores(q, k, w, causal_positions=torch.arange(12))
    ref = reference_scores(q, k, w, [[t + 1 for t in range(12)]])
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.isfinite(got[0]), torch.ones(12, 12, dtype=torch.bool).tril())


def test_prefill_causal_selection_stays_in_each_prefix() -> None:
    """Prefill token t picks min(t + 1, k) keys, the reference top-k of keys 0..t."""
    q, k, w = make_inputs(1, 32, 4, 16, 32, seed=17)
    out = DSAIndexer(4, 16, topk=8)(q, k, w, causal_positions=torch.arange(32))
    ref = reference_scores(q, k, w, [[t + 1 for t in range(32)]])
    assert selected_sets(out.indices) == reference_sets(ref, 8)
    counts = torch.isfinite(out.mask[0]).sum(-1).tolist()
    assert counts == [min(t + 1, 8) for t in range(32)]
    assert not torch.isfinite(out.mask[0]).triu(diagonal=1).any()


def test_per_token_lengths_of_position_plus_one_equal_causal_positions() -> None:
    """seq_lens [B, T] holding position + 1 gives the same scores as causal_positions."""
    q, k, w = make_inputs(2, 6, 4, 16, 10, seed=23)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9]])
    by_positions = indexer_scores(q, k, w, causal_positions=positions)
    by_lengths = indexer_scores(q, k, w, seq_lens=positions + 1)
    assert torch.equal(by_positions, by_lengths)
    assert torch.isfinite(by_lengths).sum(-1).tolist() == (positions + 1).tolist()


def test_chunked_prefill_takes_the_stricter_of_length_and_position() -> None:
    """Positions [B, T] and seq_lens [B] combine as min(seq_len, position + 1) visible keys."""
    q, k, w = make_inputs(2, 4, 4, 16, 64, seed=18)
    positions = torch.tensor([[40, 41, 42, 43], [40, 41, 42, 43]])
    seq_lens = torch.tensor([64, 42])
    got = indexer_scores(q, k, w, seq_lens=seq_lens, causal_positions=positions)
    limits = [[41, 42, 43, 44], [41, 42, 42, 42]]
    torch.testing.assert_close(
        got.double(), reference_scores(q, k, w, limits), rtol=1e-5, atol=1e-5
    )


def test_multi_token_rows_use_per_token_lengths() -> None:
    """Two query tokens per row with seq_lens [B, 2] each see their own number of keys."""
    q, k, w = make_inputs(3, 2, 4, 16, 24, seed=19)
    seq_lens = torch.tensor([[23, 24], [9, 10], [0, 1]])
    out = DSAIndexer(4, 16, topk=12)(q, k, w, seq_lens)
    ref = reference_scores(q, k, w, seq_lens.tolist())
    assert selected_sets(out.indices) == reference_sets(ref, 12)
    assert torch.isfinite(out.mask).sum(-1).tolist() == [[12, 12], [9, 10], [0, 1]]
    assert out.row_has_keys.tolist() == [[True, True], [True, True], [False, True]]


def test_patched_and_unpatched_indexer_give_identical_outputs() -> None:
    """DSAIndexer with patched=False returns the same indices, mask and flags as patched=True."""
    q, k, w = make_inputs(4, 1, 4, 32, 128, seed=20)
    seq_lens = torch.tensor([128, 16, 1, 0])
    patched = DSAIndexer(4, 32, topk=16)(q, k, w, seq_lens)
    unpatched = DSAIndexer(4, 32, topk=16, patched=False)(q, k, w, seq_lens)
    assert torch.equal(patched.indices, unpatched.indices)
    assert torch.equal(patched.mask, unpatched.mask)
    assert torch.equal(patched.row_has_keys, unpatched.row_has_keys)


def test_indexer_overwrites_the_given_mask_buffer() -> None:
    """A passed-in mask buffer is refilled and returned, so stale values never leak through."""
    q, k, w = make_inputs(2, 1, 4, 16, 32, seed=21)
    seq_lens = torch.tensor([32, 5])
    buffer = torch.full((2, 1, 32), 123.0)
    out = DSAIndexer(4, 16, topk=8)(q, k, w, seq_lens, buffer)
    fresh = DSAIndexer(4, 16, topk=8)(q, k, w, seq_lens)
    assert out.mask is buffer
    assert torch.equal(buffer, fresh.mask)


def test_indexer_rejects_wrong_head_geometry() -> None:
    """q whose head count differs from the module's n_heads is refused."""
    q, k, w = make_inputs(1, 1, 4, 16, 8, seed=22)
    with pytest.raises(ValueError, match="q must be"):
        DSAIndexer(8, 16, topk=4)(q, k, w)


# --------------------------------------------------------------------------- scorer backends


def test_torch_backend_equals_auto_on_cpu() -> None:
    """On CPU "auto" runs the PyTorch scorer, so it equals backend="torch" exactly."""
    q, k, w = make_inputs(2, 3, 4, 16, 40, seed=24)
    seq_lens = torch.tensor([[40, 7, 0], [12, 13, 41]])
    auto = indexer_scores(q, k, w, seq_lens=seq_lens)
    torch_path = indexer_scores(q, k, w, seq_lens=seq_lens, backend="torch")
    assert torch.equal(auto, torch_path)
    out_auto = DSAIndexer(4, 16, topk=8)(q, k, w, seq_lens)
    out_torch = DSAIndexer(4, 16, topk=8, backend="torch")(q, k, w, seq_lens)
    assert torch.equal(out_auto.indices, out_torch.indices)
    assert torch.equal(out_auto.mask, out_torch.mask)


@pytest.mark.skipif(
    _triton_interpreting(), reason="under TRITON_INTERPRET=1 the Triton kernels accept CPU tensors"
)
def test_triton_backend_on_cpu_raises_value_error() -> None:
    """backend="triton" on CPU tensors is refused with a ValueError naming the backend."""
    q, k, w = make_inputs(1, 1, 64, 128, 32, seed=25)
    with pytest.raises(ValueError, match='backend="triton"'):
        indexer_scores(q.bfloat16(), k.bfloat16(), w, backend="triton")
    with pytest.raises(ValueError, match='backend="triton"'):
        DSAIndexer(backend="triton")(q, k, w, torch.tensor([32]))


def test_unknown_backend_is_refused() -> None:
    """An unknown backend name is refused by indexer_scores and by the DSAIndexer constructor."""
    q, k, w = make_inputs(1, 1, 4, 16, 8, seed=26)
    with pytest.raises(ValueError, match="backend must be one of"):
        indexer_scores(q, k, w, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        DSAIndexer(4, 16, topk=4, backend="fused")
    assert "backend='torch'" in repr(DSAIndexer(4, 16, topk=4, backend="torch"))


@pytest.mark.skipif(
    _triton_interpreting(), reason="under TRITON_INTERPRET=1 the Triton kernels accept CPU tensors"
)
def test_triton_feature_detection_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors never take the fused scorer; DSA_DISABLE_TRITON=1 turns detection off."""
    from dsa import _triton

    q, k, w = make_inputs(1, 1, 64, 128, 32, seed=27)
    q, k = q.bfloat16(), k.bfloat16()
    assert not _triton.triton_available(q, k, w)
    assert "CUDA" in (_triton.unsupported_reason(q, k, w) or "")
    with pytest.raises(ValueError, match="fused_scores cannot run"):
        _triton.fused_scores(q, k, w)
    monkeypatch.setenv("DSA_DISABLE_TRITON", "1")
    assert not _triton.triton_available()
    assert "DSA_DISABLE_TRITON" in (_triton.unsupported_reason(q, k, w) or "")


# --------------------------------------------------------------------------- top-k backends


def test_select_topk_auto_equals_torch_on_cpu() -> None:
    """On CPU select_topk(backend="auto") is the torch.topk reference, bit for bit."""
    scores = torch.randn(3, 2, 50, generator=torch.Generator().manual_seed(28))
    scores[0, 1, 10:] = NEG_INF
    assert torch.equal(select_topk(scores, 8, backend="auto"), select_topk(scores, 8))


def test_select_topk_refuses_unknown_backend() -> None:
    """An unknown top-k backend name is refused with the allowed names."""
    with pytest.raises(ValueError, match="backend must be one of"):
        select_topk(torch.zeros(1, 4), 2, backend="cuda")


@pytest.mark.skipif(
    _triton_interpreting(), reason="under TRITON_INTERPRET=1 the Triton kernels accept CPU tensors"
)
def test_select_topk_triton_on_cpu_raises_value_error() -> None:
    """select_topk(backend="triton") on CPU scores is refused with a ValueError."""
    with pytest.raises(ValueError, match='backend="triton"'):
        select_topk(torch.zeros(1, 4), 2, backend="triton")


# --------------------------------------------------------------------------- fp8 keys


def test_fp8_keys_take_132_bytes_per_key_at_d128() -> None:
    """quantize_keys_fp8 gives e4m3 values [B, L, D] and float32 scales [B, L]: D + 4 bytes."""
    k = torch.randn(2, 10, 128)
    values, scales = quantize_keys_fp8(k)
    assert values.dtype == torch.float8_e4m3fn and values.shape == k.shape
    assert scales.dtype == torch.float32 and scales.shape == (2, 10)
    per_key = (values.element_size() * values.numel() + scales.element_size() * scales.numel()) / 20
    assert per_key == 132


def test_fp8_round_trip_error_is_within_half_an_e4m3_step() -> None:
    """values * scales reproduces each key within e4m3 rounding (2**-4 relative to its max)."""
    gen = torch.Generator().manual_seed(29)
    k = torch.randn(3, 64, 32, generator=gen) * torch.rand(3, 64, 1, generator=gen) * 100
    values, scales = quantize_keys_fp8(k)
    back = values.float() * scales[..., None]
    amax = k.abs().amax(-1, keepdim=True)
    assert ((back - k).abs() <= amax * 2**-4 + 1e-30).all()
    # The largest element of each key maps to +-448 exactly.
    assert torch.equal(values.float().abs().amax(-1), torch.full((3, 64), 448.0))


def test_fp8_zero_key_quantises_to_zero() -> None:
    """An all-zero key gets all-zero values and a positive scale, never NaN."""
    values, scales = quantize_keys_fp8(torch.zeros(1, 2, 8))
    assert (values.float() == 0).all()
    assert (scales > 0).all() and torch.isfinite(scales).all()


def test_fp8_quantiser_rejects_fp8_and_integer_input() -> None:
    """Integer keys and keys that are already fp8 are refused."""
    with pytest.raises(TypeError):
        quantize_keys_fp8(torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(TypeError):
        quantize_keys_fp8(torch.zeros(2, 4).to(torch.float8_e4m3fn))


def test_fp8_scores_match_float64_of_dequantised_keys() -> None:
    """Scores of fp8 keys equal the float64 reference computed on values * scales."""
    q, k, w = make_inputs(2, 1, 4, 32, 64, seed=30)
    values, scales = quantize_keys_fp8(k * 3.0)
    seq_lens = torch.tensor([64, 5])
    got = indexer_scores(q, values, w, seq_lens=seq_lens, k_scale=scales)
    q_values, q_scales = quantize_queries_fp8(q)  # fp8 keys: the scorer quantises q as well
    ref = reference_scores(
        q_values.double() * q_scales.double()[..., None],
        values.double() * scales.double()[..., None],
        w,
        [[64], [5]],
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_fp8_queries_take_power_of_two_scales_per_head() -> None:
    """quantize_queries_fp8: one power-of-two scale per [..., D] row, the smallest that keeps
    the row within +-448, so the largest value lands in [224, 448]; values * scales
    reproduce q within half an e4m3 step; a zero row stays zero."""
    gen = torch.Generator().manual_seed(34)
    q = torch.randn(2, 3, 8, 32, generator=gen) * torch.logspace(-20, 20, 8)[:, None]
    q[0, 0, 0] = 0.0
    values, scales = quantize_queries_fp8(q)
    assert values.dtype == torch.float8_e4m3fn and scales.shape == (2, 3, 8)
    assert torch.equal(scales, torch.exp2(torch.log2(scales).round()))  # powers of two
    biggest = values.float().abs().amax(-1)
    assert ((biggest >= 224) & (biggest <= 448)).flatten()[1:].all() and biggest[0, 0, 0] == 0
    back = values.float() * scales[..., None]
    assert ((back - q).abs() <= q.abs().amax(-1, keepdim=True) * 2**-4).all()
    with pytest.raises(TypeError):
        quantize_queries_fp8(torch.zeros(2, 4, dtype=torch.int32))


def test_round_to_e4m3_equals_torch_cast_ties_and_subnormals_included() -> None:
    """The integer rounding the Triton kernel repeats equals torch's round-to-nearest-even
    cast to e4m3 on every value: normal, subnormal (multiples of 2**-9), and exact ties."""
    grid = torch.arange(-448 * 512, 448 * 512 + 1, dtype=torch.float32) / 512  # ties included
    gen = torch.Generator().manual_seed(35)
    x = torch.cat([grid, torch.randn(100_000, generator=gen) * 50, grid / 1024]).clamp(-448, 448)
    got = round_to_e4m3(x)
    assert torch.equal(got, x.to(torch.float8_e4m3fn).float())
    assert torch.equal(got.to(torch.float8_e4m3fn).float(), got)  # exact in e4m3


def test_fp8_keys_need_scales_and_scales_need_fp8_keys() -> None:
    """fp8 keys without k_scale, k_scale with float keys and a misshapen k_scale are refused."""
    q, k, w = make_inputs(1, 1, 4, 16, 8, seed=31)
    values, scales = quantize_keys_fp8(k)
    with pytest.raises(TypeError, match="k_scale"):
        indexer_scores(q, values, w)
    with pytest.raises(TypeError, match="k_scale"):
        indexer_scores(q, k, w, k_scale=scales)
    with pytest.raises(ValueError, match="k_scale must be"):
        indexer_scores(q, values, w, k_scale=scales[:, :4])


def test_indexer_fp8_keys_option_quantises_float_keys() -> None:
    """DSAIndexer(fp8_keys=True) on float keys equals scoring the quantised keys explicitly."""
    q, k, w = make_inputs(3, 1, 4, 32, 96, seed=32)
    seq_lens = torch.tensor([96, 40, 0])
    implicit = DSAIndexer(4, 32, topk=16, fp8_keys=True)(q, k, w, seq_lens)
    values, scales = quantize_keys_fp8(k)
    explicit = DSAIndexer(4, 32, topk=16)(q, values, w, seq_lens, k_scale=scales)
    assert torch.equal(implicit.indices, explicit.indices)
    assert torch.equal(implicit.mask, explicit.mask)
    assert "fp8_keys=True" in repr(DSAIndexer(4, 32, topk=16, fp8_keys=True))


def test_fp8_selection_overlaps_the_float_selection() -> None:
    """At H=64 D=128 L=1024 k=128 the fp8 top-k keeps at least 90% of the float32 top-k set."""
    q, k, w = make_inputs(2, 1, 64, 128, 1024, seed=33)
    seq_lens = torch.tensor([1024, 700])
    exact = DSAIndexer(64, 128, topk=128)(q, k, w, seq_lens)
    fp8 = DSAIndexer(64, 128, topk=128, fp8_keys=True)(q, k, w, seq_lens)
    for b in range(2):
        a = set(exact.indices[b, 0].tolist()) - {-1}
        f = set(fp8.indices[b, 0].tolist()) - {-1}
        assert len(a) == len(f) == 128
        assert len(a & f) >= 0.9 * 128


# ------------------------------------------------------------------ index order (no sort)


def test_index_order_gives_the_score_order_picks_by_position() -> None:
    """order="index": the same picks as order="score", ascending by position, -1 last, for
    hidden keys, non-finite scores and k wider than the row."""
    gen = torch.Generator().manual_seed(21)
    scores = torch.randn(4, 3, 50, generator=gen)
    scores[0, :, 20:] = NEG_INF  # hidden keys
    scores[1, 0, 5] = float("nan")
    scores[1, 1, 7] = float("inf")
    scores[2] = NEG_INF  # a row with nothing to pick
    for k in (1, 8, 50, 64):
        by_score = select_topk(scores, k)
        by_index = select_topk(scores, k, order="index")
        assert by_index.shape == by_score.shape
        real = by_score >= 0
        expect = torch.where(real, by_score, scores.shape[-1]).sort(dim=-1).values
        expect = expect.masked_fill(expect == scores.shape[-1], -1)
        assert torch.equal(by_index, expect)
        # -1 only after every real pick
        count = real.sum(-1, keepdim=True)
        slots = torch.arange(k)
        assert torch.equal(by_index >= 0, slots < count)


def test_index_order_leaves_the_mask_and_row_flags_unchanged() -> None:
    q, k, w = make_inputs(2, 3, 4, 16, 40, seed=23)
    lengths = torch.tensor([40, 0])
    default = DSAIndexer(4, 16, topk=16)(q, k, w, lengths)
    by_index = DSAIndexer(4, 16, topk=16, order="index")(q, k, w, lengths)
    assert torch.equal(by_index.mask, default.mask)
    assert torch.equal(by_index.row_has_keys, default.row_has_keys)
    assert torch.equal(by_index.indices.sort(-1).values, default.indices.sort(-1).values)
    assert "order='index'" in repr(DSAIndexer(order="index"))


def test_index_order_reads_nothing_back_to_host() -> None:
    q, k, w = make_inputs(2, 4, 4, 16, 32, seed=24)
    indexer = DSAIndexer(4, 16, topk=8, order="index")
    with recording() as recorder:
        indexer(q, k, w, torch.tensor([32, 3]), causal_positions=torch.arange(4) + 10)
    assert recorder.host_reads == []


def test_order_is_validated() -> None:
    with pytest.raises(ValueError, match="order"):
        select_topk(torch.randn(2, 8), 4, order="position")
    with pytest.raises(ValueError, match="order"):
        DSAIndexer(order="random")


def test_scorer_launch_configuration_depends_on_shapes_and_sm_count_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """default_config on a 132-SM GPU (simulated): one 64-key block per program for small
    problems; above that, the persistent grid (two programs per SM) for fp8 keys and four
    128-key blocks per program for bf16 keys."""
    from dsa import _triton

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(_triton, "_sm_count", lambda index: 132)
    configs = _triton.CONFIGS
    assert _triton.default_config(1, 4096, fp8=True) == configs[0]
    assert _triton.default_config(64, 4096) == configs[4]
    assert _triton.default_config(64, 4096, fp8=True) == configs[8]
    assert _triton.default_config(1, 65536, fp8=True) == configs[8]
    assert _triton.default_config(1, 65536) == configs[4]
    assert _triton.default_config(2, 16384, fp8=True) == configs[0]  # 256 blocks < 2 * 132
    assert _triton.default_config(64, 16384, fp8=True) == configs[8]
    assert _triton.default_config(64, 65536, fp8=True) == configs[8]
    assert _triton.default_config(64, 65536) == configs[4]
    assert configs[8] == _triton.ScorerConfig(128, 1, 4, 4, programs_per_sm=2)
    assert configs[8].name == "L128-w4-s4-persistent2"
    assert configs[7].name == "L256x8-w8-s3"


# --------------------------------------------------------------- the rows method's CPU side


def test_rows_method_is_cuda_only_and_never_chosen_on_cpu() -> None:
    """The one-block-per-row CUDA top-k names why it cannot take CPU scores, is never the
    default on CPU, and its source ships beside the module (it is compiled on first use)."""
    from dsa import _cuda_topk, _triton_topk

    cpu = torch.device("cpu")
    assert "rows" in _triton_topk.METHODS
    assert not _triton_topk.rows_method_available(cpu)
    assert _triton_topk.default_method(64, 65536, 2048, cpu) == "bucket"
    reason = _cuda_topk.unsupported_reason(torch.randn(2, 64), 8)
    assert reason is not None and "CUDA scores" in reason
    assert _cuda_topk._SOURCE.is_file()
    assert 'extern "C" __global__' in _cuda_topk._SOURCE.read_text()


def test_rows_method_vector_path_needs_aligned_rows() -> None:
    """The kernel loads and stores four scores at once only where every row starts on a
    four-element boundary: a contiguous [rows, L] with L a multiple of 4, not a view that
    starts one score in, nor rows of an odd width."""
    from dsa import _cuda_topk

    base = torch.empty(4, 64)
    assert _cuda_topk._vector_ok(base)
    assert not _cuda_topk._vector_ok(base[:, 1:])
    assert not _cuda_topk._vector_ok(torch.empty(4, 63))
    assert _cuda_topk._vector_ok(torch.empty(4, 64, dtype=torch.bfloat16))
    assert not _cuda_topk._vector_ok(torch.empty(4, 66, dtype=torch.bfloat16))
