"""The DSA index-mask step as a ``graphguard certify`` workload (entry point ``dsa``).

The step is one ``DSAIndexer`` call, ``step(q, k, w, seq_lens, mask, topk)``: ``patched_step``
uses the branchless ``update_index_mask``, ``unpatched_step`` the branchy seed form whose two host
reads ``unpatched_hazard_lines`` locates. The certification compares the two forms on indexer
inputs and, through an extra pair, the two mask updates alone on the edge cases of
``docs/dsa.md`` (mixed 0/-1/-5/L/L+7 indices, all sentinels, position 0 with sentinels,
pre-filled masks, arbitrary mask values, k >= L, two tokens per row) and random draws. Replay
captures the patched step at B=64, H=64, D=128, k=2048, L_max=16384 (B=4, L_max=4096 with
``quick``) and replays it with ``seq_lens`` 0, 1, k-1, k, k+1 and L_max, each batch with a
padding row.

The indexer runs with its default ``backend="auto"``: on a GPU with triton the step is the fast
path (fused scorer on the bf16 replay inputs, fused top-k + mask kernels; at B=64, L_max=16384
on a GPU of up to 170 SMs ``default_method`` takes the one-block-per-row CUDA top-k), on CPU the
PyTorch reference. Both forms of the step share the top-k, so they stay comparable bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from graphguard._workload import Case, Equivalence, HazardSite, Workload

from ._indexer import DSAIndexer, IndexerOutput
from ._mask import unpatched_hazard_lines, update_index_mask, update_index_mask_unpatched

__all__ = ["make_workload", "patched_step", "unpatched_step"]

# DSAIndexer holds no parameters; one module per geometry keeps module construction out of the
# captured and timed step.
_INDEXERS: dict[tuple[int, int, int, bool], DSAIndexer] = {}


def _indexer(q: Tensor, topk: int, patched: bool) -> DSAIndexer:
    key = (int(q.shape[2]), int(q.shape[3]), topk, patched)
    module = _INDEXERS.get(key)
    if module is None:
        module = _INDEXERS[key] = DSAIndexer(key[0], key[1], topk, patched=patched)
    return module


def patched_step(
    q: Tensor, k: Tensor, w: Tensor, seq_lens: Tensor, mask: Tensor | None, topk: int
) -> IndexerOutput:
    """One decode step of the indexer with the capture-safe mask update."""
    return _indexer(q, topk, patched=True)(q, k, w, seq_lens, mask)


def unpatched_step(
    q: Tensor, k: Tensor, w: Tensor, seq_lens: Tensor, mask: Tensor | None, topk: int
) -> IndexerOutput:
    """The same step with the branchy seed update, which graphguard must refuse."""
    return _indexer(q, topk, patched=False)(q, k, w, seq_lens, mask)


def _draws(quick: bool) -> int:
    return 16 if quick else 64


def _step_inputs(device: torch.device, *, quick: bool, seed: int) -> Iterator[Case]:
    """A small decode step with a long and a short row first (the refusal case), then draws."""
    g = torch.Generator().manual_seed(seed + 7)
    q = torch.randn(2, 1, 4, 16, generator=g)
    k = torch.randn(2, 64, 16, generator=g)
    w = torch.randn(2, 1, 4, generator=g)
    lens = torch.tensor([64, 3])
    yield Case(
        "B=2 T=1 H=4 D=16 L=64 k=8, seq_lens [64, 3]",
        (q.to(device), k.to(device), w.to(device), lens.to(device), None, 8),
    )
    for i in range(max(1, _draws(quick) // 8)):
        g = torch.Generator().manual_seed(seed + 100 + i)
        B, T, H, D, L, topk = 3, 1, 4, 16, 64, 8
        q = torch.randn(B, T, H, D, generator=g)
        k = torch.randn(B, L, D, generator=g)
        w = torch.randn(B, T, H, generator=g)
        lens = torch.tensor([L, 5, 0])
        yield Case(
            f"indexer step {i}",
            (q.to(device), k.to(device), w.to(device), lens.to(device), None, topk),
        )


def _mask_update_inputs(device: torch.device, *, quick: bool, seed: int) -> Iterator[Case]:
    """(mask, idx) pairs: the DSA edge cases, then random draws."""
    inf = float("-inf")
    L = 16

    def t(data: Any) -> Tensor:
        return torch.tensor(data, device=device)

    def full(*shape: int) -> Tensor:
        return torch.full(shape, inf, device=device)

    yield Case(
        "mixed 0/-1/-5/L/L+7", (full(2, L), t([[0, -1, -5, L, L + 7, 3], [15, 15, -1, -1, 0, 0]]))
    )
    yield Case("all sentinels", (full(1, L), torch.full((1, 4), -1, device=device)))
    yield Case("position 0 and sentinels", (full(1, L), t([[0, -1, -1, -1]])))
    prefilled = full(2, L)
    prefilled[:, ::3] = 0.0
    yield Case("pre-filled mask", (prefilled, t([[1, 2, -1], [4, L, 5]])))
    arbitrary = torch.linspace(-3, 3, 2 * L, device=device).view(2, L)
    yield Case("mask with arbitrary values", (arbitrary, t([[0, 7, -2], [L - 1, L + 1, 3]])))
    yield Case("k >= L", (full(1, 8), torch.arange(-2, 12, device=device).view(1, 14)))
    yield Case("multi-token rows", (full(2, 2, L), t([[[0, 5], [-1, 6]], [[L, 1], [2, 2]]])))
    gen = torch.Generator().manual_seed(seed)
    for i in range(_draws(quick)):
        B, L, k = 1 + i % 4, 8 + 13 * i, 1 + (5 * i) % 40
        base = torch.where(torch.rand(B, L, generator=gen) < 0.3, 0.0, inf)
        idx = torch.randint(-3, L + 4, (B, k), generator=gen)
        yield Case(f"random draw {i}", (base.to(device), idx.to(device)))


def _replay_inputs(device: torch.device, *, quick: bool, seed: int) -> Iterator[Case]:
    """Capture at full length, then replay with seq_lens 0, 1, k-1, k, k+1, L_max."""
    B, H, D, topk = (4 if quick else 64), 64, 128, 2048
    L = 4096 if quick else 16384
    gen = torch.Generator().manual_seed(seed + 3)
    draw = torch.Generator(device=device).manual_seed(seed + 4)  # the large draws, in place

    def case(lens: Tensor) -> tuple[Any, ...]:
        q = torch.randn(B, 1, H, D, generator=draw, device=device).to(torch.bfloat16)
        k = torch.randn(B, L, D, generator=draw, device=device).to(torch.bfloat16)
        w = torch.randn(B, 1, H, generator=draw, device=device)
        mask = torch.zeros(B, 1, L, device=device)  # the output buffer; the step overwrites it
        return (q, k, w, lens.to(device), mask, topk)

    yield Case(f"B={B} T=1 H={H} D={D} k={topk} L_max={L}", case(torch.full((B,), L)))
    for n in (0, 1, topk - 1, topk, topk + 1, L):
        lens = torch.randint(0, L + 1, (B,), generator=gen)
        lens[0] = n
        lens[-1] = 0  # always one padding row
        yield Case(f"seq_len {n}", case(lens))


def _same_selection(actual: IndexerOutput, expected: IndexerOutput) -> bool:
    """Replayed and eager steps select the same keys (ties make index order unspecified)."""
    selected = torch.isfinite(actual.mask)
    return torch.equal(selected, torch.isfinite(expected.mask)) and torch.equal(
        selected.sum(-1), (expected.indices >= 0).sum(-1)
    )


def _expected_hazards() -> list[HazardSite]:
    where = unpatched_hazard_lines()
    return [
        HazardSite(where.file, where.validation, "host-sync"),
        HazardSite(where.file, where.branch, "host-sync"),
    ]


def make_workload() -> Workload:
    """The DSA index-mask step: the reference workload of ``graphguard certify``."""
    return Workload(
        name="dsa",
        description="DeepSeek Sparse Attention index-mask step (dsa.DSAIndexer), "
        "branchless update vs the branchy seed form",
        make_inputs=_step_inputs,
        safe_step=patched_step,
        unsafe_step=unpatched_step,
        expected_hazards=_expected_hazards,
        replay_inputs=_replay_inputs,
        replay_compare=_same_selection,
        also_compare=(
            Equivalence(
                name="mask update",
                safe=update_index_mask,
                reference=update_index_mask_unpatched,
                make_inputs=_mask_update_inputs,
            ),
        ),
    )
