"""The hazard catalog: one table of rules read by the interceptors, messages, docs and the CLI.

A rule is data. Interceptors name a rule by its code; the diagnostic takes title, why and fix
from the rule; ``docs/rules/<code>.md`` is written from the same fields (``python -m graphguard
rules --write-docs docs/rules`` regenerates the pages and a test checks they are current).

Codes are ``GG`` plus three digits and are never reused: a retired rule keeps its code. The
hundreds digit groups rules by kind; the kind strings are a public contract.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "RULES", "Rule", "get_rule", "iter_rules"]

#: Public hazard kinds, in catalog order. New kinds are appended, never renamed.
KINDS: tuple[str, ...] = (
    "host-sync",
    "pinned-alloc",
    "stream-escape",
    "pageable-copy",
    "host-buffer-read",
    "rng-state",
    "stale-host-scalar",
    "stale-output",
    "collective",
    "replay-mismatch",
)


@dataclass(frozen=True)
class Rule:
    """One hazard rule: what it catches, why it breaks a capture and the capture-safe rewrite."""

    code: str
    kind: str
    #: Message templates, ``(variant, template)``; ``"default"`` first. Check sites pass facts
    #: (``api``, ``tensor``, ``where`` and rule-specific ones), never prose.
    messages: tuple[tuple[str, str], ...]
    slug: str
    title: str
    why: str
    fix: str
    example: str
    use_instead: str
    #: What torch itself does with the hazard under a real capture (from measurements).
    torch_behaviour: str
    #: When graphguard reports it; the default fits hazards intercepted at the call.
    detected: str = (
        "inside a `graphguard.capture()`, `@graphguard.guard` or `@graphguard.graphed` region, "
        "in audit and capture mode alike, before the call reaches CUDA"
    )

    def message(self, variant: str = "default", /, **facts: object) -> str:
        """This rule's message for ``variant``, filled in with ``facts``."""
        for name, template in self.messages:
            if name == variant:
                return template.format(**facts)
        raise KeyError(f"rule {self.code} has no message variant {variant!r}")

    @property
    def docs(self) -> str:
        """Path of the rule's page, relative to the project root."""
        return f"docs/rules/{self.code}.md"

    @property
    def page(self) -> Path | None:
        """The rule's page on this machine: shipped in the installed package, or in the source
        checkout this package runs from; ``None`` if neither has it."""
        return _page(self.code)

    @property
    def docs_link(self) -> str:
        """Where a reader finds the page: its absolute path here, else the project path."""
        page = self.page
        return str(page) if page is not None else self.docs


RULES: dict[str, Rule] = {}

_PACKAGE = Path(__file__).resolve().parent
#: Where the pages are: a wheel ships ``docs/rules`` as ``graphguard/_pages`` (see
#: pyproject.toml); a source checkout has them at ``docs/rules`` beside the package.
_PAGE_DIRS = (_PACKAGE / "_pages", _PACKAGE.parent / "docs" / "rules")


@functools.cache
def _page(code: str) -> Path | None:
    for folder in _PAGE_DIRS:
        path = folder / f"{code}.md"
        if path.is_file():
            return path
    return None


def _rule(**fields: Any) -> None:
    rule = Rule(**fields)
    if rule.code in RULES:  # pragma: no cover - guards the table itself
        raise AssertionError(f"duplicate rule code {rule.code}")
    if rule.kind not in KINDS:  # pragma: no cover
        raise AssertionError(f"rule {rule.code} has unknown kind {rule.kind!r}")
    RULES[rule.code] = rule


_POISONS = (
    'torch fails with `cudaErrorStreamCaptureInvalidated` ("operation failed due to a previous '
    'error during capture"), names no line, and leaves the process unusable: every later RNG '
    'call raises "Offset increment outside graph capture encountered unexpectedly".'
)

# --- host-sync -------------------------------------------------------------------------------
_rule(
    code="GG101",
    kind="host-sync",
    messages=(
        ("default", "{api} on {tensor} {where}"),
        (
            "scalar-argument",
            "{api} takes {key}= as a Python scalar, so the device tensor passed there ({tensor}) is read on the host {where}",
        ),
        (
            "one-hot",
            "{api} without num_classes reads the largest class of {tensor} on the host {where}",
        ),
        (
            "size-argument",
            "{api} needs a host number for a size, bound or scalar, so the device tensor passed there ({tensor}) is read on the host {where}",
        ),
        (
            "histc-range",
            "{api} with min == max reads the smallest and largest value of {tensor} on the host to find its range {where}",
        ),
    ),
    slug="scalar-read",
    title="a device value is read on the host",
    why=(
        "`.item()`, `int()`, `float()` and `complex()` of a device tensor copy the value to the "
        "host and wait for the GPU. A CUDA graph records device work only; the host cannot wait "
        "on work that is being recorded, not run, so the capture is invalidated. "
        "`F.one_hot(t)` without `num_classes` does the same inside torch: it reads "
        "`t.max().item()` to size its output. So does a device tensor passed where torch needs a "
        "number: a slice bound (`x[:n]`), a size (`torch.zeros(n)`, `x.view(n, -1)`, "
        "`x.repeat(n, 1)`), a `k`, a length, an `arange`/`linspace` bound, a padding "
        "(`F.pad(x, (0, n))`), a split size or chunk count, an `F.interpolate` size, a "
        "diagonal offset or a `multinomial` sample count, a 0-dim integer index (`x[n]`, "
        "whatever device `x` is on: a host table indexed by a device step number too), or the "
        "fill value of `masked_fill`, `index_fill` or `torch.full_like`. Shapes, strides and "
        "offsets live on the host, and torch converts such a tensor with `.item()`. "
        "`torch.histc` with "
        "`min == max` (its default, 0 and 0) reads the input's minimum and maximum on the host "
        "to find its range."
    ),
    fix=(
        "Keep the value on the device: use the tensor directly in later ops, validate with "
        "`torch._assert_async(cond)`, or read it after `replay()` outside the captured region. "
        "Give `F.one_hot` its `num_classes` and `torch.histc` its `min` and `max`. For a fill "
        "value on the device, `torch.where(mask, value, x)` or `x.fill_(value)` keep it there; "
        "move a lookup table to the device before capture. Sizes and "
        "slice bounds must be Python ints known "
        "before capture (a graph has fixed shapes): use `x.shape`, a fixed maximum with a mask, "
        "or `torch.narrow`/indexing by a device index tensor (`x.index_select`)."
    ),
    example="loss_value = loss.item()\nscale = float(grad_norm)",
    use_instead="loss_buf.copy_(loss)          # read loss_buf.item() after replay()\n"
    "scale = grad_norm             # keep it a device tensor",
    torch_behaviour=_POISONS
    + " Measured on an H200 (torch 2.11) also for the reads torch makes inside a call: "
    "`x[:n]`, `torch.zeros(n, ...)` and `x.topk(k)` with a device tensor `n`/`k`, `x[n]` "
    "with a 0-dim device index, and `F.one_hot(t)` without `num_classes` "
    "(`F.one_hot(t, num_classes=2)` captures and replays equal to eager), and a device "
    "tensor as an `F.pad` padding, a `split` size or an `F.interpolate` size (torch's "
    "argument parser converts it), a host table indexed by a 0-dim device index "
    "(`handleDimInMultiDimIndexing` reads the index with `.item()`; diffusers' DDIM step does "
    "`alphas_cumprod[timestep]`: the GPU sweep's raw capture of that step fails the same "
    "way), and a device fill value of `masked_fill`/`index_fill` (`value.item()` in C++) or "
    "`torch.full_like` (the argument parser); `x.fill_(device value)` and "
    "`x.masked_fill(mask, torch.tensor(0.5))` (a host value) capture and replay equal to "
    "eager, and are not reported. Chunk counts, `unfold` windows, diagonal offsets, "
    "`linspace`/`logspace`/`eye` numbers and `multinomial` sample counts take the same "
    "parser path and were not measured separately. `torch.multinomial`'s probability "
    "checks, which its CPU run makes with `.item()`, are not made under capture: "
    "`torch.multinomial(p, 1)` and `torch.multinomial(p, 4, replacement=True)` capture on "
    "the H200 and are not reported. `torch.histc` with `min == max` (its CUDA "
    "kernel runs `aminmax()` then `.item()`, `aten/src/ATen/native/cuda/SummaryOps.cu`) "
    'raised "Cannot copy between CPU and CUDA tensors" instead, and the process stayed '
    "usable; `torch.histc(x, 10, -4, 4)` captures and replays equal to eager.",
)
_rule(
    code="GG102",
    kind="host-sync",
    messages=(("default", "{api} on {tensor} {where}"),),
    slug="tensor-truth-value",
    title="Python control flow on a device tensor",
    why=(
        "`if t:`, `assert t`, `while t.any():` and `bool(t)` turn a device value into a Python "
        "bool, which needs the GPU's answer now. During capture nothing has run yet, so the "
        "capture breaks; and even if it did not, a graph can replay only one branch."
    ),
    fix=(
        "Make the choice on the device with `torch.where(cond, a, b)`, validate with "
        "`torch._assert_async(cond)`, or move the decision outside the captured step."
    ),
    example="if (scores < 0).any():\n    scores = scores.clamp(min=0)\nassert torch.all(idx >= 0)",
    use_instead="scores = torch.where(scores < 0, 0, scores)\n"
    "torch._assert_async(torch.all(idx >= 0))",
    torch_behaviour=_POISONS + " `element in t`, `F.gaussian_nll_loss` (its `var >= 0` check) and "
    "`torch.segment_reduce` with device `lengths` (two `.item()` checks of the lengths unless "
    "`unsafe=True`) make the same read inside torch, where graphguard cannot see it; it "
    "reports them at the call. Measured on an H200 (torch 2.11) for all three: the capture is "
    "invalidated and the process is left unusable.",
)
_rule(
    code="GG103",
    kind="host-sync",
    messages=(
        ("default", "{api} on {tensor} {where}"),
        ("to-host", "a blocking copy of {tensor} to the host {where}"),
        ("into-host", "a copy of {tensor} into a host tensor {where}"),
        ("save", "torch.save of {tensor} copies it to the host {where}"),
        (
            "grouped-mm",
            "{api} outside its bf16 fast path copies its group offsets ({tensor}) to the host {where}",
        ),
        ("ctc-loss", "{api} copies its length tensors ({tensor}) to the host {where}"),
        (
            "matrix-exp",
            "{api} copies the 1-norms of {tensor} to the host to choose its approximation {where}",
        ),
    ),
    slug="blocking-host-copy",
    title="a device tensor is copied to the host",
    why=(
        "`.cpu()`, `.to('cpu')`, `.tolist()`, `.numpy()`, `np.asarray(t)`, `torch.save` of a "
        "device tensor and a copy into pageable host memory (`host.copy_(t)`, non-blocking or "
        "not) block until the GPU "
        "has produced the data. Under capture the data does not exist yet. "
        "`torch.nn.functional.grouped_mm`/`torch._grouped_mm` (the grouped GEMM of mixture-of-"
        "experts layers) make the same copy inside: outside its fast path (bfloat16 operands "
        "and output on a compute-capability 9.x or 10.x card) torch runs a loop of GEMMs over "
        "`offs.cpu()`. `F.ctc_loss` on the device copies length tensors on the device to the "
        "host before it starts, and `torch.linalg.matrix_exp` copies each matrix's 1-norm to "
        "the host to choose its Taylor degree."
    ),
    fix=(
        "Copy into a preallocated device buffer inside the step and read it on the host after "
        "`replay()`; or drop the read from the captured step. For `grouped_mm`, run the experts "
        "in bfloat16 on a Hopper or Blackwell card (the fast path reads `offs` on the device), "
        "or use a batched formulation that takes no offsets. Keep `F.ctc_loss` out of the "
        "captured part (capture the model, compute the loss eagerly on its static output)."
    ),
    example="ids = logits.argmax(-1).tolist()",
    use_instead="ids_buf.copy_(logits.argmax(-1))   # static device buffer\n"
    "graph.replay(); ids = ids_buf.tolist()",
    torch_behaviour=(
        'torch raises "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless '
        'the CPU tensor is pinned" without naming a line; the process stays usable. A copy of '
        "zero elements (`torch.tensor([], device='cuda')`, an empty tensor moved either way) "
        "is not reported: torch's copy returns before any transfer when there is nothing to "
        "copy (`aten/src/ATen/native/Copy.cpp`), ahead of that check; measured on an H200 "
        "(torch 2.11): `torch.tensor([], device='cuda')`, an empty host tensor `.to('cuda')` "
        "and an empty device tensor `.cpu()` capture and replay equal to eager. A float32 "
        "`grouped_mm` with device offsets (a transformers Mixtral forward) raised the same "
        "copy error under raw capture on an H200 (torch 2.11, transformers 5.17), as did "
        "`F.ctc_loss` with int64 device lengths and in its cuDNN form (float32, int32 device "
        "targets and lengths), and `torch.linalg.matrix_exp`."
    ),
)
_rule(
    code="GG104",
    kind="host-sync",
    messages=(("default", "{api} on {tensor} formats its values on the host {where}"),),
    slug="tensor-print",
    title="a device tensor is printed or formatted",
    why=(
        "`print(t)`, `str(t)`, `repr(t)` and f-strings of a tensor read its values on the host, "
        "a blocking device-to-host copy that a capture cannot contain."
    ),
    fix="Log shapes and dtypes (`t.shape`, `t.dtype`) inside the step; print values after replay.",
    example='print(f"logits: {logits[:2]}")',
    use_instead='print(f"logits: shape={tuple(logits.shape)} dtype={logits.dtype}")',
    torch_behaviour=_POISONS,
)
_rule(
    code="GG105",
    kind="host-sync",
    messages=(
        ("default", "{api} on {tensor} sizes its output from device data {where}"),
        (
            "bool-mask",
            "boolean-mask indexing of {tensor} sizes its result from device data {where}",
        ),
        (
            "repeats",
            "repeat_interleave with a repeats tensor and no output_size sizes its output from device data {where}",
        ),
        ("where-nonzero", "one-argument torch.where (nonzero) on {tensor} {where}"),
    ),
    slug="data-dependent-shape",
    title="an op whose output shape depends on device data",
    why=(
        "`nonzero`, `argwhere`, `masked_select`, boolean-mask indexing (reads, and writes of a "
        "tensor value), `unique`, "
        "`repeat_interleave` without `output_size`, `bincount` and one-argument `torch.where` "
        "must read device data to size their output. A graph has fixed shapes, and the read "
        "is a host synchronisation. `torch.combinations` makes the same read inside: it picks "
        "its pairs with `masked_select` over a triangular mask."
    ),
    fix=(
        "Keep shapes static: `torch.where(mask, x, fill)` instead of `x[mask]`, "
        "`torch.nonzero_static(x, size=n)`, `repeat_interleave(..., output_size=n)`, or "
        "`masked_fill_` instead of `x[mask] = v`."
    ),
    example="pos = x[x > 0]\nidx = mask.nonzero()",
    use_instead="pos = torch.where(x > 0, x, 0)\n"
    "idx = torch.nonzero_static(mask, size=max_hits, fill_value=-1)",
    torch_behaviour=_POISONS
    + " Measured on an H200 (torch 2.11): `x[mask] = 0.0` (a Python number written through a "
    "boolean mask) is sent to `masked_fill_`, captures and replays equal to eager, and is not "
    "reported, and so do `x[:, mask] = 0.0` and `x[mask] = torch.tensor(0.0)` (a host 0-dim "
    "value); `x[mask] = t` with a device tensor `t`, a 0-dim one included, goes through "
    "`index_put_` and invalidates the capture. `torch.combinations` and `Tensor.to_sparse()` "
    "invalidate it as well.",
)
_rule(
    code="GG106",
    kind="host-sync",
    messages=(
        ("default", "{api} on {tensor} returns a Python bool {where}"),
        (
            "cov",
            "{api} on {tensor} compares its degrees of freedom with torch.equal on the host, to warn when they are <= 0 {where}",
        ),
        (
            "istft",
            "{api} on {tensor} checks on the host that its window's overlap-add envelope is nonzero {where}",
        ),
    ),
    slug="host-comparison",
    title="tensors compared into a Python bool",
    why=(
        "`torch.equal`, `torch.allclose` and `torch.is_nonzero` return a Python bool, so the host "
        "must wait for the device reduction, which a capture cannot do. `torch.cov` and "
        "`torch.corrcoef` (an `equal` on their degrees of freedom) and `torch.istft` (an "
        "`equal` checking its window envelope) do the same inside torch (found with a "
        "dispatch trace)."
    ),
    fix=(
        "Compare on the device (`(a == b).all()`, `torch.isclose(a, b).all()`) and check with "
        "`torch._assert_async`, or compare after replay. For a covariance, compute it on the "
        "device: `xc = x - x.mean(1, keepdim=True); xc @ xc.T / (x.shape[1] - 1)`."
    ),
    example="assert torch.equal(idx, ref_idx)",
    use_instead="torch._assert_async((idx == ref_idx).all())",
    torch_behaviour=_POISONS
    + " Measured on an H200 (torch 2.11) for `torch.cov` and `torch.istft` too.",
)
_rule(
    code="GG107",
    kind="host-sync",
    messages=(
        ("default", "{api} waits for or queries device work {where}"),
        (
            "cross-thread",
            "{api} in thread {thread!r} while thread {capturing_thread!r} captures a CUDA graph in 'global' error mode: this call would invalidate that capture",
        ),
    ),
    slug="explicit-sync",
    title="an explicit device synchronisation",
    why=(
        "`torch.cuda.synchronize()`, `torch.accelerator.synchronize()`, `Stream.synchronize()`, "
        "`Stream.query()`, `Event.synchronize()`, `Event.query()` and `Event.elapsed_time()` "
        "(of `torch.cuda` and of the device-generic `torch.Event`/`torch.Stream`) wait for or ask about "
        "work that, under capture, is recorded and not running."
    ),
    fix="Synchronise outside the captured region: before capture or after `replay()`.",
    example="torch.cuda.synchronize()\nif done_event.query(): ...",
    use_instead="graph.replay()\ntorch.cuda.synchronize()   # outside the captured step",
    torch_behaviour=_POISONS
    + " Measured on an H200 (torch 2.11) for `torch.Event.synchronize()`/`query()`, "
    "`torch.Stream.synchronize()` and `torch.accelerator.synchronize()` too; "
    "`torch.Event.record()` alone is legal.",
)

_LINALG_CHECKED = (
    "`torch.linalg.inv`, `torch.inverse`, `torch.linalg.cholesky`, `torch.linalg.solve`, "
    "`torch.linalg.lu_factor`, `torch.linalg.ldl_factor`, `torch.linalg.tensorinv`, "
    "`torch.linalg.tensorsolve`, `torch.linalg.matrix_power` with a negative exponent, "
    "`torch.lu` without `get_infos=True`, the `_ex` variants called with "
    "`check_errors=True`, and the eigen- and singular-value calls: `torch.linalg.eigh`, "
    "`eigvalsh`, `eig`, `eigvals`, `svd`, `svdvals`, `lstsq`, `pinv`, `matrix_rank`, "
    "`cond`, the nuclear and spectral matrix norms (`ord='nuc'`, `2`, `-2`), "
    "`torch.cholesky` and `torch.cholesky_inverse`"
)
_rule(
    code="GG108",
    kind="host-sync",
    messages=(
        ("default", "{api} reads its solver's error codes on the host {where}"),
        (
            "ldl",
            "{api} leaves the device inside torch's LDL solver, whatever its arguments {where}",
        ),
    ),
    slug="linalg-error-check",
    title="a linear-algebra call that checks its error codes on the host",
    why=(
        f"{_LINALG_CHECKED} run their factorisation on the device and then check the "
        "solver's `info` codes (a singular or non-positive-definite input) with "
        "`info.any().item()`: a device value read on the host, which a capture cannot wait for. "
        "`torch.linalg.ldl_factor_ex` (even with `check_errors=False`) and "
        "`torch.linalg.ldl_solve` break the capture as well, inside the solver itself "
        "(torch's MAGMA path, for one, copies the pivots to the host)."
    ),
    fix=(
        "Call the `_ex` variant (`torch.linalg.inv_ex`, `cholesky_ex`, `solve_ex`, "
        "`lu_factor_ex`), which returns `info` as a device tensor instead of checking it, and "
        "check `info` after `replay()`, or validate it on the device with "
        "`torch._assert_async(info == 0)`. Eigen- and singular-value decompositions and the "
        "LDL calls have no capturable form: keep them out of the captured step (for a "
        "symmetric positive-definite matrix, `cholesky_ex` and `cholesky_solve` capture)."
    ),
    example="L = torch.linalg.cholesky(cov)\nw = torch.linalg.solve(A, b)",
    use_instead="L, info = torch.linalg.cholesky_ex(cov)\n"
    "w, info = torch.linalg.solve_ex(A, b)   # check info after replay()",
    torch_behaviour=(
        "From torch's source (`_linalg_check_errors` in "
        "`aten/src/ATen/native/BatchLinearAlgebra.cpp` reads `infos.any().item<bool>()`); the "
        "functions listed are those whose CPU run calls it (found with a dispatch-mode trace). "
        "Reported upstream for `torch.linalg.solve` (pytorch/pytorch#96632: the capture is "
        "invalidated; PyTorch's maintainers point to `solve_ex`). Measured on an H200 (torch "
        "2.11): `torch.linalg.inv` and `torch.linalg.solve` invalidate the capture "
        "(`cudaErrorStreamCaptureInvalidated`, no line named) and leave the process unusable, "
        "as `.item()` does; `inv_ex` and `cholesky_ex` capture and replay equal to eager. "
        "The eigen- and singular-value calls make the same `_linalg_check_errors` call after "
        "their solver (found by `benchmarks/hidden_syncs.py --opinfo 2 --native`). Measured "
        "on the H200 too: `torch.linalg.eigh` and `torch.linalg.lstsq` poison the process "
        "that way; `torch.linalg.svdvals` and `matrix_norm(ord='nuc')` raise \"Cannot copy "
        'between CPU and CUDA tensors" and the process stays usable. `eigvalsh`, `eig`, '
        "`eigvals`, `svd`, `pinv`, `matrix_rank`, `cond`, `torch.cholesky` and "
        "`cholesky_inverse` share those paths and were not measured separately. "
        "`torch.cholesky_solve` makes the check only on the CPU (it captures and replays equal "
        "to eager on the H200) and is not reported. Measured on the H200 too: "
        "`torch.linalg.ldl_factor_ex` with `check_errors=False`, and `torch.linalg.ldl_solve` "
        "on factors made before the capture, each invalidate the capture and leave the process "
        "unusable."
    ),
)

_rule(
    code="GG109",
    kind="host-sync",
    messages=(
        (
            "left-aligned",
            "{api} reads the padding mask on the host to decide nn.TransformerEncoder's nested-tensor fast path {where}",
        ),
        (
            "from-mask",
            "{api} builds a nested tensor whose sizes come from the padding mask's values {where}",
        ),
    ),
    slug="nested-tensor-fast-path",
    title="nn.TransformerEncoder's nested-tensor fast path",
    why=(
        "In eval mode with a `src_key_padding_mask` and gradients off, `nn.TransformerEncoder` "
        "(with `enable_nested_tensor=True`, its default) checks that the mask is left-aligned "
        "(`torch._nested_tensor_from_mask_left_aligned`, a Python bool) and packs the batch "
        "into a nested tensor sized by each row's unpadded length "
        "(`torch._nested_tensor_from_mask`). Both read the mask on the host; a capture cannot, "
        "and a graph cannot hold shapes that depend on it."
    ),
    fix=(
        "Construct the encoder with `enable_nested_tensor=False` (the padded batch then runs "
        "with the mask as an attention mask, on the device), or keep the padding mask out of "
        "the captured step."
    ),
    example="enc = nn.TransformerEncoder(layer, 6)\nenc.eval()\nout = enc(x, src_key_padding_mask=pad)",
    use_instead="enc = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)",
    torch_behaviour=(
        "From `torch/nn/modules/transformer.py` and a dispatch trace on CPU (both ops run in "
        "the eval forward with a padding mask). Measured on an H200 (torch 2.11): an eval "
        "`nn.TransformerEncoder` with a device padding mask invalidates a raw capture "
        "(`cudaErrorStreamCaptureInvalidated`, no line named) and leaves the process unusable; "
        "with `enable_nested_tensor=False` the same step captures and replays equal to eager."
    ),
)

# --- pinned-alloc ----------------------------------------------------------------------------
_rule(
    code="GG201",
    kind="pinned-alloc",
    messages=(
        ("default", "{api} allocates pinned host memory {where}"),
        (
            "cross-thread",
            "{api} in thread {thread!r} while thread {capturing_thread!r} captures a CUDA graph in 'global' error mode: this call would invalidate that capture",
        ),
    ),
    slug="pinned-allocation",
    title="pinned host memory allocated inside the region",
    why=(
        "`pin_memory=True` factories and `Tensor.pin_memory()` allocate page-locked host memory "
        "with a host-side call that a graph does not record. torch lets it pass silently: the "
        "buffer lives outside the graph's memory pool, and any copy the graph records keeps "
        "pointing at this one allocation."
    ),
    fix="Allocate pinned staging buffers once, before capture, and reuse them.",
    example="staging = torch.empty(n, pin_memory=True)",
    use_instead="staging = torch.empty(n, pin_memory=True)   # before capture\n"
    "with graphguard.capture():\n    out = step(x)",
    torch_behaviour="Silent: capture and replay succeed.",
)
_rule(
    code="GG202",
    kind="pinned-alloc",
    messages=(
        (
            "default",
            "a non-blocking copy of {tensor} to the host allocates a pinned result {where}",
        ),
    ),
    slug="nonblocking-device-to-host",
    title="a non-blocking device-to-host copy allocates a pinned result",
    why=(
        "`t.to('cpu', non_blocking=True)` allocates a fresh pinned host tensor and records an "
        "asynchronous copy into it. The host tensor is only valid after a synchronisation that "
        "the captured step never performs, and the allocation is outside the graph."
    ),
    fix=(
        "Copy into a pinned host buffer allocated before capture "
        "(`host_buf.copy_(t, non_blocking=True)`), and read it after `replay()` and a sync."
    ),
    example="host = logits.to('cpu', non_blocking=True)",
    use_instead="host_buf = torch.empty(shape, pin_memory=True)    # before capture\n"
    "host_buf.copy_(logits, non_blocking=True)        # inside the step",
    torch_behaviour="Silent: capture and replay succeed; the host copy is never synchronised.",
)

# --- stream-escape ---------------------------------------------------------------------------
_rule(
    code="GG301",
    kind="stream-escape",
    messages=(
        (
            "default",
            "{api} on {tensor} was issued on {which} that is not part of the capture; it would run once now and be missing from every replay",
        ),
        (
            "stream-request",
            "{api} requested {where}: work issued on it during a capture is not recorded",
        ),
    ),
    slug="uncaptured-stream",
    title="work issued on a stream that is not being captured",
    why=(
        "A capture records only the capturing stream and streams that waited on it. Work issued "
        "on the default stream, or on a side stream that never waited on the capture stream, "
        "runs eagerly once during capture and is missing from the graph: replays silently skip it."
    ),
    fix=(
        "Stay on the current stream inside the region, or fork a side stream properly: "
        "`side.wait_stream(torch.cuda.current_stream())` before using it and "
        "`torch.cuda.current_stream().wait_stream(side)` before the region ends."
    ),
    example="with torch.cuda.stream(torch.cuda.default_stream()):\n    y = x * 2",
    use_instead="side.wait_stream(torch.cuda.current_stream())\n"
    "with torch.cuda.stream(side):\n    y = x * 2\n"
    "torch.cuda.current_stream().wait_stream(side)",
    torch_behaviour="Silent: the work runs once during capture and is not in the graph.",
)

# --- pageable-copy ---------------------------------------------------------------------------
_rule(
    code="GG401",
    kind="pageable-copy",
    messages=(
        ("default", "a host-to-device copy from pageable memory ({tensor}) {where}"),
        (
            "index-tensor",
            "indexing {tensor} with a host (CPU) index tensor copies it from pageable memory {where}",
        ),
        (
            "index-list",
            "indexing {tensor} with a Python list builds an index tensor from host data and copies it to the device {where}",
        ),
        (
            "setitem-value",
            "assigning a host tensor into {tensor} copies it from pageable memory {where}",
        ),
        (
            "from-data",
            "a device tensor built from host data ({api}) is a pageable host-to-device copy {where}",
        ),
        (
            "index-put-scalar",
            "writing a host number into {tensor} through an index tensor ({api}) copies it from pageable memory {where}",
        ),
        (
            "ctc-loss",
            "{api} on {tensor} copies its lengths and target offsets from pageable host memory {where}",
        ),
    ),
    slug="pageable-host-to-device",
    title="a host-to-device copy from pageable memory",
    why=(
        "A device tensor built from Python data (`torch.tensor([...], device='cuda')`, "
        "`t.new_tensor([...])`), indexing "
        "a device tensor with a Python list or a CPU tensor, and `.to('cuda')`/`.cuda()` of a "
        "pageable CPU tensor all copy from pageable host memory, which CUDA cannot record. "
        "So does `x[idx] = 0.0` with an index tensor `idx`: `index_put_` moves the number, "
        "held in a CPU 0-dim tensor, to the device; only a single boolean mask "
        "(`x[mask] = 0.0`, sent to `masked_fill_`) avoids the copy. `F.ctc_loss` on the device "
        "given its lengths as lists or CPU tensors copies them, and the targets' batch offsets, "
        "to the device the same way (`aten/src/ATen/native/cuda/LossCTC.cu`)."
    ),
    fix=(
        "Create constants on the device before capture and reuse them; index with device "
        "tensors; copy inputs into static device buffers before `replay()`. For an indexed "
        "write of a number, give `index_put_` a device value: "
        "`x.index_put_((idx,), x.new_full((), 0.0))`, or `x.index_fill_(0, idx, 0.0)`."
    ),
    example="x = x + torch.tensor([1.0]).cuda()\nrows = table[[0, 2, 5]]",
    use_instead="one = torch.ones(1, device='cuda')            # before capture\n"
    "rows_idx = torch.tensor([0, 2, 5], device='cuda')  # before capture\n"
    "x = x + one; rows = table[rows_idx]",
    torch_behaviour=(
        'torch raises "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless '
        'the CPU tensor is pinned" without naming a line; the process stays usable. A copy of '
        "zero elements (`torch.tensor([], device='cuda')`, an empty tensor moved either way) "
        "is not reported: torch's copy returns before any transfer when there is nothing to "
        "copy (`aten/src/ATen/native/Copy.cpp`), ahead of that check; measured on an H200 "
        "(torch 2.11): `torch.tensor([], device='cuda')` and an empty host tensor "
        "`.to('cuda')` capture and replay equal to eager. Measured the same day: "
        "`x[idx] = 0.0` and `x[(i, j)] = 1` with device index tensors, "
        "`x.index_put_((idx,), torch.tensor(1.0))` and `F.ctc_loss` with its lengths as "
        "lists or CPU tensors raise the copy error; `x[idx] = x.new_full((), 0.0)`, "
        "`index_put_(..., accumulate=True)` of a device value, `x[:, mask] = 0.0` and "
        "`x[mask] = torch.tensor(0.0)` (one boolean mask, a host 0-dim value) capture and "
        "replay equal to eager. A transformers wav2vec2, HuBERT and Data2VecAudio forward "
        "with a padding mask raised it at `mask[(rows, lengths - 1)] = 1`."
    ),
)

# --- host-buffer-read ------------------------------------------------------------------------
_rule(
    code="GG402",
    kind="host-buffer-read",
    messages=(
        (
            "default",
            "a non-blocking copy from pinned host memory ({tensor}) is recorded and re-read at every replay {where}",
        ),
    ),
    slug="pinned-host-to-device",
    title="a copy from pinned host memory is recorded into the graph",
    why=(
        "A non-blocking copy from a pinned host tensor is recorded as a memcpy from that host "
        "address. Every replay re-reads whatever the host buffer holds at that moment, with no "
        "ordering against host writes: stale or torn inputs, silently."
    ),
    fix=(
        "Copy host inputs into static device buffers before `replay()` (outside the graph). If "
        "re-reading a dedicated pinned input buffer on every replay is intended, allow it at "
        "that call site with `graphguard.allow('GG402')`."
    ),
    example="x_dev = pinned_batch.to('cuda', non_blocking=True)",
    use_instead="static_x.copy_(pinned_batch, non_blocking=True)   # before replay\ngraph.replay()",
    torch_behaviour="Silent: replay re-reads the host buffer, whatever it holds then.",
)

# --- rng-state -------------------------------------------------------------------------------
_rule(
    code="GG501",
    kind="rng-state",
    messages=(("default", "{api} reseeds the generator {where}"),),
    slug="rng-reseed",
    title="the random generator is reseeded inside the region",
    why=(
        "A captured graph uses a seed and a device-side offset registered at capture. Reseeding "
        "inside the region is either refused by torch or baked into the graph, so every replay "
        "would draw the same numbers."
    ),
    fix="Seed once before capture; use `torch.Generator` objects registered with the graph.",
    example="torch.manual_seed(step)",
    use_instead="torch.manual_seed(0)        # once, before capture\n"
    "g = torch.cuda.CUDAGraph(); g.register_generator_state(gen)",
    torch_behaviour=(
        'torch raises "CUDAGeneratorImpl::set_current_seed can be called during stream capture '
        'only if new seed is the same as the original seed"; the process stays usable.'
    ),
)
_rule(
    code="GG502",
    kind="rng-state",
    messages=(("default", "{api} reads or sets generator state {where}"),),
    slug="rng-state-access",
    title="generator state is read or set inside the region",
    why=(
        "`get_rng_state()`/`set_rng_state()` (torch and torch.cuda) read or overwrite the "
        "generator's host-side seed and offset. Under capture the offset advances on the device "
        "at replay, so the host snapshot is meaningless and a restore is baked or refused."
    ),
    fix="Save and restore generator state outside the captured region.",
    example="state = torch.cuda.get_rng_state()\n...\ntorch.cuda.set_rng_state(state)",
    use_instead="state = torch.cuda.get_rng_state()   # before capture or after replay",
    torch_behaviour="Refused or baked, depending on the call; never reported with a line.",
)

# --- replay hazards (graphed steps) ------------------------------------------------------------
_rule(
    code="GG601",
    kind="stale-host-scalar",
    messages=(
        (
            "default",
            "{name} was {captured} when {label!r} was captured and is {current} now; the graph still uses {captured}{more}",
        ),
    ),
    slug="stale-host-scalar",
    title="a Python scalar baked into the graph has changed",
    why=(
        "A Python number consumed by captured work (a learning rate, a temperature, a step "
        "count) is recorded as a constant. Changing it on the host afterwards does not change "
        "the graph: every later replay silently uses the captured value. The same holds for a "
        "tensor hyperparameter of a captured optimizer step (a live `lr`): the graph reads "
        "that tensor, so putting another number or tensor in its place is ignored by every "
        "replay; only an in-place update (`fill_`) reaches the graph."
    ),
    fix=(
        "Keep values that change on the device (`capturable=True` optimizers, a 0-d device "
        "tensor updated with `.fill_()` or `.copy_()` before replay), or re-capture when they "
        "change."
    ),
    example="opt = torch.optim.SGD(params, lr=0.1)\n"
    "step = graphguard.graphed(train_step)\nsched.step()   # lr changes, graph keeps 0.1",
    use_instead="lr = torch.tensor(0.1, device='cuda')\n"
    "opt = torch.optim.Adam(params, lr=lr, capturable=True)",
    torch_behaviour="Silent: replay keeps applying the captured value.",
    detected=(
        "at the next call of a `@graphguard.graphed` step (or `cap.replay()`), before replaying: "
        "the scalars the captured step consumed are compared with their current values"
    ),
)
_rule(
    code="GG602",
    kind="stale-host-scalar",
    messages=(
        (
            "default",
            "{optimizer}.step() runs with capturable=False (param_groups {groups}) {where}: its step count and lr are host scalars",
        ),
    ),
    slug="optimizer-not-capturable",
    title="an optimizer that is not capturable is stepped inside the region",
    why=(
        "A non-capturable `Adam`/`AdamW` (and `NAdam`, `RAdam`, `Adamax`, `ASGD`, `Adadelta`, "
        "`RMSprop`, `Rprop`) keeps `state['step']` and a tensor `lr` on the host and updates "
        "them in Python: a graph would bake the step count, so bias correction and the learning "
        "rate would never change on replay. torch therefore refuses to capture the step."
    ),
    fix=(
        "`graphguard.graph_safe_optimizer(opt)` (on CUDA: `capturable=True` and a live device "
        "`lr`; without CUDA it keeps the program runnable and audited), or create the optimizer "
        "with `capturable=True` and a device tensor `lr`."
    ),
    example="opt = torch.optim.AdamW(model.parameters(), lr=3e-4)\n"
    "step = graphguard.graphed(train_step)   # train_step calls opt.step()",
    use_instead="opt = graphguard.graph_safe_optimizer(torch.optim.AdamW(model.parameters(), lr=3e-4))",
    torch_behaviour=(
        'torch raises "Attempting CUDA graph capture of step() for an instance of AdamW but '
        "param_groups' capturable is False\" from `step()`, naming no line of the user's code."
    ),
    detected=(
        "at `optimizer.step()` inside a capture, or in audit where the region stands for one; "
        "not during a graphed step's eager warm-up. Without CUDA, a group prepared by "
        "`graph_safe_optimizer` counts as capturable (it is on CUDA)"
    ),
)
_rule(
    code="GG701",
    kind="stale-output",
    messages=(
        (
            "default",
            "output {index} of call #{call} of {label!r} was read after call #{overwritten_by} replayed the graph and overwrote it",
        ),
    ),
    slug="stale-output",
    title="a graph output was read after a later replay overwrote it",
    why=(
        "Graph outputs live in the graph's static memory. The next replay writes the same "
        "memory, so a tensor kept from an earlier call now holds the newer call's values."
    ),
    fix=(
        "Clone outputs you keep across calls (`out.clone()`), or ask graphguard for cloned "
        "outputs with `graphed(..., clone_outputs=True)`."
    ),
    example="prev = step(x1)\ncur = step(x2)\nloss = (prev - cur).abs()   # prev was overwritten",
    use_instead="prev = step(x1).clone()\ncur = step(x2)",
    torch_behaviour="Silent: the old tensor holds the newer replay's values.",
    detected=(
        "when an output of a `@graphguard.graphed` step is used after a later call replayed "
        "the graph and overwrote it"
    ),
)


# --- collective (torch.distributed) ------------------------------------------------------------
_COLLECTIVE_DETECTED = (
    "inside a `graphguard.capture()`, `@graphguard.guard` or `@graphguard.graphed` region of a "
    "process that calls torch.distributed, in audit and capture mode alike, before the call "
    "reaches the process group"
)
_rule(
    code="GG801",
    kind="collective",
    messages=(("default", "{api} waits on the host for every rank of the group {where}"),),
    slug="barrier",
    title="a barrier inside the region",
    why=(
        "`dist.barrier()` and `dist.monitored_barrier()` block the calling thread until every "
        "rank arrives: NCCL's barrier synchronizes the device with the host (it waits on the "
        "barrier's work), and `monitored_barrier` is a host-side gloo exchange. A CUDA graph "
        "records device work only, so there is nothing to wait for during capture, and a "
        "replay would not repeat the barrier anyway."
    ),
    fix=(
        "Move the barrier outside the captured step (before capture, or after `replay()`). "
        "To order device work between ranks inside the graph, rely on the collectives "
        "themselves: an `all_reduce` already synchronizes the ranks on the device."
    ),
    example="loss = step(x)\ndist.barrier()",
    use_instead="graph.replay()\ndist.barrier()   # outside the captured step",
    torch_behaviour=(
        "Measured with NCCL on 2 H200s (torch 2.11, NCCL 2.28, "
        "benchmarks/results/dist-gpu-raw-h200x2.md): under plain `torch.cuda.graph` both "
        "ranks fail with `AcceleratorError: operation failed due to a previous error during "
        "capture`, and the processes are poisoned (the next CUDA call fails); torch names no "
        "line. `monitored_barrier` (gloo only) was not measured under capture."
    ),
    detected=_COLLECTIVE_DETECTED,
)
_rule(
    code="GG802",
    kind="collective",
    messages=(("default", "{api} pickles Python objects and moves them through the host {where}"),),
    slug="object-collective",
    title="an object collective inside the region",
    why=(
        "The `*_object*` collectives (`all_gather_object`, `gather_object`, "
        "`broadcast_object_list`, `scatter_object_list`, `send_object_list`, "
        "`recv_object_list`) pickle Python objects into byte tensors, copy them to the "
        "device from pageable memory, exchange their sizes and read the results back on the "
        "host. Every one of those steps needs the device now; none can be recorded."
    ),
    fix=(
        "Exchange Python objects outside the captured step. Inside it, exchange tensors of a "
        "fixed shape with `all_gather_into_tensor`, `broadcast` or `all_reduce`."
    ),
    example="stats = [None] * world\ndist.all_gather_object(stats, {'loss': loss_value})",
    use_instead=(
        "out = torch.empty(world, device='cuda')      # before capture\n"
        "dist.all_gather_into_tensor(out, loss.reshape(1))"
    ),
    torch_behaviour=(
        "Measured with NCCL on 2 H200s (torch 2.11, NCCL 2.28, "
        "benchmarks/results/dist-gpu-raw-h200x2.md), under plain `torch.cuda.graph`: "
        "`all_gather_object` fails on both ranks with `RuntimeError: Cannot copy between CPU "
        "and CUDA tensors during CUDA graph capture unless the CPU tensor is pinned`, naming "
        "no line, and the processes stay usable; `broadcast_object_list` fails that way on "
        "the source rank while the receiving rank fails with `AcceleratorError` and is "
        "poisoned. On CPU with gloo, `broadcast_object_list` ran on one rank while the other "
        "stopped on an earlier hazard, and both ranks died on gloo's timeout; graphguard "
        "reports it on every rank before the exchange starts. The other object collectives "
        "were not measured under capture: they take the same pickling path."
    ),
    detected=_COLLECTIVE_DETECTED,
)
_rule(
    code="GG803",
    kind="collective",
    messages=(
        (
            "gloo",
            "{api} of {tensor} on a process group whose CUDA backend is {backend} {where}",
        ),
        (
            "no-cuda-backend",
            "{api} of {tensor} on a process group with no CUDA backend ({backend}) {where}",
        ),
    ),
    slug="uncapturable-group",
    title="a collective on a group whose backend cannot be captured",
    why=(
        "Only a backend that enqueues its work on a CUDA stream (NCCL) can be recorded into "
        "a CUDA graph. gloo moves CUDA tensors through the host and waits for them, and a "
        "group created for the CPU only has no CUDA backend at all."
    ),
    fix=(
        "Run collectives inside the captured step on an NCCL group (`dist.new_group(ranks, "
        "backend='nccl')`, or `init_process_group('cpu:gloo,cuda:nccl')` for a mixed default "
        "group), and keep gloo groups for work outside the graph."
    ),
    example="cpu_group = dist.new_group(backend='gloo')\ndist.all_reduce(grad, group=cpu_group)",
    use_instead="nccl_group = dist.new_group(backend='nccl')\n"
    "dist.all_reduce(grad, group=nccl_group)",
    torch_behaviour=(
        "Measured on 2 H200s (torch 2.11, benchmarks/results/dist-gpu-raw-h200x2.md): an "
        "`all_reduce` of CUDA tensors on a gloo group under plain `torch.cuda.graph` fails "
        "on both ranks with `AcceleratorError: operation failed due to a previous error "
        "during capture` and poisons the processes; torch names no line. Reported "
        "only for real CUDA tensors: in CPU audit a CPU tensor stands for a device tensor "
        "and the gloo default group stands for NCCL, so a gloo `all_reduce` there is silent."
    ),
    detected=(
        "inside a guarded region, in capture mode (or audit on a machine with CUDA), when a "
        "collective gets CUDA tensors and its group's backend for CUDA is gloo or missing, "
        "before the call reaches the process group"
    ),
)
_rule(
    code="GG804",
    kind="collective",
    messages=(
        ("is-completed", "{api} queries the collective's CUDA event from the host {where}"),
        (
            "timeout",
            "{api} with a timeout polls the collective's completion from the host {where}",
        ),
        (
            "blocking",
            "{api} blocks the host until the collective completes because {env} is set {where}",
        ),
    ),
    slug="work-host-wait",
    title="waiting for a collective's work on the host",
    why=(
        "`Work.is_completed()` asks the device whether the collective has finished (a CUDA "
        "event query), and `Work.wait()` polls the same event on the host when it is given a "
        "timeout or when blocking wait is switched on (`TORCH_NCCL_BLOCKING_WAIT=1`). During "
        "capture the collective has not run, so the host has nothing to wait for. A plain "
        "`Work.wait()` only makes the current stream wait on the collective and is legal."
    ),
    fix=(
        "Call `work.wait()` without a timeout (it orders the streams on the device), and "
        "leave blocking wait off for processes that capture; check completion after "
        "`replay()`, outside the captured step."
    ),
    example="work = dist.all_reduce(t, async_op=True)\nwhile not work.is_completed():\n    pass",
    use_instead="work = dist.all_reduce(t, async_op=True)\nwork.wait()   # a stream wait",
    torch_behaviour=(
        "Measured with NCCL on 2 H200s (torch 2.11, NCCL 2.28, "
        "benchmarks/results/dist-gpu-raw-h200x2.md), under plain `torch.cuda.graph`: "
        "`all_reduce(async_op=True).wait()` is legal (captured, replays correct), and "
        "`is_completed()` fails on both ranks with `AcceleratorError: operation failed due "
        "to a previous error during capture`, poisoning the processes. `wait(timeout=...)` "
        "and blocking wait were not measured under capture: from torch's source, "
        "`WorkNCCL::wait` polls `isCompleted()` (the same CUDA event query) exactly in those "
        "cases."
    ),
    detected=_COLLECTIVE_DETECTED,
)
_rule(
    code="GG805",
    kind="collective",
    messages=(
        (
            "default",
            "{api} {where}, after {iterations} completed iteration(s) of the DDP module: DDP "
            "reads its CUDA timing events on the host during its first 10",
        ),
    ),
    slug="ddp-warm-up",
    title="a DDP step captured before DDP's warm-up is done",
    why=(
        "DDP's logger collects runtime statistics at the start of the forward of iterations 1 "
        "to 10 (and of every 100th): it reads the CUDA timing events of the previous "
        "iteration on the host. In a capture that read has nothing to wait for. PyTorch's "
        "CUDA notes ask for at least 11 eager DDP iterations before capture, DDP constructed "
        "in a side-stream context and `TORCH_NCCL_ASYNC_ERROR_HANDLING=0`; only the "
        "iteration count can be checked here."
    ),
    fix=(
        "Run at least 11 eager iterations of the DDP step (forward and backward, on a side "
        "stream) before capturing it, construct DDP inside `with torch.cuda.stream(s):`, "
        "and set `TORCH_NCCL_ASYNC_ERROR_HANDLING=0` before `init_process_group`."
    ),
    example="model = DDP(net)\nwith graphguard.capture():\n    step(model)   # first iteration",
    use_instead="with torch.cuda.stream(s):\n    model = DDP(net)\n    for _ in range(11):\n"
    "        step(model)\nwith graphguard.capture():\n    step(model)",
    torch_behaviour=(
        "Measured on 2 H200s (torch 2.11, NCCL 2.28, "
        "benchmarks/results/dist-gpu-raw-h200x2.md), under plain `torch.cuda.graph`: a DDP "
        "step (forward, backward, SGD) captured after 3 eager iterations on the default "
        "stream, DDP constructed there, fails on both ranks with `AcceleratorError: "
        "operation failed due to a previous error during capture` and poisons the "
        "processes, naming no line. With the preconditions (DDP constructed on a side "
        "stream, 11 side-stream warm-ups, async error handling off) the same step captures "
        "and its replay equals the eager step exactly. Which precondition each failure "
        "comes from was not measured separately; the iteration rule comes from torch's "
        "source (`Reducer::should_collect_runtime_stats`)."
    ),
    detected=(
        "when a `DistributedDataParallel` module's forward is called inside a region that "
        "captures (or audits for a capture), with gradients enabled and gradient "
        "synchronization on, and DDP's logging data shows fewer than 11 completed iterations; "
        "the 100th-iteration sampling is not checked"
    ),
)


# --- replay verification (graphed(..., verify=N)) ----------------------------------------------
_rule(
    code="GG901",
    kind="replay-mismatch",
    messages=(
        (
            "default",
            "replay {replay} of {label!r} differs from the eager step at {path}: {difference}{more}",
        ),
    ),
    slug="replay-mismatch",
    title="a replay differs from the eager step",
    why=(
        "The graph captured cleanly but replays something other than what the step computes "
        "eagerly from the same state: a value the recording baked in lives where no rule can "
        "see it (a Python int offset inside a cache layer, a length read inside library code), "
        "or a tensor allocated during the capture is kept by a Python object and rewritten by "
        "every replay. Every replay after this one is silently wrong too."
    ),
    fix=(
        "Look at the named tensor and the likely causes in the details. Keep state the step "
        "updates on the device (static caches with a device position tensor, `capturable` "
        "optimizers), allocate buffers before the capture, or leave the step eager. "
        "`graphguard.Verify(exclude=...)` leaves out a tensor whose difference is expected "
        "(for instance one written only by random ops you accept to differ)."
    ),
    example="cache = DynamicCache()          # grows by torch.cat during the capture\n"
    "step = graphguard.graphed(decode, verify=3)",
    use_instead="cache = StaticCache(config=cfg, max_cache_len=256)   # fixed buffers\n"
    "step = graphguard.graphed(decode, verify=3)",
    torch_behaviour="Silent: the replay returns different values from eager, with no error.",
    detected=(
        "only with `graphed(..., verify=N)`: each of the first N replays of a shape class is "
        "followed by an eager run of the step from a snapshot of the state it reads and writes, "
        "and every output and state tensor is compared (docs/verify.md)"
    ),
)


def get_rule(code: str) -> Rule:
    """The rule with ``code`` (case-insensitive); ``KeyError`` naming the known codes if absent."""
    try:
        return RULES[code.upper()]
    except KeyError:
        raise KeyError(f"unknown rule {code!r}; known rules: {', '.join(RULES)}") from None


def iter_rules(kind: str | None = None) -> Iterator[Rule]:
    """Rules in code order, optionally only those of one kind."""
    for code in sorted(RULES):
        rule = RULES[code]
        if kind is None or rule.kind == kind:
            yield rule
