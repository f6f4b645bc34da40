"""A decode loop whose batch size changes every step, served by four CUDA graphs.

In continuous-batching inference the number of live sequences changes from one decode step to
the next (3, 5, 8, 2, ...). A CUDA graph has fixed shapes, so one graph per batch size would
mean many captures. ``graphguard.graphed(model, buckets=[1, 2, 4, 8], max_graphs=4)`` pads each
batch up to the next bucket (3 -> 4, 5 -> 8), captures one graph per bucket, replays it for
every later batch of that bucket, and slices the outputs back to the real batch size. Padding
rows are zeros, so the model must accept zero inputs (token 0, position 0 here). A batch larger
than the largest bucket would be a fifth shape class: past ``max_graphs`` it runs eagerly (or
raises ``GraphLimitError`` with ``on_graph_limit="error"``).

Every step's logits are checked against the plain eager model. At the end the program prints
the step's statistics: shape classes captured and graph replays. On a GPU each bucket is warmed
up once, captured once, then replayed. Without CUDA the same state machine runs eagerly under
the audit guard: ``graphs`` counts the shape classes and ``replays`` stays 0.

Outputs of a graphed step live in the graph's static memory, and the next replay of the same
graph overwrites them. Reading an output kept from an earlier step is the stale-output hazard
(GG701): graphguard raises ``StaleOutputError`` at the reading line instead of returning newer
values. The last part shows it, and the fix for outputs kept across steps:
``graphed(..., clone_outputs=True)`` (or ``out.clone()``).

Expected output (on a CPU-only machine)::

    device: cpu
    step  1: batch 3 -> bucket 4, logits (3, 32)
    ...
    step 16: batch 4 -> bucket 4, logits (4, 32)
    16 steps equal the eager model; stats: calls=16 graphs=4 replays=0
    kept logits read after the next step: GG701 [stale-output] ...
    with clone_outputs=True the kept logits stay valid
    OK

Run with ``python examples/02_decode_loop_shape_classes.py`` (exit status 0).
"""

from __future__ import annotations

import logging

import structlog
import torch
from torch import nn

import graphguard

# The stale-output part triggers a hazard on purpose and prints it; the duplicate structlog
# event is turned off here. Logging configuration belongs to the application: graphguard never
# configures it.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

device = "cuda" if torch.cuda.is_available() else "cpu"
BUCKETS = [1, 2, 4, 8]
VOCAB, DIM, MAX_POS = 32, 16, 64
BATCH_SIZES = [3, 5, 8, 2, 1, 7, 4, 6, 3, 2, 1, 8, 5, 2, 1, 4]


class TinyLM(nn.Module):
    """One decode step: the last token and position of each live sequence -> next-token logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(MAX_POS, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, DIM), nn.GELU(), nn.Linear(DIM, DIM))
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos(positions)
        return self.head(h + self.mlp(h))


def live_batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last token and position of each live sequence at this step (random stand-ins)."""
    g = torch.Generator().manual_seed(step)
    tokens = torch.randint(1, VOCAB, (size,), generator=g)
    positions = torch.randint(1, MAX_POS, (size,), generator=g)
    return tokens.to(device), positions.to(device)


def bucket_of(size: int) -> int:
    return next(b for b in BUCKETS if b >= size)


def decode_loop(model: TinyLM) -> None:
    fast = graphguard.graphed(model, warmup=1, buckets=BUCKETS, max_graphs=4, label="decode")
    for step, size in enumerate(BATCH_SIZES, start=1):
        tokens, positions = live_batch(step, size)
        logits = fast(tokens, positions)
        # `logits * 1` is a plain tensor: a copy, safe to keep after the next replay.
        torch.testing.assert_close(logits * 1, model(tokens, positions))
        print(
            f"step {step:2d}: batch {size} -> bucket {bucket_of(size)}, "
            f"logits {tuple(logits.shape)}"
        )
    stats = fast.stats
    assert stats["graphs"] == len(BUCKETS) and not stats["eager"], stats
    print(
        f"{len(BATCH_SIZES)} steps equal the eager model; stats: calls={stats['calls']} "
        f"graphs={stats['graphs']} replays={stats['replays']}"
    )


def kept_outputs(model: TinyLM) -> None:
    fast = graphguard.graphed(model, warmup=1, buckets=BUCKETS, label="decode")
    for step in range(3):  # warm up and capture the bucket of 4
        fast(*live_batch(step, 4))
    kept = fast(*live_batch(10, 4))
    fast(*live_batch(11, 4))  # replays the same graph: `kept` now holds step 11's logits
    try:
        kept.argmax(-1)
    except graphguard.StaleOutputError as err:
        print(f"kept logits read after the next step: {str(err).splitlines()[0]}")
    else:
        raise SystemExit("expected StaleOutputError for an output kept across steps")

    cloning = graphguard.graphed(model, warmup=1, buckets=BUCKETS, clone_outputs=True)
    for step in range(3):
        cloning(*live_batch(step, 4))
    kept = cloning(*live_batch(10, 4))
    cloning(*live_batch(11, 4))
    torch.testing.assert_close(kept, model(*live_batch(10, 4)))
    print("with clone_outputs=True the kept logits stay valid")


def main() -> None:
    print(f"device: {device}")
    torch.manual_seed(0)
    model = TinyLM().to(device).eval()
    with torch.no_grad():
        decode_loop(model)
        kept_outputs(model)
    print("OK")


if __name__ == "__main__":
    main()
