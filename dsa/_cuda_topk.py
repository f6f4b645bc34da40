"""Exact top-k and index mask in one CUDA kernel, one block per row (CUDA only).

The kernel (``_cuda_topk.cu``, compiled on first use by NVRTC, the run-time compiler that ships
with PyTorch's CUDA wheels, and loaded through the CUDA driver) gives ``topk_mask``'s "rows"
method. One block of 1024 threads owns one row of scores and, with its counts in shared memory
(native shared-memory atomics: a histogram costs one atomic add per score):

1. histograms the top 11 bits of every score's order-preserving 32-bit key (a quarter of an
   octave per bin) and writes -inf over the mask row;
2. takes the bin of the k-th largest key, copies that bin's keys into shared memory (up to
   ``CACHE_CAP`` of them; a larger bin is read from the row again), and narrows
   the threshold on bits 20..10, then 9..0, of those keys, stopping as soon as every key that
   matches the bits fixed so far is a pick: the threshold T is the k-th largest key and a count
   of the picks owed among the keys equal to it, lower positions first;
3. compacts the picks in position order (warp prefix sums and one block-wide prefix over the
   warps, in tiles of 16,384 scores): every key above T and the first owed keys equal to it.
   Index order writes the finite picks' positions, then -1; score order sorts the packed picks
   (key, then lower position first) in shared memory with a bitonic sort and writes positions,
   -1 for non-finite picks and for the slots past min(k, L). The same pass writes the mask's
   zeros at the finite picks.

The keys, the tie rule and the sentinels are those of the Triton kernels (``dsa._triton_topk``):
the result equals the merge method's, bit for bit. Launches depend only on shapes; the
module is compiled and loaded outside capture on the first call (as Triton compiles its kernels
on theirs), so later calls, captured or not, are one kernel launch on the current stream.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import pathlib
import sys
import threading

import torch
from torch import Tensor

__all__ = [
    "CACHE_CAP",
    "MAX_TOPK",
    "THREADS",
    "device_reason",
    "topk_mask_rows",
    "unsupported_reason",
]

#: Threads per block; one block per row.
THREADS = 1024
#: The largest k: the sort of the score order holds next_power_of_two(k) packed picks.
MAX_TOPK = 4096
#: Keys of the threshold's bin kept in shared memory for the narrowing passes.
CACHE_CAP = 16384
# Positions are int32 inside the kernel, and a tile loop's counter runs up to 32768 (one tile
# of the counting passes) past the length.
_MAX_LENGTH = 2**31 - 2**16
_SOURCE = pathlib.Path(__file__).with_name("_cuda_topk.cu")
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# shared memory: the histogram (2048 x 4 bytes), the scans' scratch (under 1 KB), then the keys
# of the threshold's bin or, for the sort, next_power_of_two(k) packed picks
_SMEM_HEAD = 2048 * 4 + 1024
_SMEM_BYTES = _SMEM_HEAD + max(4 * CACHE_CAP, 8 * MAX_TOPK)
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_lock = threading.Lock()
_loaded: set[tuple[int, int, int]] = set()


def _load_library(names: list[str], patterns: list[str]) -> ctypes.CDLL:
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                return ctypes.CDLL(path)
            except OSError as exc:
                errors.append(str(exc))
    raise OSError("; ".join(errors) or f"none of {names} found")


@functools.lru_cache(maxsize=1)
def _nvrtc() -> ctypes.CDLL:
    major = (torch.version.cuda or "0").split(".")[0]
    roots = [
        os.path.join(p, "nvidia") for p in sys.path if os.path.isdir(os.path.join(p, "nvidia"))
    ]
    patterns = [os.path.join(r, "*", "lib", f"libnvrtc.so.{major}*") for r in roots]
    return _load_library([f"libnvrtc.so.{major}", "libnvrtc.so"], patterns)


@functools.lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL:
    return _load_library(["libcuda.so.1", "libcuda.so"], [])


@functools.lru_cache(maxsize=1)
def _import_error() -> str | None:
    """None when NVRTC and the CUDA driver load; otherwise why not."""
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA"
    try:
        _nvrtc()
        _driver()
    except OSError as exc:
        return f"NVRTC or the CUDA driver did not load ({exc})"
    return None


def unsupported_reason(scores: Tensor, k: int, mask: Tensor | None = None) -> str | None:
    """Why the one-block-per-row kernel cannot take these scores (and mask), or None when it
    can: CUDA scores of float32, bfloat16 or float16 with rows of fewer than 2**31 - 2**16, a
    mask of one of those dtypes, 1 <= k <= MAX_TOPK, compute capability 7.0 or newer, and
    NVRTC and the CUDA driver loadable."""
    if not scores.is_cuda:
        return f"the CUDA top-k needs CUDA scores (got {scores.device})"
    if mask is not None and mask.dtype not in _KINDS:
        return f"the mask must be float32, bfloat16 or float16 (got {mask.dtype})"
    if scores.dtype not in _KINDS:
        return f"scores must be float32, bfloat16 or float16 (got {scores.dtype})"
    if not 1 <= k <= MAX_TOPK:
        return f"k must be in [1, {MAX_TOPK}] (got {k})"
    if scores.dim() < 1 or scores.shape[-1] >= _MAX_LENGTH:
        return f"rows must hold fewer than {_MAX_LENGTH} scores"
    for t in (scores,) if mask is None else (scores, mask):
        if t.dim() >= 2 and t.stride(-2) >= 2**31:
            return "rows lie 2**31 or more elements apart (the kernel's row strides are int32)"
    index = scores.device.index
    return device_reason(torch.cuda.current_device() if index is None else index)


@functools.cache
def device_reason(device_index: int) -> str | None:
    """Why the kernel cannot run on this CUDA device, or None when it can (cached)."""
    if torch.version.hip:
        return "the CUDA top-k is not built for ROCm"
    major, _ = torch.cuda.get_device_capability(device_index)
    if major < 7:
        return "the CUDA top-k needs compute capability 7.0 or newer"
    return _import_error()


def _check(lib_name: str, code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{lib_name} {what} failed with error {code}")


class _Kernel:
    """A loaded module and its kernel (per device)."""

    def __init__(self, function: ctypes.c_void_p, module: ctypes.c_void_p) -> None:
        self.function = function
        self.module = module


def _compile(score_kind: int, mask_kind: int, major: int, minor: int) -> bytes:
    lib = _nvrtc()
    program = ctypes.c_void_p()
    source = _SOURCE.read_bytes()
    _check(
        "NVRTC",
        lib.nvrtcCreateProgram(ctypes.byref(program), source, b"topk.cu", 0, None, None),
        "nvrtcCreateProgram",
    )
    options = [
        f"-DSCORE_KIND={score_kind}".encode(),
        f"-DMASK_KIND={mask_kind}".encode(),
        f"--gpu-architecture=sm_{major}{minor}".encode(),
        b"-std=c++17",
    ]
    array = (ctypes.c_char_p * len(options))(*options)
    try:
        code = lib.nvrtcCompileProgram(program, len(options), array)
        if code != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC could not compile the top-k kernel:\n{log.value.decode()}")
        size = ctypes.c_size_t()
        _check("NVRTC", lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
        binary = ctypes.create_string_buffer(size.value)
        _check("NVRTC", lib.nvrtcGetCUBIN(program, binary), "nvrtcGetCUBIN")
        return binary.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


@functools.cache
def _kernel(device_index: int, score_kind: int, mask_kind: int) -> _Kernel:
    major, minor = torch.cuda.get_device_capability(device_index)
    cubin = _compile(score_kind, mask_kind, major, minor)
    driver = _driver()
    with torch.cuda.device(device_index):
        torch.cuda.current_stream().query()  # the device's primary context is current
        module = ctypes.c_void_p()
        _check("CUDA", driver.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        function = ctypes.c_void_p()
        _check(
            "CUDA",
            driver.cuModuleGetFunction(ctypes.byref(function), module, b"topk_mask_rows"),
            "cuModuleGetFunction",
        )
        _check(
            "CUDA",
            driver.cuFuncSetAttribute(
                function, _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, _SMEM_BYTES
            ),
            "cuFuncSetAttribute",
        )
    return _Kernel(function, module)


def _vector_ok(rows: Tensor) -> bool:
    """Whether every row of [rows, L] starts on a 4-element boundary (the kernel's vector
    loads and stores: 16 bytes for float32, 8 for 16-bit types)."""
    return rows.data_ptr() % (4 * rows.element_size()) == 0 and rows.stride(0) % 4 == 0


def topk_mask_rows(
    flat_scores: Tensor,
    flat_out: Tensor,
    mask_rows: Tensor | None,
    has_keys: Tensor | None,
    k: int,
    order: str,
) -> None:
    """Launch the kernel over [rows, L] scores (unit stride along L): int64 picks into flat_out
    [rows, k] (unit stride), the mask rows and row flags when given. One launch on the current
    stream; the first call per device and dtype pair compiles and loads the module."""
    rows, length = flat_scores.shape
    device_index = flat_scores.device.index
    if device_index is None:
        device_index = torch.cuda.current_device()
    mask_kind = _KINDS[mask_rows.dtype] if mask_rows is not None else 0
    key = (device_index, _KINDS[flat_scores.dtype], mask_kind)
    with _lock:
        if key not in _loaded and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "the CUDA top-k compiles and loads its kernel on the first call for each device "
                "and dtype pair, which cannot happen during CUDA-graph capture: make one eager "
                "call first (the usual warm-up)"
            )
        kernel = _kernel(*key)
        _loaded.add(key)
    pointers = [
        ctypes.c_void_p(flat_scores.data_ptr()),
        ctypes.c_void_p(flat_out.data_ptr()),
        ctypes.c_void_p(mask_rows.data_ptr() if mask_rows is not None else 0),
        ctypes.c_void_p(has_keys.data_ptr() if has_keys is not None else 0),
    ]
    scalars = [
        ctypes.c_int(length),
        ctypes.c_int(k),
        ctypes.c_int(flat_scores.stride(0)),
        ctypes.c_int(flat_out.stride(0)),
        ctypes.c_int(mask_rows.stride(0) if mask_rows is not None else 0),
        ctypes.c_int(int(mask_rows is not None)),
        ctypes.c_int(int(has_keys is not None)),
        ctypes.c_int(int(order == "score")),
        ctypes.c_int(CACHE_CAP),
        ctypes.c_int(int(_vector_ok(flat_scores))),
        ctypes.c_int(int(mask_rows is not None and _vector_ok(mask_rows))),
    ]
    arguments = pointers + scalars
    array = (ctypes.c_void_p * len(arguments))(
        *[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in arguments]
    )
    # the module was loaded into this device's primary context: make it the current one
    with torch.cuda.device(device_index):
        stream = torch.cuda.current_stream(device_index)
        _check(
            "CUDA",
            _driver().cuLaunchKernel(
                kernel.function,
                rows,
                1,
                1,
                THREADS,
                1,
                1,
                _SMEM_BYTES,
                ctypes.c_void_p(stream.cuda_stream),
                array,
                None,
            ),
            "cuLaunchKernel",
        )
