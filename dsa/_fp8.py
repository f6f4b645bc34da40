"""fp8 (e4m3) index keys with one float32 scale per key: 132 bytes per key at D=128.

The published DSA design stores the indexer's key cache in fp8 with a scale per 128 values; with
D=128 that is one scale per key, so a key costs D + 4 bytes instead of 2 * D in bf16 and decode,
which is bound by reading the key cache, reads about half the bytes.

``quantize_keys_fp8(k)`` returns ``(values, scales)``: ``values`` float8_e4m3fn [..., D] and
``scales`` float32 [...], with ``k ~= values.float() * scales[..., None]``. Each key is scaled so
its largest magnitude maps to 448, the largest finite e4m3 value. Scales are positive, so they
commute with the indexer's relu: ``relu(q . (s * v)) = s * relu(q . v)``, and the scorers apply
the scale once per key after the head-weighted sum.

With fp8 keys the scorers quantise the queries too, as the published design does, so that
q . k runs on fp8 tensor cores: ``quantize_queries_fp8(q)`` gives each query head ([..., D])
a power-of-two scale, the smallest with ``max |q| / scale <= 448``, and the scale joins the
head's weight. Power-of-two scaling is exact, so the PyTorch reference and the Triton kernel
(which quantises in registers with the same integer arithmetic on the float32 bits) produce the
same e4m3 values; the products of two e4m3 values are exact in float32.

CPU works too (``torch.float8_e4m3fn`` casts on CPU), so the pure-PyTorch scorer is the
reference for the fp8 path as it is for bf16.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FP8_DTYPE", "FP8_MAX", "quantize_keys_fp8", "quantize_queries_fp8"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
# Smallest scale: an all-zero key gets this scale and all-zero values instead of 0 / 0.
_MIN_SCALE = torch.finfo(torch.float32).tiny


def quantize_keys_fp8(k: Tensor) -> tuple[Tensor, Tensor]:
    """Quantise keys [..., D] to e4m3 values [..., D] and float32 per-key scales [...].

    Capture-safe (elementwise ops and one reduction, no host reads). Rounds to nearest, as
    ``Tensor.to(torch.float8_e4m3fn)`` does; values are clamped to +-448 first so rounding never
    overflows to NaN (e4m3fn has no infinity).
    """
    if not k.is_floating_point() or k.dtype == FP8_DTYPE:
        raise TypeError(f"k must be a float16, bfloat16 or float32 tensor; got {k.dtype}")
    if k.dim() < 1 or k.shape[-1] < 1:
        raise ValueError(f"k must be [..., D] with D >= 1; got {tuple(k.shape)}")
    wide = k.float()
    scales = (wide.abs().amax(dim=-1) / FP8_MAX).clamp_min(_MIN_SCALE)
    values = (wide / scales.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return values, scales


def query_scale_exponents(amax: Tensor) -> Tensor:
    """Biased float32 exponents (int32, in [1, 253]) of the power-of-two query scales for row
    maxima ``amax`` (float32, >= 0): the smallest 2**e with amax / 2**e <= 448.

    448 = 1.75 * 2**8, so for amax = m * 2**E (1 <= m < 2) the scale is 2**(E - 8) when
    m <= 1.75 and 2**(E - 7) otherwise: integer work on the bits alone, which the Triton kernel
    repeats exactly. Clamped so that the scale and its inverse are normal floats (an all-zero
    row gets 2**-126 and stays zero)."""
    bits = amax.contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    return (exponent - 8 + (mantissa > 0x600000).to(torch.int32)).clamp(1, 253)


def quantize_queries_fp8(q: Tensor) -> tuple[Tensor, Tensor]:
    """Quantise queries [..., D] to e4m3 values [..., D] and power-of-two float32 scales [...].

    ``q ~= values.float() * scales[..., None]``; ``values`` = ``q * (1 / scales)`` rounded to
    nearest (exact scaling, then one rounding), never beyond +-448. Capture-safe.
    """
    if not q.is_floating_point() or q.dtype == FP8_DTYPE:
        raise TypeError(f"q must be a float16, bfloat16 or float32 tensor; got {q.dtype}")
    if q.dim() < 1 or q.shape[-1] < 1:
        raise ValueError(f"q must be [..., D] with D >= 1; got {tuple(q.shape)}")
    wide = q.float()
    exponent = query_scale_exponents(wide.abs().amax(dim=-1))
    scales = (exponent << 23).view(torch.float32)
    inverse = ((254 - exponent) << 23).view(torch.float32)
    values = round_to_e4m3(wide * inverse.unsqueeze(-1)).to(FP8_DTYPE)  # exact cast
    return values, scales


def round_to_e4m3(x: Tensor) -> Tensor:
    """float32 ``x`` (|x| <= 448) rounded to the nearest e4m3 value, ties to even, as float32.

    Integer and float32 arithmetic only, which the Triton kernel repeats, so both produce the
    same values whatever their float-to-fp8 cast does (the Triton interpreter's cast does not
    round to nearest even). Normal e4m3 values (|x| >= 2**-6) keep 3 mantissa bits; below,
    the subnormal grid is the multiples of 2**-9, reached by adding and removing 1.5 * 2**14
    (float32's spacing there is 2**-9).
    """
    bits = x.contiguous().view(torch.int32)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).view(torch.float32)
    subnormal = (x + 24576.0) - 24576.0
    return torch.where(x.abs() >= 2.0**-6, normal, subnormal)
