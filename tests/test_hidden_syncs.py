"""Host reads inside torch calls (benchmarks/hidden_syncs.py): reported at the user's line.

Each hazard here looks like device work from Python, but torch reads a device value on the host
inside the call. The legal spelling next to each stays silent and computes the same result as
an unguarded run. On a machine with CUDA the tensors are CUDA tensors; without, CPU tensors made
before the region stand for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import graphguard

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    hits = [i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker)]
    assert len(hits) == 1, marker
    return hits[0]


@pytest.fixture
def encoder_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, device=DEV)
    pad = torch.zeros(4, 8, dtype=torch.bool)
    pad[1, 6:] = True  # left-aligned padding in one row
    return x, pad.to(DEV)


def _encoder(nested: bool) -> torch.nn.Module:
    torch.manual_seed(1)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested).to(DEV).eval()


def test_transformer_encoder_nested_fast_path_is_reported(
    encoder_inputs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, pad = encoder_inputs
    enc = _encoder(nested=True)
    with (
        torch.no_grad(),
        pytest.raises(graphguard.HostSyncError) as info,
        graphguard.capture(mode="audit"),
    ):
        enc(x, src_key_padding_mask=pad)  # at:encoder
    d = info.value.diagnostic
    assert (d.code, d.lineno) == ("GG109", _line_of("# at:encoder"))
    assert "TransformerEncoder" in d.message


def test_transformer_encoder_without_nested_tensors_is_silent_and_equal(
    encoder_inputs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, pad = encoder_inputs
    enc = _encoder(nested=False)
    with torch.no_grad():
        with graphguard.capture(mode="audit") as cap:
            out = enc(x, src_key_padding_mask=pad)
        expected = enc(x, src_key_padding_mask=pad)
    assert cap.hazards == []
    # Not bit for bit: torch turns nn.TransformerEncoderLayer's fused fast path off while any
    # torch-function mode is active (docs/limits.md), so the region runs its Python path.
    torch.testing.assert_close(out, expected)


def test_istft_is_reported_and_stft_is_not() -> None:
    window = torch.hann_window(32, device=DEV)
    signal = torch.randn(256, device=DEV)
    with graphguard.capture(mode="audit") as cap:
        spec = torch.stft(signal, 32, window=window, return_complex=True)
    assert cap.hazards == []
    with pytest.raises(graphguard.HostSyncError) as info, graphguard.capture(mode="audit"):
        torch.istft(spec, 32, window=window)  # at:istft
    d = info.value.diagnostic
    assert (d.code, d.lineno) == ("GG106", _line_of("# at:istft"))


def test_as_tensor_of_a_device_tensor_to_the_host_is_reported() -> None:
    lengths = torch.tensor([8, 6, 5, 3], device=DEV)
    with pytest.raises(graphguard.HostSyncError) as info, graphguard.capture(mode="audit"):
        torch.as_tensor(lengths, device="cpu")  # at:as_tensor
    d = info.value.diagnostic
    assert (d.code, d.lineno) == ("GG103", _line_of("# at:as_tensor"))
    with graphguard.capture(mode="audit") as cap:  # staying on the device is no copy
        same = torch.as_tensor(lengths, device=lengths.device)
    assert cap.hazards == [] and same.data_ptr() == lengths.data_ptr()


def test_lu_checks_its_infos_unless_asked_for_them() -> None:
    a = torch.randn(4, 4, device=DEV) + 4 * torch.eye(4, device=DEV)
    with pytest.raises(graphguard.HostSyncError) as info, graphguard.capture(mode="audit"):
        torch.lu(a)  # at:lu
    d = info.value.diagnostic
    assert (d.code, d.lineno) == ("GG108", _line_of("# at:lu"))
    with pytest.warns(UserWarning, match="deprecated"), graphguard.capture(mode="audit") as cap:
        torch.lu(a, get_infos=True)  # torch.lu is deprecated in favour of lu_factor(_ex)
    assert cap.hazards == []


# --- grouped_mm: the CUTLASS path reads offs on the device; the fallback loops over offs.cpu() ---
def _experts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    a, w = torch.randn(16, 16, device=DEV), torch.randn(3, 16, 16, device=DEV)
    return a, w, torch.tensor([6, 11, 16], dtype=torch.int32, device=DEV)


def test_grouped_mm_outside_its_bf16_path_is_reported_at_the_call() -> None:
    a, w, offs = _experts()
    with pytest.raises(graphguard.HostSyncError) as err, graphguard.capture(mode="audit"):
        torch.nn.functional.grouped_mm(a, w, offs=offs)  # GROUPED_MM_FLOAT32
    d = err.value.diagnostic
    assert (d.code, d.lineno) == ("GG103", _line_of("# GROUPED_MM_FLOAT32"))
    assert "offsets" in d.message


def test_grouped_mm_in_bfloat16_is_silent_and_computes_the_same() -> None:
    if DEV == "cuda" and torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip("torch's bf16 grouped_mm kernel needs a 9.x or 10.x card")
    a, w, offs = _experts()
    a, w = a.bfloat16(), w.bfloat16()
    expected = torch.nn.functional.grouped_mm(a, w, offs=offs)
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        got = torch.nn.functional.grouped_mm(a, w, offs=offs)
    assert cap.hazards == []
    assert torch.equal(got, expected)


class _FakeCudaTensor:
    """What the fast-path test reads of a CUDA operand: dtype, is_cuda, device."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.is_cuda, self.device = dtype, True, torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("a", "b", "out", "capability", "fast"),
    [
        (torch.bfloat16, torch.bfloat16, None, (9, 0), True),
        (torch.bfloat16, torch.bfloat16, None, (10, 0), True),
        (torch.bfloat16, torch.bfloat16, torch.bfloat16, (9, 0), True),
        (torch.bfloat16, torch.bfloat16, None, (8, 0), False),  # Ampere: the loop over offs
        (torch.bfloat16, torch.bfloat16, None, (12, 0), False),
        (torch.bfloat16, torch.bfloat16, torch.float32, (9, 0), False),
        (torch.float16, torch.float16, None, (9, 0), False),
        (torch.float32, torch.float32, None, (9, 0), False),
        (torch.bfloat16, torch.float32, None, (9, 0), False),
    ],
)
def test_grouped_mm_fast_path_follows_torchs_dispatch(
    monkeypatch: pytest.MonkeyPatch,
    a: torch.dtype,
    b: torch.dtype,
    out: torch.dtype | None,
    capability: tuple[int, int],
    fast: bool,
) -> None:
    from graphguard import _intercept

    monkeypatch.setattr(_intercept, "_GROUPED_MM_FAST", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert _intercept._grouped_mm_fast_path(_FakeCudaTensor(a), _FakeCudaTensor(b), out) is fast


# --- a host table indexed by device numbers: torch reads them with .item() ---------------------
def test_host_table_read_by_device_numbers_and_left_alone_otherwise() -> None:
    """A 0-dim device index or slice bound into a host tensor is read on the host (GG101);
    host-only indexing of the same table (ints, lists, host masks) is not reported."""
    step = torch.tensor(3, device=DEV)  # a device step number, as a sampler's timestep
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        table = torch.linspace(0.0, 1.0, 10, device="cpu")  # a genuine host tensor
        picked = table[step]  # HOST_TABLE_INDEX
        head = table[:step]  # HOST_TABLE_SLICE
        table[step] = 0.5  # HOST_TABLE_WRITE
        rest = table[1] + table[[2, 3]].sum() + table[table > 0.5].sum()
    lines = [(d.code, d.lineno) for d in cap.hazards]
    assert lines == [
        ("GG101", _line_of("# HOST_TABLE_INDEX")),
        ("GG101", _line_of("# HOST_TABLE_SLICE")),
        ("GG101", _line_of("# HOST_TABLE_WRITE")),
    ]
    assert picked.numel() == 1 and head.numel() == 3 and rest.numel() == 1
