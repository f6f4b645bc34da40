"""The op vocabulary of the differential tests: one-line steps, each labelled with what plain
torch does with it under a real capture (measured on a GPU by ``test_differential_cuda.py``,
which checks every label against raw ``torch.cuda.graph`` runs).

``kind``: "legal" (captures and replays right), "refused" (torch raises, poisons the process or
replays wrong), "silent" (torch accepts it and the graph is wrong or unsafe: the ground-truth
table of hazards torch does not report).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Op:
    name: str
    src: str  # one line, run inside ``step(x, pinned, idx)`` with ``y`` the running value
    kind: str  # "legal", "refused" (torch raises or poisons), "silent" (torch accepts: table)


OPS: list[Op] = [
    Op("mul", "y = y * 2", "legal"),
    Op("add-input", "y = y + x", "legal"),
    Op("relu", "y = torch.relu(y)", "legal"),
    Op("where", "y = torch.where(y > 0, y, 0.5 * y)", "legal"),
    Op("mask-fill", "y[y < 0] = 0.0", "legal"),
    Op("cumsum", "y = y.cumsum(0) / 16", "legal"),
    Op("sort", "y = y.sort().values", "legal"),
    Op("int-device-index", "y = y[idx]", "legal"),
    Op("nonzero-static", "y = y + torch.nonzero_static(y > 0, size=16).flatten() * 0.01", "legal"),
    Op("assert-async", "torch._assert_async((y == y).all())", "legal"),
    Op("factory-on-device", "y = y + torch.ones(16, device=x.device)", "legal"),
    Op("to-own-device", "y = y.to(x.device)", "legal"),
    # Zero-element copies: torch's copy returns before any transfer (Copy.cpp).
    Op("empty-from-data", "y = y + torch.tensor([], device=x.device).sum()", "legal"),
    Op("empty-h2d", "y = y + torch.zeros(0).to(x.device).sum()", "legal"),
    Op("empty-d2h", "h = y[:0].cpu()", "legal"),
    Op("one-hot-classes", "y = y + torch.nn.functional.one_hot(idx, 16).sum(0)", "legal"),
    Op(
        "linalg-inv-ex",
        "y = y + torch.linalg.inv_ex(torch.eye(4, device=x.device) * 4 + y.view(4, 4) * 0.01)[0]"
        ".flatten()",
        "legal",
    ),
    Op(
        "grouped-mm-bf16",
        "y = y + torch.nn.functional.grouped_mm(y.expand(16, 16).bfloat16(), "
        "(y[:, None] * y).expand(3, 16, 16).bfloat16(), "
        "offs=torch.arange(1, 4, device=x.device, dtype=torch.int32) * 5 + 1)"
        ".float().sum(0) * 1e-3",
        "legal",
    ),
    Op(
        "grouped-mm-float32",
        "y = y + torch.nn.functional.grouped_mm(y.expand(16, 16).contiguous(), "
        "(y[:, None] * y).expand(3, 16, 16).contiguous(), "
        "offs=torch.arange(1, 4, device=x.device, dtype=torch.int32) * 5 + 1).sum(0) * 1e-3",
        "refused",
    ),
    Op("index-write-number", "y = y.clone(); y[idx[:4]] = 0.5", "refused"),
    Op("index-write-device", "y = y.clone(); y[idx[:4]] = y.new_full((), 0.5)", "legal"),
    Op(
        "mask-write-cols",
        "y = y.view(4, 4).clone(); y[:, y[0] > 0] = 0.0; y = y.flatten()",
        "legal",
    ),
    Op(
        "ctc-loss",
        "y = y + torch.nn.functional.ctc_loss(y.view(4, 1, 4).log_softmax(-1), "
        "idx[:2].view(1, 2) % 3 + 1, [4], [2])",
        "refused",
    ),
    # from torch's source (benchmarks/hidden_syncs.py --opinfo --native and reading), labels
    # checked against raw capture by test_differential_cuda.py
    Op("masked-fill-number", "y = y.masked_fill(y > 0, 0.5)", "legal"),
    Op("masked-fill-device", "y = y.masked_fill(y > 0, y[0])", "refused"),
    # one-hot probabilities: the draw is the same at every replay, so raw replays can match
    Op(
        "multinomial-one",
        "y = y + torch.multinomial(torch.nn.functional.one_hot(idx[:4] % 4, 4).float(), 1)"
        ".sum() * 0.01",
        "legal",
    ),
    Op("combinations", "y = y + torch.combinations(y[:4], 2).sum() * 0.01", "refused"),
    # measured under raw capture on an H200 (benchmarks/results/measure-rules-h200.md)
    Op(
        "cholesky-solve",
        "y = y + torch.cholesky_solve(y[:4, None], torch.linalg.cholesky_ex("
        "torch.eye(4, device=x.device) * 4 + y.view(4, 4) @ y.view(4, 4).T * 0.01)[0])"
        ".flatten().repeat(4) * 0.01",
        "legal",
    ),
    Op(
        "lu-solve",
        "A = torch.eye(4, device=x.device) * 4 + y.view(4, 4) * 0.01; "
        "LU, piv, _ = torch.linalg.lu_factor_ex(A); "
        "y = y + torch.linalg.lu_solve(LU, piv, y[:4, None]).flatten().repeat(4) * 0.01",
        "legal",
    ),
    Op("quantile-device-q", "y = y + torch.quantile(y, y[:2].sigmoid()).sum() * 0.01", "legal"),
    Op("fill-device-value", "y = y + y.clone().fill_(y[0]) * 0.01", "legal"),
    Op("masked-fill-host-value", "y = y.masked_fill(y > 0, torch.tensor(0.5))", "legal"),
    Op(
        "multilabel-margin",
        "y = y + torch.nn.functional.multilabel_margin_loss(y.view(4, 4), idx.view(4, 4) % 3)",
        "legal",
    ),
    Op("to-sparse", "y = y + y.view(4, 4).relu().to_sparse().values().sum() * 0.01", "refused"),
    Op("svdvals", "y = y + torch.linalg.svdvals(y.view(4, 4)).repeat(4) * 0.01", "refused"),
    Op(
        "lstsq",
        "y = y + torch.linalg.lstsq(torch.eye(4, device=x.device) * 4 + y.view(4, 4) * 0.01, "
        "y[:4, None]).solution.flatten().repeat(4) * 0.01",
        "refused",
    ),
    Op("index-fill-device", "y = y.index_fill(0, idx[:4], y[0])", "refused"),
    Op("full-like-device", "y = y + torch.full_like(y, y[0]) * 0.01", "refused"),
    Op("host-table-device-index", "y = y + torch.linspace(0.0, 1.0, 16)[idx[0]]", "refused"),
    Op(
        "eigh",
        "y = y + torch.linalg.eigh(y.view(4, 4) @ y.view(4, 4).T)[0].repeat(4) * 0.01",
        "refused",
    ),
    Op("matrix-exp", "y = y + torch.linalg.matrix_exp(y.view(4, 4) * 0.01).flatten()", "refused"),
    Op(
        "segment-reduce-lengths",
        "y = y + torch.segment_reduce(y, 'sum', lengths=torch.full((4,), 4, device=x.device))"
        ".repeat(4) * 0.01",
        "refused",
    ),
    Op(
        "segment-reduce-unchecked",
        "y = y + torch.segment_reduce(y, 'sum', lengths=torch.full((4,), 4, device=x.device), "
        "unsafe=True).repeat(4) * 0.01",
        "legal",
    ),
    Op(
        "segment-reduce-offsets",
        "y = y + torch.segment_reduce(y, 'sum', offsets=torch.arange(0, 17, 4, device=x.device))"
        ".repeat(4) * 0.01",
        "legal",
    ),
    Op(
        "ldl-factor",
        "y = y + torch.linalg.ldl_factor_ex(torch.eye(4, device=x.device) * 4 + y.view(4, 4) "
        "@ y.view(4, 4).T * 0.01)[0].flatten() * 0.01",
        "refused",
    ),
    Op("histc-range", "y = y + torch.histc(y, 16, -4, 4) * 0.01", "legal"),
    Op("histc-default", "y = y + torch.histc(y, 16) * 0.01", "refused"),
    Op("pad-tensor", "y = y + torch.nn.functional.pad(y, (0, idx[3] * 0 + 2))[:16]", "refused"),
    Op("pad-int", "y = y + torch.nn.functional.pad(y, (0, 2))[:16]", "legal"),
    Op("item", "y = y + y.sum().item()", "refused"),
    Op("one-hot", "y = y + torch.nn.functional.one_hot(idx).sum(0)", "refused"),
    Op("cov", "y = y + torch.cov(y.view(4, 4)).flatten()", "refused"),
    Op("slice-bound-tensor", "y = y + y[: idx.max() + 1].sum()", "refused"),
    Op("size-tensor", "y = y + torch.zeros(idx.max() + 1, device=x.device)", "refused"),
    Op("topk-k-tensor", "y = y + y.topk(idx.min() + 1).values.sum()", "refused"),
    Op("zero-dim-index", "y = y + y[idx[0]]", "refused"),
    Op("one-element-index", "y = y + y[idx[:1]]", "legal"),
    Op(
        "linalg-inv",
        "y = y + torch.linalg.inv(torch.eye(4, device=x.device) * 4 + y.view(4, 4) * 0.01)"
        ".flatten()",
        "refused",
    ),
    Op("bool", "y = -y if (y > 100).any() else y", "refused"),
    Op("tolist", "y = y + len(y.tolist())", "refused"),
    Op("cpu", "y = y + y.cpu().sum().to(x.device)", "refused"),
    Op("nonzero", "y = y + y.nonzero().sum()", "refused"),
    Op("mask-read", "y = y + y[y > 0].sum()", "refused"),
    Op("unique", "y = y + torch.unique(y).sum()", "refused"),
    Op("equal", "y = y + float(torch.equal(y, x))", "refused"),
    Op("print", "print(y[:1])", "refused"),
    Op("tensor-from-data", "y = y + torch.tensor([1.0], device=x.device)", "refused"),
    Op("list-index", "y = y[[0, 1, 2, 3] * 4]", "refused"),
    Op("synchronize", "torch.cuda.synchronize()", "refused"),
    Op("manual-seed", "torch.manual_seed(0)", "refused"),
    Op("nonblocking-d2h", 'h = y.to("cpu", non_blocking=True)', "silent"),
    Op("pinned-alloc", "h = torch.empty(16, pin_memory=True)", "silent"),
    Op("pinned-h2d", "y = y + pinned.to(x.device, non_blocking=True)", "silent"),
    Op(
        "default-stream",
        "with torch.cuda.stream(torch.cuda.default_stream()): y = y * 3",
        "silent",
    ),
]
BY_NAME = {op.name: op for op in OPS}
LEGAL_OPS = [op.name for op in OPS if op.kind == "legal"]
HAZARD_OPS = [op.name for op in OPS if op.kind != "legal"]


#: How a step may spell its device; ``x.device`` is the vocabulary's own spelling. ``DEVICE``
#: is the module's ``"cuda" if torch.cuda.is_available() else "cpu"``, the usual pattern.
SPELLINGS = ("x.device", "DEVICE", "torch.device(DEVICE)")


def program(names: tuple[str, ...], device: str = "x.device") -> str:
    """The step's source: op ``i`` of ``names`` is on line ``6 + i``."""
    body = "\n".join(f"    {BY_NAME[n].src.replace('x.device', device)}" for n in names)
    head = 'import torch\nDEVICE = "cuda" if torch.cuda.is_available() else "cpu"\n\n'
    return f"{head}def step(x, pinned, idx):\n    y = x * 1\n{body}\n    return y\n"


def with_hazard(legal: list[str], hazard: str | None, at: int) -> tuple[str, ...]:
    """``legal`` with ``hazard`` (if any) inserted at position ``at`` (clamped)."""
    names = list(legal)
    if hazard is not None:
        names.insert(min(at, len(names)), hazard)
    return tuple(names)


def load_step(path: str | Path) -> Any:
    """The ``step`` function of a program written by :func:`program`."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.step
