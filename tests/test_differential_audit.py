"""Differential test without a GPU: audit reports a generated step exactly when the GPU would.

Hypothesis draws short steps from the op vocabulary of ``differential_ops`` (each op labelled
with what plain torch does under a real capture; ``test_differential_cuda.py`` checks every
label against raw ``torch.cuda.graph`` runs on a GPU). Each step is written to a file and run in
audit mode on CPU tensors, which stand for device tensors as on a CPU-only machine. Audit must
report a step iff it holds a hazardous op ("refused" or "silent" on the GPU), name that op's
line, and otherwise compute exactly what the same step computes unguarded, whether the step
spells its device ``x.device``, a module variable ``DEVICE`` (``"cpu"`` without CUDA) or
``torch.device(DEVICE)``. On a machine with CUDA the same steps run in audit on real device
tensors.

One op is left out here, by a documented limit of audit without CUDA (docs/audit.md): the
copy of a pinned tensor made before the region (``pinned-h2d``) looks like any other tensor made
before the region, which audit takes for a device tensor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from differential_ops import (
    BY_NAME,
    HAZARD_OPS,
    LEGAL_OPS,
    SPELLINGS,
    load_step,
    program,
    with_hazard,
)

import graphguard

hyp = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

N = 16
#: Hazardous on the GPU, not seen by audit on a machine without CUDA (docs/audit.md).
AUDIT_BLIND = {"pinned-h2d"}
AUDITED_HAZARDS = [name for name in HAZARD_OPS if name not in AUDIT_BLIND]


#: Where the inputs live: the module's ``DEVICE`` of ``differential_ops.program``. With CUDA,
#: audit runs the step on real device tensors; without, CPU tensors stand for them.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, pinned, idx = (
        torch.randn(N, generator=g),
        torch.randn(N, generator=g),
        torch.randperm(N, generator=g),
    )
    return x.to(DEV), pinned.to(DEV), idx.to(DEV)


def sequences() -> Any:
    """Up to four legal ops with at most one hazardous op inserted somewhere among them."""
    legal = st.lists(st.sampled_from(LEGAL_OPS), min_size=0, max_size=4)
    hazard = st.one_of(st.none(), st.sampled_from(AUDITED_HAZARDS))
    return st.builds(with_hazard, legal, hazard, st.integers(0, 4)).filter(bool)


def _with_each_hazard_alone_and_last(test: Any) -> Any:
    for name in AUDITED_HAZARDS:
        for device in SPELLINGS:
            test = hyp.example(names=(name,), device=device)(test)
        test = hyp.example(names=("mul", "where", name), device="DEVICE")(test)
    for name in LEGAL_OPS:  # every legal op at least once, whatever the draws
        test = hyp.example(names=(name,), device="DEVICE")(test)
    return test


@pytest.fixture(scope="module")
def programs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("differential_audit")


@pytest.mark.timeout(300)
@hyp.settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[hyp.Phase.explicit, hyp.Phase.generate],
    suppress_health_check=list(hyp.HealthCheck),
)
@_with_each_hazard_alone_and_last
@hyp.given(names=sequences(), device=st.sampled_from(SPELLINGS))
def test_audit_reports_exactly_the_steps_the_gpu_rejects(
    names: tuple[str, ...], device: str, programs_dir: Path
) -> None:
    """Reported iff a hazardous op is in the step, at that op's line, however the step spells
    its device; silent steps compute what the unguarded step computes."""
    digest = hashlib.sha1("|".join((*names, device)).encode()).hexdigest()[:12]
    path = programs_dir / f"step_{digest}.py"
    path.write_text(program(names, device))
    step = load_step(path)
    hazards = [i for i, n in enumerate(names) if BY_NAME[n].kind != "legal"]
    context = f"ops={list(names)} device={device}"
    args = _inputs()  # made before the region: they stand for device tensors
    try:
        with graphguard.capture(mode="audit") as cap:
            out = step(*args)
    except graphguard.HazardError as err:
        d = err.diagnostic
        assert hazards, f"{context}: reported a legal step: {d.code} {d.source_line.strip()}"
        # program(): op i is on line 6 + i
        assert (Path(d.filename).name, d.lineno) == (path.name, 6 + hazards[0]), context
        return
    assert not hazards, f"{context}: the hazard was not reported (cap.hazards={cap.hazards})"
    assert cap.hazards == []
    torch.testing.assert_close(out, step(*_inputs()), rtol=0, atol=0, msg=context)
