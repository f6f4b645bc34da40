"""A cosine learning-rate schedule in a graphed nanoGPT-style training step, one graph for the run.

A CUDA graph records the optimizer's ``lr`` as a constant, so a schedule that changes it every
step needs the learning rate to be *live* state the graph reads at each replay: a 0-dim device
tensor in a ``capturable`` optimizer. ``graphguard.graph_safe_optimizer(opt)`` makes that change
(on CUDA) and keeps the program runnable without a GPU (a CPU tensor ``lr``, ``capturable=False``;
graphguard's audit still checks every step). torch's schedulers update a tensor ``lr`` in place,
so ``LambdaLR`` with nanoGPT's warm-up-then-cosine ``get_lr`` works unchanged.

The program trains a tiny GPT (embeddings, one causal self-attention block, an MLP, a tied head)
with ``AdamW`` and ``clip_grad_norm_`` under ``@graphguard.graphed``, logs the loss outside the
step, and checks the parameters against an eager twin trained with the same schedule. Then it
shows what happens without the recipe: the capturing call refuses the non-capturable
``AdamW`` step with ``StaleHostScalarError`` (GG602) at the line that steps it, in CPU audit and on
the GPU alike (where torch itself would raise an error that names no line).

Expected output (losses and rates vary by device)::

    device: cpu
    step  0: loss 4.39... lr 0.000750
    ...
    step 11: loss 4.37... lr 0.000381
    lr changed at every step: yes (12 distinct values)
    parameters equal the eager twin: yes
    graphed stats: calls=12 graphs=1 eager=False
    without graph_safe_optimizer: GG602 AdamW.step() at `optimizer.step()`
    OK

Run with ``python examples/06_cosine_lr_graphed.py`` (exit status 0).
"""

from __future__ import annotations

import itertools
import logging
import math

import structlog
import torch
from torch import nn
from torch.nn import functional as F

import graphguard

# This program prints the refusal itself; drop graphguard's duplicate error event. Logging
# configuration belongs to the application: graphguard never calls structlog.configure.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

device = "cuda" if torch.cuda.is_available() else "cpu"

# nanoGPT-style configuration, scaled down.
block_size, vocab_size, n_embd, n_head, batch_size = 16, 64, 32, 4, 8
learning_rate, min_lr, warmup_iters, lr_decay_iters = 3e-3, 3e-4, 3, 12
weight_decay, grad_clip, max_iters = 0.1, 1.0, 12


def get_lr(it: int) -> float:
    """nanoGPT's schedule: linear warm-up, then cosine decay down to ``min_lr``."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)  # nanoGPT's bias=False
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(n_embd, dim=2)
        q, k, v = (z.view(b, t, n_head, c // n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.block = Block()
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as in nanoGPT
        self.register_buffer("pos", torch.arange(block_size), persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(self.pos[: idx.shape[1]])
        logits = self.lm_head(self.ln_f(self.block(x)))
        return F.cross_entropy(logits.view(-1, vocab_size), targets.reshape(-1))


def configure_optimizer(model: GPT) -> torch.optim.AdamW:
    """nanoGPT's two groups: weight decay on matrices, none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, vocab_size, (max_iters, batch_size, block_size + 1), generator=gen)
    return [(d[:, :-1].contiguous().to(device), d[:, 1:].contiguous().to(device)) for d in data]


def train(
    recipe: bool, graphed: bool, lrs: list[float], log: bool = False
) -> tuple[GPT, graphguard.Graphed | None]:
    torch.manual_seed(0)
    model = GPT().to(device)
    optimizer = configure_optimizer(model)
    if recipe:
        graphguard.graph_safe_optimizer(optimizer)  # lr: a live tensor; capturable on CUDA
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: get_lr(it) / learning_rate)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # graphs need the .grad tensors to stay put
        return loss.detach()

    step = graphguard.graphed(train_step) if graphed else train_step
    for it, (x, y) in enumerate(batches()):
        lr = float(optimizer.param_groups[0]["lr"])
        loss = step(x, y)
        lrs.append(lr)
        if log:  # the loss is read on the host outside the step, after the call
            print(f"step {it:2d}: loss {loss.item():.4f} lr {lr:.6f}")
        scheduler.step()
    return model, step if isinstance(step, graphguard.Graphed) else None


def main() -> None:
    print("device:", device)
    lrs: list[float] = []
    model, step = train(recipe=True, graphed=True, lrs=lrs, log=True)
    assert step is not None
    distinct = len(set(lrs))
    changed = all(a != b for a, b in itertools.pairwise(lrs))
    print(f"lr changed at every step: {'yes' if changed else 'no'} ({distinct} distinct values)")
    twin, _ = train(recipe=False, graphed=False, lrs=[])
    same = all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )
    print(f"parameters equal the eager twin: {'yes' if same else 'no'}")
    stats = step.stats
    print(f"graphed stats: calls={stats['calls']} graphs={stats['graphs']} eager={stats['eager']}")

    calls: list[float] = []
    try:
        train(recipe=False, graphed=True, lrs=calls)
        refused = "no refusal"
    except graphguard.StaleHostScalarError as err:
        diagnostic = err.diagnostic
        line = diagnostic.source_line.strip()
        refused = f"{err.code} {diagnostic.api} at `{line}`"
    print(f"without graph_safe_optimizer: {refused}")
    if changed and same and stats["graphs"] == 1 and not stats["eager"] and refused != "no refusal":
        print("OK")


if __name__ == "__main__":
    main()
