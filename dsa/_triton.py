"""Optional fused Triton scorer for the lightning indexer (CUDA; CPU under the interpreter).

One kernel computes the whole score step

    I[b, t, n] = sum_h w[b, t, h] * relu(q[b, t, h, :] . k[b, n, :]),   -inf where n >= limit[b, t]

without materialising the float32 [B*T, H, L] logits of the pure-PyTorch path. The grid is
(B*T, cdiv(L, BLOCK_L * ITERS)): each program loads q[b, t] ([H, D], 16 KB at H=64 D=128 in
bf16) and w[b, t] once, then for each of its ITERS key blocks loads K [BLOCK_L, D], computes
K @ q^T -> [BLOCK_L, H] in float32 on the tensor cores, applies relu, weights the heads and sums
them (a reduction inside each warp), writes -inf past the token's visible limit and stores
[BLOCK_L] float32 scores. Keys at or past the limit are never read from memory. With fp8
(e4m3) keys the kernel reads D bytes plus one float32 scale per key, quantises q to e4m3 in
registers (a power-of-two scale per head, folded into w: ``dsa._fp8.quantize_queries_fp8``),
runs q . k on the fp8 tensor cores and multiplies each key's score by its scale.

The launch configuration comes from a fixed heuristic (``default_config``), never from
benchmarking at run time: the first call compiles the kernel (do it eagerly, as the usual
warm-up before CUDA-graph capture does) and every later call, captured or not, is one launch.

Triton is imported lazily, so ``import dsa`` works without it. ``DSA_DISABLE_TRITON=1`` turns
the fast path off (``triton_available`` then returns False and the "auto" backend uses PyTorch).
"""

# No `from __future__ import annotations` here: Triton reads the kernel's annotations
# (tl.constexpr) as objects.
import contextlib
import functools
import os
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "CONFIGS",
    "ScorerConfig",
    "default_config",
    "fused_scores",
    "interpreting",
    "triton_available",
    "unsupported_reason",
]

DISABLE_ENV = "DSA_DISABLE_TRITON"
_INPUT_DTYPES = (torch.bfloat16, torch.float16)
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HEADS_RANGE = (16, 128)
_DIM_RANGE = (16, 256)
# Grid axis 1 is cdiv(L, BLOCK_L * ITERS) <= 65535 for every config at this width.
_MAX_LENGTH = 1 << 22


class ScorerConfig(NamedTuple):
    """Launch configuration: keys per block, blocks per program, warps, pipeline stages, and
    programs per SM (0: one program per ``iters`` blocks of one row; n > 0: a persistent grid of
    n programs per SM, each scoring one contiguous run of the (row, block) pairs, ``iters``
    unused)."""

    block_l: int
    iters: int
    num_warps: int
    num_stages: int
    programs_per_sm: int = 0

    @property
    def name(self) -> str:
        if self.programs_per_sm:
            return (
                f"L{self.block_l}-w{self.num_warps}-s{self.num_stages}"
                f"-persistent{self.programs_per_sm}"
            )
        return f"L{self.block_l}x{self.iters}-w{self.num_warps}-s{self.num_stages}"


CONFIGS: tuple[ScorerConfig, ...] = (
    ScorerConfig(64, 1, 4, 1),
    ScorerConfig(128, 1, 4, 1),
    ScorerConfig(128, 1, 8, 1),
    ScorerConfig(256, 1, 8, 1),
    ScorerConfig(128, 4, 4, 3),
    ScorerConfig(64, 8, 4, 4),
    ScorerConfig(128, 8, 4, 3),
    ScorerConfig(256, 8, 8, 3),
    ScorerConfig(128, 1, 4, 4, programs_per_sm=2),
)

# Bound by _load(): triton.language and the jitted helpers. The kernel body resolves names
# through module globals, so they live here rather than in _load's closure.
tl: Any = None
_query_operands: Any = None
_row_limit: Any = None
_score_block: Any = None


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    """None when triton imports; otherwise why it does not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import triton
            import triton.language  # noqa: F401
    except Exception as exc:  # a broken install is as good as a missing one here
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def _power_of_two_in(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1] and value & (value - 1) == 0


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors, in NumPy."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _on_kernel_device(*tensors: Tensor) -> bool:
    """CUDA tensors; or CPU tensors while the Triton interpreter is on (tests of the kernels)."""
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)


def unsupported_reason(
    q: Tensor, k: Tensor, w: Tensor, k_scale: Tensor | None = None
) -> str | None:
    """Why the fused scorer cannot take these inputs, or None when it can.

    Needs: triton importable and not disabled by ``DSA_DISABLE_TRITON``; CUDA tensors (or CPU
    ones with ``TRITON_INTERPRET=1``); q in bf16 or fp16; k in q's dtype, or float8_e4m3fn
    with float32 ``k_scale`` [B, L]; w in fp32, bf16 or fp16; q [B, T, H, D], k [B, L, D],
    w [B, T, H] with H a power of two in [16, 128] and D a power of two in [16, 256];
    L < 2**22; no autograd (no input requires grad while grad mode is on).
    """
    if _disabled():
        return f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV)!r}"
    tensors = (q, k, w) if k_scale is None else (q, k, w, k_scale)
    if not _on_kernel_device(*tensors):
        devices = ", ".join(str(t.device) for t in tensors)
        return f"the fused scorer needs CUDA tensors (got {devices})"
    if q.dim() != 4 or k.dim() != 3 or w.dim() != 3:
        return "q must be [B, T, H, D], k [B, L, D] and w [B, T, H]"
    if q.dtype not in _INPUT_DTYPES:
        return f"q must be bfloat16 or float16 (got {q.dtype})"
    if k.dtype == torch.float8_e4m3fn:
        if k_scale is None or k_scale.dtype != torch.float32:
            return "fp8 keys need float32 per-key scales (k_scale)"
        if tuple(k_scale.shape) != tuple(k.shape[:2]):
            return f"k_scale must be [B, L] = {tuple(k.shape[:2])} (got {tuple(k_scale.shape)})"
    elif k.dtype != q.dtype or k_scale is not None:
        return f"k must be {q.dtype}, or float8_e4m3fn with k_scale (got {k.dtype})"
    if w.dtype not in _WEIGHT_DTYPES:
        return f"w must be float32, bfloat16 or float16 (got {w.dtype})"
    heads, dim = q.shape[2], q.shape[3]
    if not _power_of_two_in(heads, _HEADS_RANGE):
        return f"H must be a power of two in {list(_HEADS_RANGE)} (got {heads})"
    if not _power_of_two_in(dim, _DIM_RANGE):
        return f"D must be a power of two in {list(_DIM_RANGE)} (got {dim})"
    if k.shape[1] >= _MAX_LENGTH:
        return f"L must be below {_MAX_LENGTH} (got {k.shape[1]})"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "the fused scorer has no autograd formula; inputs require grad"
    error = _import_error()
    if error is not None:
        return error
    return None


def triton_available(
    q: Tensor | None = None,
    k: Tensor | None = None,
    w: Tensor | None = None,
    k_scale: Tensor | None = None,
) -> bool:
    """True when the fused scorer can run: on these inputs if given, else on this machine."""
    if q is not None and k is not None and w is not None:
        return unsupported_reason(q, k, w, k_scale) is None
    if _disabled() or not torch.cuda.is_available():
        return False
    return _import_error() is None


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _program_slots(device: torch.device | None) -> int:
    """The SM count of a CUDA device (None: the current one); 3 for the interpreter's CPU
    tensors (so that tests of the persistent grid see programs that share rows and rows split
    between programs)."""
    if device is not None and device.type != "cuda":
        return 3
    return _sm_count(
        torch.cuda.current_device() if device is None or device.index is None else device.index
    )


def default_config(
    rows: int, length: int, device: torch.device | None = None, *, fp8: bool = False
) -> ScorerConfig:
    """The launch configuration used when none is given; depends only on shapes and the GPU.

    Small problems (fewer than two 128-key blocks per SM) take one 64-key block per program,
    for the most programs in flight. Larger bf16 problems take four 128-key blocks per program
    with a 3-stage load pipeline; larger fp8 problems the persistent grid: two programs per SM,
    each streaming one contiguous run of (row, 128-key block) pairs through a 4-stage
    pipeline. On an H200 (``benchmarks/dsa_speed.py --triton-sweep``, H=64, D=128, decode;
    ``benchmarks/results/dsa_speed-h200.md``) these were the fastest of ``CONFIGS`` or within
    10% of it (at most 1.6 µs) at B in {1, 64} x L in {4096, 65536}. With fp8 keys the
    persistent grid was the fastest at B=64: L=65536 151.1 against 161.6 µs for the best block
    grid (256-key blocks, eight per program), L=16384 48.9 against 50.9
    (``benchmarks/results/gpu-tests-h200-seventh.txt``); in the sweep also at B=64, L=4096
    (19.9 against 20.9), and at B=1, L=65536 within 0.6 µs of the fastest (10.5 against 14.8
    µs for eight 128-key blocks per program, the default there before). On bf16 keys it is not
    faster than the block grid (271.8 against 267.4 µs at B=64, L=65536), so bf16 keeps its
    default.
    """
    if not torch.cuda.is_available():  # the Triton interpreter on CPU: any config runs
        return CONFIGS[0]
    blocks_128 = rows * -(-length // 128)
    if blocks_128 < 2 * _program_slots(device):
        return CONFIGS[0]
    return CONFIGS[8] if fp8 else CONFIGS[4]


@functools.lru_cache(maxsize=1)
def _load() -> Any:
    """Import triton and define the kernel (once); return the JIT function."""
    global tl, _query_operands, _row_limit, _score_block
    import triton
    import triton.language as language

    tl = language

    @triton.jit
    def query_operands(q_ptr, w_ptr, row64, H: tl.constexpr, D: tl.constexpr, FP8: tl.constexpr):
        # q[row] transposed ([D, H], the dot's right operand) and w[row] in float32.
        offs_h = tl.arange(0, H)
        offs_d = tl.arange(0, D)
        q = tl.load(q_ptr + row64 * (H * D) + offs_h[:, None] * D + offs_d[None, :])  # [H, D]
        w = tl.load(w_ptr + row64 * H + offs_h).to(tl.float32)  # [H]
        if FP8:
            # fp8 queries (dsa._fp8.quantize_queries_fp8, bit for bit): per head the smallest
            # power-of-two scale with max |q| / scale <= 448, from the float32 bits of the max;
            # the scale joins the head weight, the scaled values round to e4m3.
            wide = q.to(tl.float32)
            bits = tl.max(tl.abs(wide), axis=1).to(tl.int32, bitcast=True)  # [H]
            exponent = ((bits >> 23) & 0xFF) - 8 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
            exponent = tl.minimum(tl.maximum(exponent, 1), 253)
            w = w * (exponent << 23).to(tl.float32, bitcast=True)
            inverse = ((254 - exponent) << 23).to(tl.float32, bitcast=True)
            scaled = wide * inverse[:, None]
            # round to e4m3, ties to even, as dsa._fp8.round_to_e4m3; the cast is then exact
            bits = scaled.to(tl.int32, bitcast=True)
            normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
            subnormal = (scaled + 24576.0) - 24576.0
            q = tl.where(tl.abs(scaled) >= 0.015625, normal, subnormal).to(tl.float8e4nv)
        return tl.trans(q), w

    @triton.jit
    def row_limit(limit_ptr, row, tokens, length, stride_limit_b, stride_limit_t, HAS_LIMIT):
        # The token's visible limit in [0, length] and its batch index.
        b = row // tokens
        if HAS_LIMIT:
            t = row - b * tokens
            lim = tl.load(
                limit_ptr + b.to(tl.int64) * stride_limit_b + t.to(tl.int64) * stride_limit_t
            )
            lim = tl.minimum(tl.maximum(lim, 0), length).to(tl.int32)
        else:
            lim = length
        return lim, b.to(tl.int64)

    @triton.jit
    def score_block(
        k_row, scale_row, out_row, q_t, w, offs_l, lim, length, D: tl.constexpr, FP8: tl.constexpr
    ):
        # Scores of the keys offs_l of one row: keys at or past lim are not read and score -inf.
        offs_d = tl.arange(0, D)
        visible = offs_l < lim
        keys = tl.load(
            k_row + offs_l[:, None] * D + offs_d[None, :], mask=visible[:, None], other=0.0
        )  # [BLOCK_L, D]
        logits = tl.dot(keys, q_t)  # [BLOCK_L, H], float32 accumulation (fp8 x fp8 too)
        logits = tl.maximum(logits, 0.0)
        scores = tl.sum(logits * w[None, :], axis=1)  # [BLOCK_L]
        if FP8:
            scores = scores * tl.load(scale_row + offs_l, mask=visible, other=0.0)
        scores = tl.where(visible, scores, float("-inf"))
        tl.store(out_row + offs_l, scores, mask=offs_l < length)

    _query_operands, _row_limit, _score_block = query_operands, row_limit, score_block

    @triton.jit
    def _fused_scores_kernel(
        q_ptr,
        k_ptr,
        w_ptr,
        limit_ptr,
        out_ptr,
        scale_ptr,
        rows,
        tokens,
        length,
        stride_kb,
        stride_scale_b,
        stride_limit_b,
        stride_limit_t,
        H: tl.constexpr,
        D: tl.constexpr,
        BLOCK_L: tl.constexpr,
        ITERS: tl.constexpr,
        HAS_LIMIT: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        PERSISTENT: tl.constexpr,
        STAGES: tl.constexpr,
    ):
        if PERSISTENT:
            # One contiguous run of the (row, block) pairs per program, at most a few rows:
            # the key loads of a row stream through one pipelined loop.
            blocks = tl.cdiv(length, BLOCK_L)
            total = rows * blocks
            per = tl.cdiv(total, tl.num_programs(0))
            start = tl.program_id(0) * per
            end = tl.minimum(start + per, total)
            first_row = start // blocks
            for r in range(0, (end - 1) // blocks + 1 - first_row):
                row = first_row + r
                row64 = row.to(tl.int64)
                lim, b64 = _row_limit(
                    limit_ptr, row, tokens, length, stride_limit_b, stride_limit_t, HAS_LIMIT
                )
                q_t, w = _query_operands(q_ptr, w_ptr, row64, H, D, HAS_SCALE)
                k_row = k_ptr + b64 * stride_kb
                scale_row = scale_ptr + b64 * stride_scale_b
                out_row = out_ptr + row64 * length
                b0 = tl.maximum(start - row * blocks, 0)
                b1 = tl.minimum(end - row * blocks, blocks)
                for block in tl.range(b0, b1, num_stages=STAGES):
                    offs_l = block * BLOCK_L + tl.arange(0, BLOCK_L)
                    _score_block(
                        k_row, scale_row, out_row, q_t, w, offs_l, lim, length, D, HAS_SCALE
                    )
        else:
            row = tl.program_id(0)  # b * T + t
            chunk = tl.program_id(1)
            row64 = row.to(tl.int64)
            lim, b64 = _row_limit(
                limit_ptr, row, tokens, length, stride_limit_b, stride_limit_t, HAS_LIMIT
            )
            q_t, w = _query_operands(q_ptr, w_ptr, row64, H, D, HAS_SCALE)
            k_row = k_ptr + b64 * stride_kb
            scale_row = scale_ptr + b64 * stride_scale_b
            out_row = out_ptr + row64 * length
            for i in range(ITERS):
                offs_l = (chunk * ITERS + i) * BLOCK_L + tl.arange(0, BLOCK_L)
                _score_block(k_row, scale_row, out_row, q_t, w, offs_l, lim, length, D, HAS_SCALE)

    return _fused_scores_kernel


def fused_scores(
    q: Tensor,
    k: Tensor,
    w: Tensor,
    limit: Tensor | None = None,
    *,
    config: ScorerConfig | None = None,
    k_scale: Tensor | None = None,
) -> Tensor:
    """Float32 index scores [B, T, L] from one fused Triton kernel.

    Args:
        q: [B, T, H, D] bf16/fp16 CUDA tensor. k: [B, L, D], same dtype. w: [B, T, H].
        limit: integer tensor on q's device, [B * T] or anything broadcastable to [B, T]: key
            n is visible to token t of row b iff n < limit[b, t] (values are clamped to
            [0, L] inside the kernel). None: every key is visible.
        config: launch configuration; ``default_config`` when None.
        k_scale: float32 [B, L] per-key scales, required when k is float8_e4m3fn: the kernel
            reads D + 4 bytes per key and multiplies each key's score by its scale.

    Non-contiguous inputs are copied to contiguous ones first. Raises ValueError when
    ``unsupported_reason`` names a reason.
    """
    reason = unsupported_reason(q, k, w, k_scale)
    if reason is not None:
        raise ValueError(f"fused_scores cannot run on these inputs: {reason}")
    batch, tokens, heads, dim = q.shape
    length = k.shape[1]
    if k.shape[0] != batch or k.shape[2] != dim or tuple(w.shape) != (batch, tokens, heads):
        raise ValueError(
            f"shapes do not agree: q {tuple(q.shape)}, k {tuple(k.shape)}, w {tuple(w.shape)}"
        )
    q, k, w = q.contiguous(), k.contiguous(), w.contiguous()
    scale_arg = k_scale.contiguous() if k_scale is not None else w
    out = torch.empty(batch, tokens, length, dtype=torch.float32, device=q.device)
    rows = batch * tokens
    if rows == 0 or length == 0:
        return out

    if limit is None:
        limit_arg, stride_b, stride_t, has_limit = out, 0, 0, False
    else:
        if limit.device != q.device or limit.is_floating_point() or limit.is_complex():
            raise TypeError(f"limit must be an integer tensor on {q.device}")
        if limit.dtype == torch.bool:
            raise TypeError("limit must be an integer tensor, not bool")
        if limit.dtype not in (torch.int32, torch.int64):
            limit = limit.to(torch.int32)
        if limit.dim() == 1 and limit.numel() == rows:
            limit = limit.view(batch, tokens)
        limit_arg = limit.expand(batch, tokens)
        stride_b, stride_t, has_limit = limit_arg.stride(0), limit_arg.stride(1), True

    cfg = (
        config
        if config is not None
        else default_config(rows, length, q.device, fp8=k_scale is not None)
    )
    kernel = _load()
    if cfg.programs_per_sm:
        blocks = rows * -(-length // cfg.block_l)
        grid: tuple[int, ...] = (min(blocks, _program_slots(q.device) * cfg.programs_per_sm),)
        # The pipeline depth is the key loop's (STAGES); the launch keeps Triton's default.
        launch: dict[str, int] = {"num_warps": cfg.num_warps}
    else:
        grid = (rows, -(-length // (cfg.block_l * cfg.iters)))
        launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        kernel[grid](
            q,
            k,
            w,
            limit_arg,
            out,
            scale_arg,
            rows,
            tokens,
            length,
            k.stride(0),
            scale_arg.stride(0) if k_scale is not None else 0,
            stride_b,
            stride_t,
            H=heads,
            D=dim,
            BLOCK_L=cfg.block_l,
            ITERS=cfg.iters,
            HAS_LIMIT=has_limit,
            HAS_SCALE=k_scale is not None,
            PERSISTENT=cfg.programs_per_sm > 0,
            STAGES=cfg.num_stages,
            **launch,
        )
    return out
