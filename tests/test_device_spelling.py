"""The verdict on a hazard does not depend on how the program spells its device.

Each case of ``device_spelling_cases.py`` runs under graphguard with ``device`` spelled as a
string and as a ``torch.device`` (audit mode: on a machine without CUDA, CPU tensors stand for
device tensors), and, on a GPU, as ``"cuda"`` under a real capture. The verdict (code, file, line
and function of the first diagnostic, or none) must be the same for every spelling and must be
the one the case's marker comment states.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from device_spelling_cases import ALL, Case

import graphguard

BASE = "cuda" if torch.cuda.is_available() else "cpu"
SPELLINGS = {"string": BASE, "torch.device": torch.device(BASE)}

Verdict = tuple[str, str, int, str] | None


def _x(device: Any) -> torch.Tensor:
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    return x.to(device)


def _expected(case: Case) -> Verdict:
    if not case.code:
        return None
    return (case.code, case.fn.__code__.co_filename, case.line, case.fn.__name__)


def _verdict(case: Case, device: Any, mode: str) -> Verdict:
    """The first diagnostic graphguard raises for the case, or None when it runs clean."""
    x = _x(device)
    try:
        with graphguard.capture(mode=mode) as cap:
            case.fn(x, device)
    except graphguard.HazardError as err:
        d = err.diagnostic
        return (d.code, d.filename, d.lineno, d.function)
    assert cap.hazards == []
    return None


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_audit_verdict_is_the_marked_one(case: Case, spelling: str) -> None:
    """In audit mode each spelling of the device gets the verdict the case's marker states."""
    assert _verdict(case, SPELLINGS[spelling], "audit") == _expected(case)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_audit_verdict_is_the_same_for_every_spelling(case: Case) -> None:
    """A string device and a torch.device give identical verdicts, code and line alike."""
    verdicts = {name: _verdict(case, device, "audit") for name, device in SPELLINGS.items()}
    assert verdicts["string"] == verdicts["torch.device"], verdicts


@pytest.mark.cuda
@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_capture_verdict_is_the_marked_one(case: Case) -> None:
    """Under a real capture with device = "cuda" the verdict is the marked one too."""
    assert _verdict(case, "cuda", "capture") == _expected(case)
