"""``graphguard certify``: the bundled DSA workload, user workloads, and what a certificate says."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import graphguard
from graphguard import ConfigError, _certify, _workload
from graphguard._cli import main as cli_main
from graphguard._workload import HazardSite, Workload, load_workload, marked_lines, outputs_equal

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

#: A user's own workload: a clamp step written with a Python branch (unsafe) and without (safe).
USER_MODULE = """
import torch
from graphguard._workload import Workload, marked_lines


def unsafe_step(x):
    if (x > 1).any():  # hazard: branch on a device value
        x = x.clamp(max=1)
    return x * 2


def safe_step(x):
    return x.clamp(max=1) * 2


def inputs(device, *, quick, seed):
    g = torch.Generator().manual_seed(seed)
    yield "mixed", (torch.tensor([0.5, 3.0, -2.0], device=device),)
    yield "all below", (torch.zeros(4, device=device),)
    for i in range(2 if quick else 8):
        yield f"draw {i}", ((torch.randn(16, generator=g) * 3).to(device),)


def replay_inputs(device, *, quick, seed):
    yield "capture", (torch.zeros(16, device=device),)
    for i in range(3):
        yield f"values {i}", (torch.full((16,), float(i), device=device),)


def make_workload():
    return Workload(
        name="clamp2",
        description="clamp then double",
        make_inputs=inputs,
        safe_step=safe_step,
        unsafe_step=unsafe_step,
        expected_hazards=lambda: marked_lines(unsafe_step, "# hazard", "host-sync"),
        replay_inputs=replay_inputs,
    )


def make_workload_wrong_line():
    good = make_workload()
    site = marked_lines(unsafe_step, "# hazard")[0]
    return Workload(
        name="clamp2-wrong-line",
        description="expects the hazard one line too low",
        make_inputs=inputs,
        safe_step=safe_step,
        unsafe_step=unsafe_step,
        expected_hazards=[(site.filename, site.lineno + 1)],
        replay_inputs=good.replay_inputs,
    )


def make_workload_safe_only():
    return Workload(
        name="clamp2-safe-only",
        description="no unsafe form; compared with a reference",
        make_inputs=inputs,
        safe_step=safe_step,
        reference_step=lambda x: torch.minimum(x, torch.ones_like(x)) * 2,
    )


def make_not_a_workload():
    return {"name": "clamp2"}
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of the user's own, importable by name for this test only."""
    name = f"user_steps_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """graphguard.certify, Workload, Certificate and marked_lines, as the docs use them."""
    public = {
        "Certificate": _certify.Certificate,
        "Workload": Workload,
        "certify": _certify.certify,
        "marked_lines": marked_lines,
    }
    for name, value in public.items():
        if not hasattr(graphguard, name):  # until graphguard/__init__.py exports them
            monkeypatch.setattr(graphguard, name, value, raising=False)


def _dsa_first_case() -> tuple[Workload, _workload.Case]:
    workload = load_workload("dsa")
    return workload, _certify._first_case(workload, DEVICE, quick=True, seed=0)


# --- the bundled DSA workload --------------------------------------------------------------------
def test_dsa_certifies_by_default_and_says_what_did_not_run(capsys) -> None:
    """`graphguard certify --quick` checks DSA; without CUDA the result is PARTIAL, saying why."""
    assert _certify.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "graphguard certificate: workload dsa" in out
    assert "[PASS] semantics" in out and "[PASS] refusal (audit)" in out
    if torch.cuda.is_available():
        assert (
            "result: CERTIFIED — certified: semantics, refusal (audit), refusal (capture), " in out
        )
    else:
        assert (
            "result: PARTIAL — certified: semantics, refusal (audit); "
            "not run (needs a CUDA GPU): refusal (capture), replay"
        ) in out


def test_certificate_json_lists_claims_by_status(capsys) -> None:
    """--json gives the result and the claims by status; `certified` is true only if all ran."""
    assert _certify.main(["--quick", "--json"]) == 0
    cert = json.loads(capsys.readouterr().out)
    assert cert["workload"] == "dsa" and cert["torch_version"] == torch.__version__
    for key in ("device", "shapes", "checks", "timings_us", "date", "graphguard_version"):
        assert key in cert
    if torch.cuda.is_available():
        assert cert["result"] == "CERTIFIED" and cert["certified"] is True
    else:
        assert cert["result"] == "PARTIAL" and cert["certified"] is False
        assert cert["certified_claims"] == ["semantics", "refusal (audit)"]
        assert cert["not_run_claims"] == ["refusal (capture)", "replay"]
        assert cert["failed_claims"] == []
        assert cert["summary"].startswith("PARTIAL — certified: semantics, refusal (audit)")


def test_dsa_refusal_names_validation_and_branch_lines() -> None:
    """The audit refusal names exactly the unpatched update's validation and branch lines."""
    import dsa

    workload, case = _dsa_first_case()
    check = _certify._check_refusal_audit(workload, case)
    where = dsa.unpatched_hazard_lines()
    assert check.status == "passed"
    located = {h.rsplit(":", 1)[1] for h in check.data["hazards"]}
    assert located == {str(where.validation), str(where.branch)}


def test_semantics_fails_when_the_safe_step_differs() -> None:
    """The semantics claim really compares: a safe step with a different result fails it."""
    workload = load_workload("dsa")
    broken = dataclasses.replace(
        workload, also_compare=(), safe_step=lambda *args: workload.unsafe_step(*args)[:2]
    )
    check = _certify._check_semantics(broken, torch.device("cpu"), quick=True, seed=0)
    assert check.status == "failed" and "step vs unsafe step" in check.detail


def test_certify_drops_its_provoked_hazard_events(capsys) -> None:
    """The hazards certify provokes on purpose are not logged into its report on stdout."""
    assert cli_main(["certify", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "graphguard.hazard" not in out and "result: " in out


# --- finding workloads ---------------------------------------------------------------------------
def test_bundled_dsa_is_found_without_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the entry point is missing (a stale editable install), "dsa" still resolves."""
    monkeypatch.setattr(_workload, "entry_points", lambda group: [])
    assert _workload.registered_workloads() == {"dsa": "dsa._workload:make_workload"}
    assert load_workload("dsa").name == "dsa"


def test_entry_point_names_a_workload(monkeypatch: pytest.MonkeyPatch, user_module: str) -> None:
    """A `graphguard.workloads` entry point makes a workload available by its name."""
    point = EntryPoint("clamp", f"{user_module}:make_workload", "graphguard.workloads")
    monkeypatch.setattr(_workload, "entry_points", lambda group: [point])
    assert "clamp" in _workload.registered_workloads()
    assert load_workload("clamp").name == "clamp2"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchworkload", "unknown workload 'nosuchworkload'; registered workloads: dsa"),
        ("not a module:make", "is not MODULE:FUNCTION"),
        ("graphguard_no_such_module:make", "cannot import 'graphguard_no_such_module'"),
        ("{module}:no_such_function", "has no 'no_such_function'"),
        ("{module}:make_not_a_workload", "returned dict, not graphguard.Workload"),
    ],
    ids=["unknown-name", "bad-syntax", "import-fails", "missing-function", "wrong-type"],
)
def test_bad_workload_is_a_one_line_error(
    capsys, user_module: str, spec: str, message: str
) -> None:
    """A workload that cannot be found, imported or built exits 2 with one line saying why."""
    assert cli_main(["certify", spec.format(module=user_module)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("graphguard certify: ") and message in line
    assert captured.out == ""


def test_module_that_raises_on_import_is_a_one_line_error(capsys, tmp_path, monkeypatch) -> None:
    """An exception raised while the user's module is imported exits 2, naming the error."""
    (tmp_path / "exploding_steps.py").write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _certify.main(["exploding_steps:make_workload"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "cannot import 'exploding_steps'" in line and "RuntimeError: boom" in line
    sys.modules.pop("exploding_steps", None)


def test_list_shows_registered_workloads(capsys) -> None:
    """--list prints each registered workload and what it resolves to."""
    assert _certify.main(["--list"]) == 0
    assert "dsa  dsa._workload:make_workload" in capsys.readouterr().out.splitlines()


# --- a user's own workload -----------------------------------------------------------------------
def test_user_workload_certifies_from_module_function(capsys, user_module: str) -> None:
    """`certify MODULE:FUNCTION` certifies a user's step: semantics, refusal at its marked line."""
    assert cli_main(["certify", f"{user_module}:make_workload", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "graphguard certificate: workload clamp2" in out
    assert "[PASS] semantics: identical on 4 inputs (step vs unsafe step 4)" in out
    assert f"{user_module}.py:7 (exactly the expected lines)" in out
    assert "result: CERTIFIED" in out if torch.cuda.is_available() else "result: PARTIAL" in out


def test_user_module_in_current_directory_is_found(capsys, tmp_path, monkeypatch) -> None:
    """A module in the current directory is importable by name, as under `python -m`."""
    (tmp_path / "cwd_steps.py").write_text(textwrap.dedent(USER_MODULE), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert _certify.main(["cwd_steps:make_workload", "--quick"]) == 0
    assert str(tmp_path) not in sys.path
    sys.modules.pop("cwd_steps", None)


def test_step_in_docs_certifies(capsys, tmp_path, monkeypatch, public_api) -> None:
    """The workload of docs/certify.md certifies as the page says: semantics and audit refusal."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "certify.md").read_text("utf-8")
    section = page.split("## Certify your own step", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "doc_steps.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _certify.main(["doc_steps:make_workload", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] semantics" in out and "(exactly the expected lines)" in out
    sys.modules.pop("doc_steps", None)


def test_refusal_at_an_unexpected_line_fails_certification(capsys, user_module: str) -> None:
    """A hazard reported at another line than the expected one is NOT CERTIFIED, exit 1."""
    assert _certify.main([f"{user_module}:make_workload_wrong_line", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] refusal (audit): expected hazards at" in out
    assert "result: NOT CERTIFIED — failed: refusal (audit)" in out


def test_workload_without_unsafe_step_reports_refusal_not_run(user_module: str) -> None:
    """With no unsafe step, semantics runs against the reference and both refusals are not run."""
    cert = _certify.certify(f"{user_module}:make_workload_safe_only", quick=True)
    status = {c.name: (c.status, c.detail) for c in cert.checks}
    assert status["semantics"][0] == "passed"
    assert status["refusal (audit)"] == ("not run", "the workload has no unsafe step")
    assert status["refusal (capture)"] == ("not run", "the workload has no unsafe step")
    assert cert.ok and not cert.certified and cert.result == "PARTIAL"


def test_step_that_raises_fails_its_claim_without_crashing() -> None:
    """An exception from the workload's step fails that claim; certify still returns."""

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad shape")

    workload = Workload(
        name="broken",
        description="raises",
        make_inputs=lambda device, *, quick, seed: [("one", (torch.ones(2),))],
        safe_step=broken,
        reference_step=lambda x: x,
    )
    cert = _certify.certify(workload, quick=True)
    semantics = cert.checks[0]
    assert semantics.status == "failed" and semantics.detail == "raised ValueError: bad shape"
    assert cert.result == "NOT CERTIFIED"


def test_certify_rejects_an_object_that_is_not_a_workload() -> None:
    """certify() given neither a Workload nor a name raises ConfigError naming the type."""
    with pytest.raises(ConfigError, match="got dict"):
        _certify.certify({"name": "x"})  # type: ignore[arg-type]


# --- the pieces ----------------------------------------------------------------------------------
def test_workload_rejects_a_step_that_is_not_callable() -> None:
    """Building a Workload with a non-callable step raises TypeError naming the field."""
    with pytest.raises(TypeError, match=r"Workload\.safe_step must be callable"):
        Workload(name="x", description="", make_inputs=lambda *a, **k: [], safe_step=3)  # type: ignore[arg-type]


def test_marked_lines_finds_each_marked_line() -> None:
    """marked_lines returns the file and line of every source line carrying the marker."""

    def step(x: torch.Tensor) -> torch.Tensor:
        y = x + 1  # risky
        return y * 2  # risky too

    sites = marked_lines(step, "# risky", "host-sync")
    first = step.__code__.co_firstlineno
    assert sites == [
        HazardSite(__file__, first + 1, "host-sync"),
        HazardSite(__file__, first + 2, "host-sync"),
    ]


def test_outputs_equal_treats_nan_as_equal_and_checks_structure() -> None:
    """The default comparison is exact, with NaN equal to NaN, over nested outputs."""
    a = {"x": torch.tensor([1.0, float("nan")]), "n": 3}
    assert outputs_equal(a, {"x": torch.tensor([1.0, float("nan")]), "n": 3})
    assert not outputs_equal(a, {"x": torch.tensor([1.0, 2.0]), "n": 3})
    assert not outputs_equal(a, {"x": torch.tensor([1.0, float("nan")]), "n": 4})
    assert not outputs_equal(a, (a["x"], 3))


def test_replay_input_with_another_shape_is_explained() -> None:
    """A replay case whose tensor differs in shape from the captured one is named with both."""
    static, new = [torch.zeros(4)], [torch.zeros(5)]
    message = _certify._layout_mismatch(static, new, ["args[0]"])
    assert message == "args[0] is torch.float32[5] on cpu, captured with torch.float32[4] on cpu"


@pytest.mark.cuda
def test_certify_on_gpu_runs_all_claims() -> None:
    """On a GPU every DSA claim runs and passes, with replay timings recorded."""
    cert = _certify.certify("dsa", quick=True)
    assert cert.certified, _certify.render(cert)
    assert cert.result == "CERTIFIED"
    assert cert.claims("passed") == list(_certify.CLAIMS)
    assert cert.timings_us["graph_replay"] > 0


@pytest.mark.cuda
def test_user_workload_replays_on_gpu(user_module: str) -> None:
    """On a GPU a user's workload is refused under capture and replays across its inputs."""
    cert = _certify.certify(f"{user_module}:make_workload", quick=True)
    assert cert.certified, _certify.render(cert)
