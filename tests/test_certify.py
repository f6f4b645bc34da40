"""The DSA certification runs on any machine and certifies what that machine can check."""

from __future__ import annotations

import json

import pytest
import torch

from graphguard import _certify


def test_certify_passes_and_says_what_needs_a_gpu(capsys) -> None:
    """On this machine certify exits 0; without CUDA it marks the replay claim as not run."""
    assert _certify.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] semantics" in out and "[PASS] refusal (audit)" in out
    if torch.cuda.is_available():
        assert "[PASS] replay" in out and "[PASS] refusal (capture)" in out
    else:
        assert "[SKIP] replay: needs a CUDA GPU" in out
    assert "result: CERTIFIED" in out


def test_certificate_json_records_environment(capsys) -> None:
    """--json prints a certificate with device, torch version, shapes, checks and timings."""
    assert _certify.main(["--quick", "--json"]) == 0
    cert = json.loads(capsys.readouterr().out)
    assert cert["certified"] is True
    assert cert["torch_version"] == torch.__version__
    for key in ("device", "shapes", "checks", "timings_us", "date", "graphguard_version"):
        assert key in cert
    names = {c["name"]: c["status"] for c in cert["checks"]}
    assert names["semantics"] == "passed" and names["refusal (audit)"] == "passed"


def test_refusal_names_validation_and_branch_lines() -> None:
    """The audit refusal names exactly the unpatched update's validation and branch lines."""
    import dsa

    check = _certify._check_refusal_audit(
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    where = dsa.unpatched_hazard_lines()
    assert check.status == "passed"
    located = {h.rsplit(":", 1)[1] for h in check.data["hazards"]}
    assert located == {str(where.validation), str(where.branch)}


def test_semantics_check_fails_when_forms_differ(monkeypatch) -> None:
    """The semantics claim really compares: a broken patched update fails certification."""
    import dsa

    monkeypatch.setattr(dsa, "update_index_mask", lambda mask, idx: mask.fill_(0.0))
    check = _certify._check_semantics(torch.device("cpu"), draws=4, seed=0)
    assert check.status == "failed"


@pytest.mark.cuda
def test_certify_on_gpu_runs_all_claims() -> None:
    """On a GPU every claim runs and passes, with replay timings recorded."""
    cert = _certify.certify(quick=True)
    assert cert.ok, _certify.render(cert)
    assert {c.name for c in cert.checks if c.status == "passed"} == {
        "semantics",
        "refusal (audit)",
        "refusal (capture)",
        "replay",
    }
    assert cert.timings_us["graph_replay"] > 0
