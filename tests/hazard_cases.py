"""The hazard table shared by the CPU (audit) and GPU (capture) tests.

Each case is a small step whose one hazardous line ends with the marker ``# HAZARD``; the tests
assert that graphguard's diagnostic names exactly that file and line. ``Ctx`` carries the inputs a
step may read: ``x`` (a float tensor on the run's device), ``pinned`` (a pinned host tensor made
before the region, GPU runs only) and ``stream``/``event`` (made before the region, GPU runs only).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Ctx:
    x: torch.Tensor
    pinned: torch.Tensor | None = None
    stream: Any = None
    event: Any = None


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    fn: Callable[[Ctx], Any]
    cpu: bool = True  # runs in CPU audit mode (some CUDA objects cannot exist without CUDA)
    gpu: bool = True

    @property
    def kind(self) -> str:
        from graphguard import RULES

        return RULES[self.code].kind

    @property
    def line(self) -> int:
        lines, start = inspect.getsourcelines(self.fn)
        marked = [start + i for i, text in enumerate(lines) if "# HAZARD" in text]
        assert len(marked) == 1, f"case {self.name} needs exactly one '# HAZARD' line"
        return marked[0]


# --- host-sync ---------------------------------------------------------------------------------
def item(c: Ctx) -> Any:
    return (c.x * 2).sum().item()  # HAZARD


def int_of_tensor(c: Ctx) -> Any:
    return int(c.x[0])  # HAZARD


def float_of_tensor(c: Ctx) -> Any:
    return float(c.x.sum())  # HAZARD


def if_tensor(c: Ctx) -> Any:
    y = c.x * 2
    if (y > 0).any():  # HAZARD
        y = y + 1
    return y


def assert_tensor(c: Ctx) -> Any:
    assert (c.x.abs() >= 0).all()  # HAZARD
    return c.x


def while_tensor(c: Ctx) -> Any:
    y = c.x.clone()
    while (y > 1e9).any():  # HAZARD
        y = y / 2
    return y


def tolist(c: Ctx) -> Any:
    return c.x[:4].tolist()  # HAZARD


def numpy_call(c: Ctx) -> Any:
    return c.x.numpy()  # HAZARD


def cpu_call(c: Ctx) -> Any:
    return (c.x * 2).cpu()  # HAZARD


def to_cpu(c: Ctx) -> Any:
    return (c.x * 2).to("cpu")  # HAZARD


def print_tensor(c: Ctx) -> Any:
    print(c.x[:2])  # HAZARD


def fstring_tensor(c: Ctx) -> Any:
    return f"value {c.x[0]}"  # HAZARD


def nonzero(c: Ctx) -> Any:
    return c.x.nonzero()  # HAZARD


def masked_select(c: Ctx) -> Any:
    return torch.masked_select(c.x, c.x > 0)  # HAZARD


def bool_mask_read(c: Ctx) -> Any:
    return c.x[c.x > 0]  # HAZARD


def bool_mask_write(c: Ctx) -> Any:
    y = c.x.clone()
    y[y < 0] = c.x[:1]  # HAZARD
    return y


def unique(c: Ctx) -> Any:
    return torch.unique(c.x)  # HAZARD


def repeat_interleave(c: Ctx) -> Any:
    repeats = torch.ones(4, dtype=torch.long, device=c.x.device)
    return torch.repeat_interleave(c.x[:4], repeats)  # HAZARD


def where_one_arg(c: Ctx) -> Any:
    return torch.where(c.x > 0)  # HAZARD


def equal(c: Ctx) -> Any:
    return torch.equal(c.x, c.x * 1)  # HAZARD


def allclose(c: Ctx) -> Any:
    return torch.allclose(c.x, c.x + 0)  # HAZARD


def slice_bound_from_tensor(c: Ctx) -> Any:
    n = (c.x[:8] > 0).sum()
    return c.x[:n]  # HAZARD


def zero_dim_index(c: Ctx) -> Any:
    row = (c.x[:8] > 0).sum()
    return c.x[row]  # HAZARD


def size_from_tensor(c: Ctx) -> Any:
    n = (c.x[:8] > 0).sum() + 1
    return torch.zeros(n, device=c.x.device)  # HAZARD


def view_size_from_tensor(c: Ctx) -> Any:
    rows = c.x.new_ones(()).long() * 4
    return c.x.view(rows, -1)  # HAZARD


def pad_from_tensor(c: Ctx) -> Any:
    pad = (c.x[:8] > 0).sum()  # e.g. a padding to the longest sequence, computed on the device
    return torch.nn.functional.pad(c.x[:16].view(4, 4), (0, pad))  # HAZARD


def split_from_tensor(c: Ctx) -> Any:
    size = c.x.new_ones(()).long() * 4
    return c.x.split(size)  # HAZARD


def interpolate_size_from_tensor(c: Ctx) -> Any:
    size = c.x.new_ones(()).long() * 8
    return torch.nn.functional.interpolate(c.x[:16].view(1, 1, 16), size=size)  # HAZARD


def topk_k_from_tensor(c: Ctx) -> Any:
    k = (c.x[:8] > 0).sum() + 1
    return c.x.topk(k)  # HAZARD


def contains(c: Ctx) -> Any:
    return c.x * 2 if 0.5 in c.x else c.x  # HAZARD


def gaussian_nll(c: Ctx) -> Any:
    var = c.x[:8].abs() + 0.1
    return torch.nn.functional.gaussian_nll_loss(c.x[:8], c.x[8:16], var)  # HAZARD


def segment_reduce_lengths(c: Ctx) -> Any:
    lengths = torch.full((4,), 2, device=c.x.device)
    return torch.segment_reduce(c.x[:8], "sum", lengths=lengths)  # HAZARD


def ldl_factor(c: Ctx) -> Any:
    a = c.x[:16].view(4, 4)
    spd = a @ a.T + 4 * torch.eye(4, device=c.x.device)
    return torch.linalg.ldl_factor_ex(spd)[0]  # HAZARD


def covariance(c: Ctx) -> Any:
    return torch.cov(c.x[:16].view(4, 4))  # HAZARD


def one_hot_no_classes(c: Ctx) -> Any:
    labels = (c.x[:8] > 0).long()
    return torch.nn.functional.one_hot(labels)  # HAZARD


def histc_default_range(c: Ctx) -> Any:
    return torch.histc(c.x, bins=10)  # HAZARD


def index_write_number(c: Ctx) -> Any:
    # wav2vec2's _get_feature_vector_attention_mask does this: index_put_ copies the number
    y = c.x[:64].clone().view(8, 8)
    rows = torch.arange(8, device=c.x.device)
    y[(rows, rows)] = 1  # HAZARD
    return y


def host_table_device_index(c: Ctx) -> Any:
    # diffusers' DDIM step: alphas_cumprod (a CPU table) indexed by a device timestep
    table = torch.linspace(0.0, 1.0, 16, device="cpu")
    step = (c.x[:8] > 0).sum()
    return table[step]  # HAZARD


def masked_fill_device_value(c: Ctx) -> Any:
    # torch fills with value.item(): a device value is read on the host
    return c.x.masked_fill(c.x > 0, c.x[0])  # HAZARD


def index_fill_device_value(c: Ctx) -> Any:
    rows = torch.arange(4, device=c.x.device)
    return c.x.clone().index_fill_(0, rows, c.x[0])  # HAZARD


def full_like_device_value(c: Ctx) -> Any:
    return torch.full_like(c.x, c.x[0])  # HAZARD


def eigh(c: Ctx) -> Any:
    a = c.x[:16].view(4, 4)
    return torch.linalg.eigh(a @ a.T)  # HAZARD


def svd_norm(c: Ctx) -> Any:
    return torch.linalg.matrix_norm(c.x[:16].view(4, 4), ord="nuc")  # HAZARD


def matrix_exp(c: Ctx) -> Any:
    return torch.linalg.matrix_exp(c.x[:16].view(4, 4) * 0.1)  # HAZARD


def combinations(c: Ctx) -> Any:
    return torch.combinations(c.x[:6], r=2)  # HAZARD


def index_put_host_value(c: Ctx) -> Any:
    y = c.x.clone()
    rows = torch.arange(8, device=c.x.device)
    return y.index_put_((rows,), torch.ones(()))  # HAZARD


def _ctc_operands(c: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    # 8 frames, batch 2, 5 classes; targets of 3 labels in 1..4 made on the device
    log_probs = c.x[:80].view(8, 2, 5).log_softmax(-1)
    return log_probs, torch.arange(1, 7, device=c.x.device).view(2, 3) % 4 + 1


def ctc_loss_device_lengths(c: Ctx) -> Any:
    log_probs, targets = _ctc_operands(c)
    frames = torch.full((2,), 8, device=c.x.device)
    labels = torch.full((2,), 3, device=c.x.device)
    return torch.nn.functional.ctc_loss(log_probs, targets, frames, labels)  # HAZARD


def ctc_loss_list_lengths(c: Ctx) -> Any:
    log_probs, targets = _ctc_operands(c)
    return torch.nn.functional.ctc_loss(log_probs, targets, [8, 8], [3, 3])  # HAZARD


def _expert_operands(c: Ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # 16 token rows, 3 experts of 16x16, group ends [6, 11, 16] made on the device
    offs = torch.arange(1, 4, device=c.x.device, dtype=torch.int32) * 5 + 1
    return c.x[:256].view(16, 16), c.x[:768].view(3, 16, 16), offs


def grouped_mm_float32(c: Ctx) -> Any:
    a, w, offs = _expert_operands(c)
    return torch.nn.functional.grouped_mm(a, w, offs=offs)  # HAZARD


def _spd(c: Ctx) -> torch.Tensor:
    a = c.x[:16].view(4, 4)
    return a @ a.T + 4 * torch.eye(4, device=c.x.device, dtype=c.x.dtype)


def linalg_inv(c: Ctx) -> Any:
    return torch.linalg.inv(_spd(c))  # HAZARD


def linalg_cholesky(c: Ctx) -> Any:
    return torch.linalg.cholesky(_spd(c))  # HAZARD


def linalg_solve(c: Ctx) -> Any:
    return torch.linalg.solve(_spd(c), c.x[:4])  # HAZARD


def cuda_synchronize(c: Ctx) -> Any:
    torch.cuda.synchronize()  # HAZARD


def stream_synchronize(c: Ctx) -> Any:
    torch.cuda.current_stream().synchronize()  # HAZARD


def stream_query(c: Ctx) -> Any:
    return c.stream.query()  # HAZARD


def event_query(c: Ctx) -> Any:
    return c.event.query()  # HAZARD


def event_synchronize(c: Ctx) -> Any:
    c.event.synchronize()  # HAZARD


# --- pinned-alloc ------------------------------------------------------------------------------
def pinned_factory(c: Ctx) -> Any:
    return torch.empty(1024, pin_memory=True)  # HAZARD


def pin_memory_call(c: Ctx) -> Any:
    return torch.randn(1024).pin_memory()  # HAZARD


def nonblocking_d2h(c: Ctx) -> Any:
    return (c.x * 2).to("cpu", non_blocking=True)  # HAZARD


# --- stream-escape -----------------------------------------------------------------------------
def default_stream_work(c: Ctx) -> Any:
    # One line on purpose: audit reports the default_stream() call, capture the op on it.
    with torch.cuda.stream(torch.cuda.default_stream()): y = c.x * 2  # HAZARD  # noqa: E701  # fmt: skip
    return y


# --- pageable-copy -----------------------------------------------------------------------------
def pageable_to_cuda(c: Ctx) -> Any:
    return torch.randn(1024).to("cuda")  # HAZARD


def pageable_cuda_call(c: Ctx) -> Any:
    return c.x + torch.tensor([1.0]).cuda()  # HAZARD


def tensor_from_data(c: Ctx) -> Any:
    return c.x[:2] + torch.tensor([1.0, 2.0], device=c.x.device)  # HAZARD


def index_with_list(c: Ctx) -> Any:
    return c.x[[0, 2, 5]]  # HAZARD


def index_with_host_tensor(c: Ctx) -> Any:
    return c.x[torch.tensor([0, 2])]  # HAZARD


# --- host-buffer-read --------------------------------------------------------------------------
def pinned_h2d(c: Ctx) -> Any:
    return c.pinned.to("cuda", non_blocking=True)  # HAZARD


# --- rng-state ---------------------------------------------------------------------------------
def manual_seed(c: Ctx) -> Any:
    torch.manual_seed(0)  # HAZARD


def cuda_manual_seed(c: Ctx) -> Any:
    torch.cuda.manual_seed(0)  # HAZARD


def get_rng_state(c: Ctx) -> Any:
    return torch.get_rng_state()  # HAZARD


def cuda_get_rng_state(c: Ctx) -> Any:
    return torch.cuda.get_rng_state()  # HAZARD


def cuda_set_rng_state(c: Ctx) -> Any:
    torch.cuda.set_rng_state(torch.cuda.get_rng_state())  # HAZARD


CASES: list[Case] = [
    Case("item", "GG101", item),
    Case("int", "GG101", int_of_tensor),
    Case("float", "GG101", float_of_tensor),
    Case("if-tensor", "GG102", if_tensor),
    Case("assert-tensor", "GG102", assert_tensor),
    Case("while-tensor", "GG102", while_tensor),
    Case("tolist", "GG103", tolist),
    Case("numpy", "GG103", numpy_call),
    Case("cpu", "GG103", cpu_call),
    Case("to-cpu", "GG103", to_cpu),
    Case("print", "GG104", print_tensor),
    Case("fstring", "GG104", fstring_tensor),
    Case("nonzero", "GG105", nonzero),
    Case("masked-select", "GG105", masked_select),
    Case("bool-mask-read", "GG105", bool_mask_read),
    Case("bool-mask-write", "GG105", bool_mask_write),
    Case("unique", "GG105", unique),
    Case("repeat-interleave", "GG105", repeat_interleave),
    Case("where-one-arg", "GG105", where_one_arg),
    Case("equal", "GG106", equal),
    Case("allclose", "GG106", allclose),
    Case("contains", "GG102", contains),
    Case("gaussian-nll-loss", "GG102", gaussian_nll),
    Case("segment-reduce-lengths", "GG102", segment_reduce_lengths),
    Case("ldl-factor", "GG108", ldl_factor),
    Case("covariance", "GG106", covariance),
    Case("slice-bound-from-tensor", "GG101", slice_bound_from_tensor),
    Case("zero-dim-index", "GG101", zero_dim_index),
    Case("size-from-tensor", "GG101", size_from_tensor),
    Case("view-size-from-tensor", "GG101", view_size_from_tensor),
    Case("pad-from-tensor", "GG101", pad_from_tensor),
    Case("split-from-tensor", "GG101", split_from_tensor),
    Case("interpolate-size-from-tensor", "GG101", interpolate_size_from_tensor),
    Case("topk-k-from-tensor", "GG101", topk_k_from_tensor),
    Case("one-hot-without-classes", "GG101", one_hot_no_classes),
    Case("grouped-mm-float32", "GG103", grouped_mm_float32),
    Case("histc-default-range", "GG101", histc_default_range),
    Case("index-write-number", "GG401", index_write_number),
    Case("index-put-host-value", "GG401", index_put_host_value),
    Case("host-table-device-index", "GG101", host_table_device_index),
    Case("masked-fill-device-value", "GG101", masked_fill_device_value),
    Case("index-fill-device-value", "GG101", index_fill_device_value),
    Case("full-like-device-value", "GG101", full_like_device_value),
    Case("combinations", "GG105", combinations),
    Case("eigh", "GG108", eigh),
    Case("svd-norm", "GG108", svd_norm),
    Case("matrix-exp", "GG103", matrix_exp),
    Case("ctc-loss-device-lengths", "GG103", ctc_loss_device_lengths),
    Case("ctc-loss-list-lengths", "GG401", ctc_loss_list_lengths),
    Case("linalg-inv", "GG108", linalg_inv),
    Case("linalg-cholesky", "GG108", linalg_cholesky),
    Case("linalg-solve", "GG108", linalg_solve),
    Case("cuda-synchronize", "GG107", cuda_synchronize),
    Case("stream-synchronize", "GG107", stream_synchronize, cpu=False),
    Case("stream-query", "GG107", stream_query, cpu=False),
    Case("event-query", "GG107", event_query, cpu=False),
    Case("event-synchronize", "GG107", event_synchronize, cpu=False),
    Case("pinned-factory", "GG201", pinned_factory),
    Case("pin-memory", "GG201", pin_memory_call),
    Case("nonblocking-d2h", "GG202", nonblocking_d2h),
    Case("default-stream", "GG301", default_stream_work),
    Case("pageable-to-cuda", "GG401", pageable_to_cuda),
    Case("pageable-cuda-call", "GG401", pageable_cuda_call),
    Case("tensor-from-data", "GG401", tensor_from_data),
    Case("index-with-list", "GG401", index_with_list),
    Case("index-with-host-tensor", "GG401", index_with_host_tensor),
    Case("pinned-h2d", "GG402", pinned_h2d, cpu=False),
    Case("manual-seed", "GG501", manual_seed),
    Case("cuda-manual-seed", "GG501", cuda_manual_seed),
    Case("get-rng-state", "GG502", get_rng_state),
    Case("cuda-get-rng-state", "GG502", cuda_get_rng_state),
    Case("cuda-set-rng-state", "GG502", cuda_set_rng_state),
]


# --- legal code that must never be reported ------------------------------------------------------
def clean_where(c: Ctx) -> Any:
    return torch.where(c.x > 0, c.x, 0).sum()


def clean_int_index(c: Ctx) -> Any:
    idx = torch.arange(0, 8, 2, device=c.x.device)
    return c.x[idx]


def clean_assert_async(c: Ctx) -> Any:
    torch._assert_async((c.x.abs() >= 0).all())
    return c.x


def clean_host_item(c: Ctx) -> Any:
    host = torch.tensor(3.0)
    return c.x * host.item()


def clean_shape_logic(c: Ctx) -> Any:
    y = c.x.view(-1, 2) if c.x.shape[0] % 2 == 0 and c.x.numel() > 2 else c.x
    return y * len(y)


def clean_dropout(c: Ctx) -> Any:
    return torch.nn.functional.dropout(c.x, p=0.5) + torch.rand(4, device=c.x.device).sum()


def clean_nonzero_static(c: Ctx) -> Any:
    return torch.nonzero_static(c.x > 0, size=8, fill_value=-1)


def clean_mlp(c: Ctx) -> Any:
    w = torch.ones(16, 16, device=c.x.device, dtype=c.x.dtype)
    h = torch.relu(c.x[:256].view(16, 16) @ w)
    return torch.softmax(h, dim=-1).sum(dim=-1)


def clean_bool_mask_scalar(c: Ctx) -> Any:
    # torch sends a Python number written through a boolean mask to masked_fill_.
    y = c.x.clone()
    y[y < 0] = 0.0
    y[y > 2] = -1
    z = c.x[:64].clone().view(8, 8)
    z[:, z[0] > 0] = 0.0  # one mask after a slice: masked_fill_ as well
    return y.sum() + z.sum()


def clean_segment_reduce_unchecked(c: Ctx) -> Any:
    # lengths validated before the step: unsafe=True skips torch's two host reads
    lengths = torch.full((4,), 2, device=c.x.device)
    return torch.segment_reduce(c.x[:8], "sum", lengths=lengths, unsafe=True)


def clean_fill_values(c: Ctx) -> Any:
    # a host value is read without a sync; fill_ with a device value copies it on the device
    host_value = torch.tensor(0.5)
    y = c.x.masked_fill(c.x > 0, host_value).index_fill(0, torch.arange(4, device=c.x.device), -1.0)
    return y + torch.full_like(c.x, 2.0) + c.x.clone().fill_(c.x[0])


def clean_sampling(c: Ctx) -> Any:
    # torch.multinomial checks its probabilities with .item() on the CPU only; under capture it
    # samples on the device (measured on an H200, torch 2.11), one sample or several
    probs = torch.softmax(c.x[:64].view(4, 16), dim=-1)
    several = torch.multinomial(probs, 4, replacement=True)
    one = torch.multinomial(probs, 1)
    race = (probs / torch.empty_like(probs).exponential_()).argmax(-1, keepdim=True)
    return (several >= 0).sum() + (one < 16).sum() + (race < 16).sum()  # not the random draws


def clean_index_write_device_value(c: Ctx) -> Any:
    # a device 0-dim value needs no copy: index_put_ reads it where it is
    y = c.x.clone()
    rows = torch.arange(8, device=c.x.device)
    y[rows] = y.new_full((), 0.5)
    return y.index_put_((rows,), c.x[0], accumulate=True)


def clean_is_capturing(c: Ctx) -> Any:
    assert isinstance(torch.cuda.is_current_stream_capturing(), bool)
    return c.x * 2


def clean_empty_cache(c: Ctx) -> Any:
    torch.cuda.empty_cache()
    return c.x * 2


def clean_side_stream(c: Ctx) -> Any:
    side = c.stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = c.x * 2
    torch.cuda.current_stream().wait_stream(side)
    return y


def clean_linalg_ex(c: Ctx) -> Any:
    # The _ex variants return their info codes as device tensors instead of checking them.
    a = c.x[:16].view(4, 4)
    spd = a @ a.T + 4 * torch.eye(4, device=c.x.device, dtype=c.x.dtype)
    inv, _ = torch.linalg.inv_ex(spd)
    chol, _ = torch.linalg.cholesky_ex(spd)
    sol, _ = torch.linalg.solve_ex(spd, c.x[:4])
    labels = torch.nn.functional.one_hot((c.x[:8] > 0).long(), num_classes=2)
    counts = torch.histc(c.x, bins=10, min=-4.0, max=4.0)  # a range given: nothing is read
    # vector norms and the Frobenius norm need no decomposition
    norms = torch.linalg.norm(c.x, 2) + torch.linalg.matrix_norm(spd) + torch.norm(c.x, p=2)
    # cholesky_solve and lu_solve check their info codes on the CPU only (measured on an H200:
    # both capture and replay equal to eager)
    solved = torch.cholesky_solve(c.x[:4, None], chol)
    lu, pivots, _ = torch.linalg.lu_factor_ex(spd)
    solved = solved.sum() + torch.linalg.lu_solve(lu, pivots, c.x[:4, None]).sum()
    return inv.sum() + chol.sum() + sol.sum() + labels.sum() + counts.sum() + norms + solved


def clean_sizes_from_shapes(c: Ctx) -> Any:
    # Sizes, bounds and k from Python ints (shapes): nothing is read from the device.
    n = c.x.shape[0] // 4
    parts = c.x[:n].split(n // 4)
    padded = torch.nn.functional.pad(parts[0], (0, 4))
    head = c.x[:n].view(n // 4, -1).repeat(2, 1) + padded.sum()
    top = c.x.topk(4).values
    fill = torch.full((4,), 2.0, device=c.x.device)
    return head.sum() + top.sum() + fill.sum() + torch.arange(n, device=c.x.device).sum()


def clean_grouped_mm_bf16(c: Ctx) -> Any:
    # bfloat16 operands and output: torch's CUTLASS grouped GEMM reads offs on the device
    a, w, offs = _expert_operands(c)
    return torch.nn.functional.grouped_mm(a.bfloat16(), w.bfloat16(), offs=offs).float()


def clean_empty_copies(c: Ctx) -> Any:
    # Nothing to copy: torch's copy returns before any transfer (transformers' DynamicLayer
    # starts its cache as torch.tensor([], device=...)).
    keys = torch.tensor([], dtype=c.x.dtype, device=c.x.device)
    rows = c.x.new_tensor([])
    moved = torch.zeros(0, 3).to(c.x.device)
    back = c.x[:0].cpu()
    return c.x * 2 + keys.sum() + rows.sum() + moved.sum() + back.numel()


CLEAN: list[Case] = [
    Case("where-three-args", "", clean_where),
    Case("int-device-index", "", clean_int_index),
    Case("assert-async", "", clean_assert_async),
    Case("host-item", "", clean_host_item),
    Case("shape-logic", "", clean_shape_logic),
    Case("dropout-rand", "", clean_dropout),
    Case("nonzero-static", "", clean_nonzero_static),
    Case("mlp", "", clean_mlp),
    Case("bool-mask-scalar", "", clean_bool_mask_scalar),
    Case("empty-copies", "", clean_empty_copies),
    Case("index-write-device-value", "", clean_index_write_device_value),
    Case("fill-values", "", clean_fill_values),
    Case("segment-reduce-unchecked", "", clean_segment_reduce_unchecked),
    Case("sampling", "", clean_sampling),
    Case("grouped-mm-bf16", "", clean_grouped_mm_bf16),
    Case("linalg-ex-and-one-hot-classes", "", clean_linalg_ex),
    Case("sizes-from-shapes", "", clean_sizes_from_shapes),
    Case("is-capturing", "", clean_is_capturing, cpu=False),
    Case("empty-cache", "", clean_empty_cache, cpu=False),
    Case("side-stream", "", clean_side_stream, cpu=False),
]
