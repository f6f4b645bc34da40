"""Which torch calls read a device value on the host inside torch, and does audit report them.

A call like ``torch.linalg.inv(A)`` or ``F.one_hot(t)`` looks like one device op from Python, but
torch's composite implementation may end in an op that reads a value back to the host
(``aten::_local_scalar_dense``, what ``.item()`` runs), sizes its output from the data
(``nonzero``, ``unique``, ``masked_select``, ``bincount``), compares into a Python bool
(``equal``, ``is_nonzero``) or checks solver error codes (``_linalg_check_errors``, which reads
``info.any().item()``). On a GPU each of those waits for the device, which a capture cannot do.

This script runs a catalogue of calls on CPU under a torch dispatch mode that records the aten
ops torch's composites decompose into, and the same call under ``graphguard.capture(mode=
"audit")``. A call whose trace holds a host-reading op while audit stays silent is a candidate
rule, to be confirmed under a real capture on the GPU (``test_differential_cuda.py``).

    python benchmarks/hidden_syncs.py [--out FILE]
    python benchmarks/hidden_syncs.py --opinfo 2 [--out FILE]   # torch's OpInfo samples

``--opinfo N`` replaces the catalogue with the first N samples of every OpInfo in torch's test
suite (``torch.testing._internal``; it needs the ``expecttest`` package) and lists only the
calls where the trace and audit disagree.

Limits: only what reaches the Python dispatcher is seen. A read inside a backend kernel (a CUDA
kernel that copies a length back; CPU-only checks such as ``one_hot``'s ``min() >= 0``, which
CUDA skips) is not, and a CPU trace can differ from the CUDA path where torch branches on the
device.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: aten ops that read device data on the host (or size an output from it).
HOST_READS = {
    "_nested_tensor_from_mask",
    "_nested_tensor_from_mask_left_aligned",
    "_local_scalar_dense",
    "_linalg_check_errors",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "equal",
    "is_nonzero",
    "repeat_interleave",
    "_assert_async",  # a device-side check, listed to show it is not a host read
}
LEGAL_READS = {"_assert_async"}
#: Reads a CPU trace shows that torch's CUDA path skips (it branches on the device).
CPU_ONLY = {
    "F.one_hot(t, num_classes)": "CPU-only: on CUDA torch skips its min/max checks and relies "
    "on a device assert",
}


def catalogue() -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g) + 4 * torch.eye(4)
    S = A @ A.T
    B = torch.randn(4, 2, generator=g)
    x = torch.randn(16, generator=g)
    i = torch.randint(0, 4, (8,), generator=g)
    # Every input exists before the call: audit takes such tensors for device tensors.
    repeats = torch.tensor([1, 2])
    bmask = torch.tensor([True, False, True, False])
    logp = torch.randn(8, 1, 5, generator=g).log_softmax(2)
    targets, in_lens, tgt_lens = torch.tensor([[1, 2]]), torch.tensor([8]), torch.tensor([2])
    offsets = torch.tensor([0, 4])
    table = torch.randn(4, 3, generator=g)
    q = torch.randn(1, 2, 4, 8, generator=g)
    img, grid = torch.randn(1, 1, 4, 4, generator=g), torch.rand(1, 2, 2, 2, generator=g) * 2 - 1
    logits = torch.randn(8, 4, generator=g)
    param = torch.nn.Parameter(torch.randn(3, generator=g))
    param.grad = torch.randn(3, generator=g)
    zeros = torch.zeros(4)
    n = torch.tensor(4)
    window = torch.hann_window(32)
    spec = torch.stft(torch.randn(256, generator=g), 32, window=window, return_complex=True)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    encoder = torch.nn.TransformerEncoder(layer, 2).eval().requires_grad_(False)
    seq = torch.randn(4, 8, 16, generator=g)
    pad = torch.zeros(4, 8, dtype=torch.bool)
    pad[1, 6:] = True
    L = torch.linalg
    return {
        "torch.linalg.inv": lambda: L.inv(A),
        "torch.linalg.inv_ex": lambda: L.inv_ex(A),
        "torch.linalg.cholesky": lambda: L.cholesky(S),
        "torch.linalg.cholesky_ex": lambda: L.cholesky_ex(S),
        "torch.linalg.solve": lambda: L.solve(A, B),
        "torch.linalg.solve_ex": lambda: L.solve_ex(A, B),
        "torch.linalg.lu_factor": lambda: L.lu_factor(A),
        "torch.linalg.lu_factor_ex": lambda: L.lu_factor_ex(A),
        "torch.linalg.ldl_factor": lambda: L.ldl_factor(S),
        "torch.linalg.tensorinv": lambda: L.tensorinv(A, 1),
        "torch.linalg.tensorsolve": lambda: L.tensorsolve(A, B[:, 0]),
        "torch.linalg.matrix_power(A, -1)": lambda: L.matrix_power(A, -1),
        "torch.linalg.det": lambda: L.det(A),
        "torch.linalg.slogdet": lambda: L.slogdet(A),
        "torch.linalg.eigh": lambda: L.eigh(S),
        "torch.linalg.svd": lambda: L.svd(A),
        "torch.linalg.qr": lambda: L.qr(A),
        "torch.linalg.pinv": lambda: L.pinv(A),
        "torch.linalg.lstsq": lambda: L.lstsq(A, B),
        "torch.linalg.matrix_rank": lambda: L.matrix_rank(A),
        "torch.linalg.solve_triangular": lambda: L.solve_triangular(torch.triu(A), B, upper=True),
        "torch.cholesky_solve": lambda: torch.cholesky_solve(B, L.cholesky_ex(S)[0]),
        "F.one_hot(t)": lambda: F.one_hot(i),
        "F.one_hot(t, num_classes)": lambda: F.one_hot(i, 4),
        "torch.cov": lambda: torch.cov(A),
        "torch.corrcoef": lambda: torch.corrcoef(A),
        "torch.where(cond)": lambda: torch.where(x > 0),
        "torch.unique_consecutive": lambda: torch.unique_consecutive(i),
        "torch.bincount": lambda: torch.bincount(i),
        "torch.repeat_interleave(t)": lambda: torch.repeat_interleave(repeats),
        "Tensor.repeat_interleave(int)": lambda: x.repeat_interleave(2),
        "torch.multinomial": lambda: torch.multinomial(x.softmax(0), 2, generator=g),
        "torch.histc": lambda: torch.histc(x, 4),
        "torch.isin": lambda: torch.isin(i, i[:3]),
        "torch.kthvalue": lambda: x.kthvalue(3),
        "torch.median": lambda: x.median(),
        "torch.quantile": lambda: torch.quantile(x, 0.5),
        "torch.count_nonzero": lambda: torch.count_nonzero(x),
        "torch.nonzero_static": lambda: torch.nonzero_static(i, size=4),
        "F.cross_entropy": lambda: F.cross_entropy(logits, i),
        "F.nll_loss": lambda: F.nll_loss(logits, i),
        "F.embedding(max_norm)": lambda: F.embedding(i, table, max_norm=1.0),
        "F.embedding_bag": lambda: F.embedding_bag(i, table, offsets),
        "F.ctc_loss": lambda: F.ctc_loss(logp, targets, in_lens, tgt_lens),
        "F.scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(q, q, q),
        "F.interpolate": lambda: F.interpolate(x.view(1, 1, 16), scale_factor=2),
        "F.grid_sample": lambda: F.grid_sample(img, grid, align_corners=False),
        "torch.nn.utils.clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_([param], 1.0),
        "Tensor.masked_scatter": lambda: zeros.masked_scatter(bmask, x[:4]),
        "torch._assert_async": lambda: torch._assert_async((x == x).all()),
        "torch.istft": lambda: torch.istft(spec, 32, window=window),
        "nn.TransformerEncoder (eval, padding mask)": lambda: encoder(
            seq, src_key_padding_mask=pad
        ),
        "x[:n], n a 0-dim tensor": lambda: x[:n],
        "torch.zeros(n)": lambda: torch.zeros(n),
        "x.view(n, -1)": lambda: x.view(n, -1),
        "x.topk(n)": lambda: x.topk(n),
        "torch.arange(n)": lambda: torch.arange(n),
        "x[n], n a 0-dim integer tensor": lambda: x[n],
    }


def trace(fn: Callable[[], Any]) -> list[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            name = func.overloadpacket.__name__
            if name in HOST_READS and name not in seen:
                seen.append(name)
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def trace_native(fn: Callable[[], Any]) -> list[str]:
    """Like ``trace``, but through torch's profiler, which also records the ops a native
    kernel calls inside itself (``multinomial``'s ``.item()``): more reads, and more of them
    CPU-only checks that a CUDA kernel does not make."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    seen: list[str] = []
    for event in prof.events():
        name = event.name.removeprefix("aten::")
        if name in HOST_READS and name not in seen:
            seen.append(name)
    return seen


def audit(fn: Callable[[], Any]) -> str:
    import graphguard

    try:
        with graphguard.capture(mode="audit", on_hazard="warn") as cap:
            fn()
    except Exception as e:  # pragma: no cover - reported in the table
        return f"error: {type(e).__name__}"
    return ", ".join(dict.fromkeys(d.code for d in cap.hazards)) or "silent"


def opinfo_rows(samples_per_op: int, native: bool = False) -> tuple[list[str], dict[str, int]]:
    """Every OpInfo of torch's test suite (float32 where supported, its first samples): the
    host-reading ops of its CPU trace against audit's verdict; only disagreements are listed."""
    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    counts = {"ops": 0, "samples": 0, "agree": 0, "missed": 0, "extra": 0, "errors": 0}
    rows = []
    for op in op_db:
        dtypes = op.supported_dtypes("cpu")
        dtype = next((d for d in (torch.float32, torch.int64, torch.bool) if d in dtypes), None)
        if dtype is None:
            continue
        try:
            samples = list(op.sample_inputs("cpu", dtype, requires_grad=False))[:samples_per_op]
        except Exception:
            counts["errors"] += 1
            continue
        counts["ops"] += 1
        for i, sample in enumerate(samples):

            def call(op: Any = op, sample: Any = sample) -> Any:
                return op(sample.input, *sample.args, **sample.kwargs)

            try:
                reads = [r for r in (trace_native if native else trace)(call)]
                reads = [r for r in reads if r not in LEGAL_READS]
            except Exception:
                counts["errors"] += 1
                continue
            counts["samples"] += 1
            verdict = audit(call)
            if verdict.startswith("error"):
                counts["errors"] += 1
                continue
            name = f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}[{i}]"
            if reads and verdict == "silent":
                counts["missed"] += 1
                rows.append(f"| `{name}` | {', '.join(reads)} | silent | **missed** |")
            elif not reads and verdict != "silent":
                counts["extra"] += 1
                rows.append(f"| `{name}` | - | {verdict} | reported without a traced read |")
            else:
                counts["agree"] += 1
    return rows, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--opinfo",
        type=int,
        default=0,
        metavar="N",
        help="instead of the catalogue, the first N samples of every OpInfo in torch's test "
        "suite (needs the expecttest package); lists only the disagreements",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --opinfo: trace through torch's profiler, which also sees the reads native "
        "kernels make inside themselves",
    )
    args = parser.parse_args()
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # audit on CPU tensors standing for device tensors
    warnings.simplefilter("ignore")
    import structlog
    import torch

    import graphguard

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    if args.opinfo:
        rows, counts = opinfo_rows(args.opinfo, args.native)
        summary = ", ".join(f"{k} {v}" for k, v in counts.items())
        text = "\n".join(
            [
                "# Host reads in torch's OpInfo samples (CPU dispatch trace) vs graphguard audit",
                "",
                f"- torch {torch.__version__}, graphguard {graphguard.__version__}, "
                f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                f"- command: `python benchmarks/hidden_syncs.py --opinfo {args.opinfo}"
                f"{' --native' if args.native else ''}`",
                f"- {summary}",
                "",
                "| op[sample] | host-reading aten ops in its trace | audit | |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
            ]
        )
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0
    rows = []
    for name, fn in catalogue().items():
        reads = [r for r in trace(fn) if r not in LEGAL_READS]
        verdict = audit(fn)
        if name in CPU_ONLY:
            status = CPU_ONLY[name]
        elif reads and verdict == "silent":
            status = "**missed**"
        elif not reads and verdict != "silent":
            status = "reported (a read this trace cannot see, or a rule of its own)"
        else:
            status = ""
        rows.append(f"| `{name}` | {', '.join(reads) or '-'} | {verdict} | {status} |")
    lines = [
        "# Host reads inside torch calls (CPU dispatch trace) vs graphguard audit",
        "",
        f"- torch {torch.__version__}, graphguard {graphguard.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- command: `python benchmarks/hidden_syncs.py`",
        "",
        "| call | host-reading aten ops in its trace | audit | |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        "A host-reading op in the trace means the GPU run waits for the device there; "
        '"missed" marks a call audit does not report. Reads inside backend kernels are not '
        "seen (see the script's docstring).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
