"""fp8 (e4m3) index keys with one float32 scale per key: 132 bytes per key at D=128.

The published DSA design stores the indexer's key cache in fp8 with a scale per 128 values; with
D=128 that is one scale per key, so a key costs D + 4 bytes instead of 2 * D in bf16 and decode,
which is bound by reading the key cache, reads about half the bytes.

``quantize_keys_fp8(k)`` returns ``(values, scales)``: ``values`` float8_e4m3fn [..., D] and
``scales`` float32 [...], with ``k ~= values.float() * scales[..., None]``. Each key is scaled so
its largest magnitude maps to 448, the largest finite e4m3 value. Scales are positive, so they
commute with the indexer's relu: ``relu(q . (s * v)) = s * relu(q . v)``, and the scorers apply
the scale once per key after the head-weighted sum.

CPU works too (``torch.float8_e4m3fn`` casts on CPU), so the pure-PyTorch scorer is the
reference for the fp8 path as it is for bf16.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FP8_DTYPE", "FP8_MAX", "quantize_keys_fp8"]

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
