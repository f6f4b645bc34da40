"""The ``graphguard`` command line: rules, check (text, jsonl, SARIF), doctor, and exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog
import torch

import graphguard
from graphguard import _state
from graphguard.__main__ import main
from graphguard._docs import render_rule

REPO = Path(__file__).resolve().parent.parent

HAZARDS = """\
import torch; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
import graphguard

x = torch.randn(8, generator=torch.Generator().manual_seed(0)).to(DEVICE)
with graphguard.capture():
    total = x.sum().item()  # HAZARD GG101
    positive = x[x > 0]  # HAZARD GG105
print("finished")
"""

CLEAN = """\
import torch; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
import graphguard

x = torch.randn(8, device=DEVICE)
with graphguard.capture():
    y = torch.where(x > 0, x, 0.0) * 2
print("finished")
"""


def _write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def _marked_lines(path: Path) -> list[tuple[str, int]]:
    """(code, line) of every line marked ``# HAZARD <code>`` in ``path``."""
    out = []
    for lineno, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if "# HAZARD " in text:
            out.append((text.rsplit("# HAZARD ", 1)[1].strip(), lineno))
    return out


def _jsonl(text: str) -> tuple[list[dict], dict]:
    objects = [json.loads(line) for line in text.splitlines() if line.strip()]
    return objects[:-1], objects[-1]["summary"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, so report paths are relative to it (the default project root)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- check ----------------------------------------------------------------------------------------
def test_check_reports_every_hazard_at_its_line(in_tmp: Path, capsys) -> None:
    """check collects both hazards of the region (not only the first) with their lines; exit 1."""
    script = _write(in_tmp, "step.py", HAZARDS)
    status = main(["check", "--format", "jsonl", "step.py"])
    diagnostics, summary = _jsonl(capsys.readouterr().out)
    assert status == 1
    assert [(d["code"], d["lineno"]) for d in diagnostics] == _marked_lines(script)
    assert all(d["filename"] == str(script) for d in diagnostics)
    assert summary["hazards"] == 2 and summary["exit_status"] == 1 and summary["completed"]


def test_check_text_report_shows_diagnostics_and_summary(in_tmp: Path, capsys) -> None:
    """The text report is each diagnostic as the library renders it, then a summary by code."""
    _write(in_tmp, "step.py", HAZARDS)
    assert main(["check", "step.py"]) == 1
    out = capsys.readouterr().out
    assert "GG101 [host-sync] a device value is read on the host" in out
    assert "total = x.sum().item()  # HAZARD GG101" in out and "= fix:" in out
    assert "graphguard check: step.py: 2 hazards (2 occurrences) in 1 file" in out
    assert "first at step.py:6" in out and "first at step.py:7" in out


def test_check_clean_script_exits_zero(in_tmp: Path, capsys) -> None:
    """A program whose regions are capture-safe runs to the end and exits 0."""
    _write(in_tmp, "clean.py", CLEAN)
    assert main(["check", "clean.py"]) == 0
    captured = capsys.readouterr()
    assert "finished" in captured.out and "no hazards found" in captured.out


def test_check_folds_repeated_hazards_into_one_finding(in_tmp: Path, capsys) -> None:
    """A hazard hit on every loop iteration is one finding with its occurrence count."""
    _write(
        in_tmp,
        "loop.py",
        """\
        import torch, graphguard; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
        x = torch.ones(4, device=DEVICE)
        for _ in range(5):
            with graphguard.capture():
                x.sum().item()
        """,
    )
    assert main(["check", "--format", "jsonl", "loop.py"]) == 1
    diagnostics, summary = _jsonl(capsys.readouterr().out)
    assert len(diagnostics) == 1 and diagnostics[0]["occurrences"] == 5
    assert summary["occurrences"] == 5


def test_check_sarif_is_structurally_valid(in_tmp: Path, capsys) -> None:
    """SARIF output has the 2.1.0 envelope, the whole catalog as rules and relative locations."""
    script = _write(in_tmp, "step.py", HAZARDS)
    assert main(["check", "--format", "sarif", "step.py"]) == 1
    log = json.loads(capsys.readouterr().out)
    assert log["version"] == "2.1.0"
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "graphguard" and driver["version"] == graphguard.__version__
    assert [r["id"] for r in driver["rules"]] == sorted(graphguard.RULES)
    rule = driver["rules"][0]
    assert rule["name"] == graphguard.RULES[rule["id"]].slug
    # an absolute URI of the page on this machine (shipped in the wheel, or the checkout's)
    assert rule["helpUri"] == graphguard.RULES[rule["id"]].page.as_uri()
    assert rule["helpUri"].startswith("file:///") and rule["helpUri"].endswith(".md")
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["GG101", "GG105"]
    for result, (_, line) in zip(results, _marked_lines(script), strict=True):
        assert result["level"] == "error" and result["message"]["text"]
        physical = result["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"] == {"uri": "step.py", "uriBaseId": "%SRCROOT%"}
        assert physical["region"]["startLine"] == line
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"].endswith("/")


def test_sarif_location_outside_project_root_is_absolute(in_tmp: Path, capsys) -> None:
    """A file outside --project-root keeps an absolute file:// URI and no uriBaseId."""
    script = _write(in_tmp, "step.py", HAZARDS)
    other = in_tmp / "elsewhere"
    other.mkdir()
    assert main(["check", "--format", "sarif", "--project-root", str(other), "step.py"]) == 1
    result = json.loads(capsys.readouterr().out)["runs"][0]["results"][0]
    location = result["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": script.as_uri()}


def test_check_machine_report_on_stdout_stays_parseable(in_tmp: Path, capsys) -> None:
    """With --format jsonl on stdout the program's own prints go to stderr."""
    _write(in_tmp, "step.py", HAZARDS)
    main(["check", "--format", "jsonl", "step.py"])
    captured = capsys.readouterr()
    _jsonl(captured.out)  # every line is JSON
    assert "finished" in captured.err


def test_check_output_file_receives_report(in_tmp: Path, capsys) -> None:
    """--output writes the report to the file and nothing to stdout but the program's output."""
    _write(in_tmp, "step.py", HAZARDS)
    assert main(["check", "--format", "jsonl", "--output", "report.jsonl", "step.py"]) == 1
    assert capsys.readouterr().out == "finished\n"
    diagnostics, _ = _jsonl((in_tmp / "report.jsonl").read_text(encoding="utf-8"))
    assert len(diagnostics) == 2


def test_check_missing_script_is_a_one_line_usage_error(in_tmp: Path, capsys) -> None:
    """A script that does not exist exits 2 with one line on stderr and no traceback."""
    assert main(["check", "nope.py"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "graphguard check: cannot open 'nope.py': no such file or directory"
    ]
    assert captured.out == ""


def test_check_syntax_error_is_a_usage_error(in_tmp: Path, capsys) -> None:
    """A script that does not compile cannot start: exit 2 and one line naming file and line."""
    _write(in_tmp, "broken.py", "x = 1\ndef f(:\n")
    assert main(["check", "broken.py"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "broken.py:2: SyntaxError" in line


def test_check_raising_script_without_hazards_exits_3(in_tmp: Path, capsys) -> None:
    """A program that raises before any hazard exits 3 with one line and no traceback."""
    _write(in_tmp, "fails.py", "raise ValueError('boom')\n")
    assert main(["check", "fails.py"]) == 3
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["graphguard check: fails.py raised ValueError: boom"]
    assert "Traceback" not in captured.out + captured.err


def test_check_raising_script_keeps_hazards_found_before(in_tmp: Path, capsys) -> None:
    """Hazards collected before the program raised are reported, and the exit status is 1."""
    _write(in_tmp, "late.py", HAZARDS + "raise RuntimeError('late failure')\n")
    assert main(["check", "--format", "jsonl", "late.py"]) == 1
    captured = capsys.readouterr()
    diagnostics, summary = _jsonl(captured.out)
    assert len(diagnostics) == 2
    assert summary["error"] == "RuntimeError: late failure" and not summary["completed"]
    assert "graphguard check: late.py raised RuntimeError: late failure" in captured.err


def test_check_nonzero_sys_exit_counts_as_failure(in_tmp: Path, capsys) -> None:
    """sys.exit(4) from the program is reported as SystemExit and exits 3; sys.exit(0) is clean."""
    _write(in_tmp, "exit4.py", "import sys\nsys.exit(4)\n")
    _write(in_tmp, "exit0.py", "import sys\nsys.exit(0)\n")
    assert main(["check", "exit4.py"]) == 3
    assert "raised SystemExit: 4" in capsys.readouterr().err
    assert main(["check", "exit0.py"]) == 0


def test_check_module_form_passes_arguments(in_tmp: Path, capsys) -> None:
    """-m MODULE runs the module as __main__ and every later argument reaches the program."""
    package = in_tmp / "gg_cli_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    _write(
        package,
        "train.py",
        """\
        import sys
        import torch, graphguard; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
        print("argv:", sys.argv[1:])
        x = torch.ones(4, device=DEVICE)
        with graphguard.capture():
            x.nonzero()  # HAZARD GG105
        """,
    )
    status = main(["check", "--format", "jsonl", "-m", "gg_cli_pkg.train", "--lr", "0.1"])
    captured = capsys.readouterr()
    assert status == 1
    assert "argv: ['--lr', '0.1']" in captured.err
    diagnostics, summary = _jsonl(captured.out)
    assert [d["code"] for d in diagnostics] == ["GG105"]
    assert summary["target"] == "-m gg_cli_pkg.train"


def test_check_unknown_module_is_a_usage_error(in_tmp: Path, capsys) -> None:
    """-m with a module that does not exist exits 2 with one line."""
    assert main(["check", "-m", "gg_no_such_module_here"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("graphguard check: cannot run module 'gg_no_such_module_here'")


def test_check_function_audits_an_undecorated_function(in_tmp: Path, capsys) -> None:
    """--function audits every call of a plain function, here called three times."""
    script = _write(
        in_tmp,
        "plain.py",
        """\
        import torch; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

        def train_step(x):
            return x.sum().item()  # HAZARD GG101

        x = torch.ones(4, device=DEVICE)
        for _ in range(3):
            train_step(x)
        x.sum().item()  # outside train_step: not audited
        """,
    )
    assert main(["check", "--format", "jsonl", "--function", "train_step", "plain.py"]) == 1
    diagnostics, _ = _jsonl(capsys.readouterr().out)
    assert [(d["code"], d["lineno"]) for d in diagnostics] == _marked_lines(script)
    assert diagnostics[0]["occurrences"] == 3
    assert diagnostics[0]["label"] == "__main__:train_step"


def test_check_function_matches_methods_and_module(in_tmp: Path, capsys) -> None:
    """MODULE:QUALNAME matches a method of the script (module __main__), and nothing else."""
    _write(
        in_tmp,
        "methods.py",
        """\
        import torch; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

        class Trainer:
            def step(self, x):
                return x.nonzero()

        def step(x):
            return x.sum().item()

        x = torch.ones(4, device=DEVICE)
        Trainer().step(x)
        step(x)
        """,
    )
    spec = "__main__:Trainer.step"
    assert main(["check", "--format", "jsonl", "--function", spec, "methods.py"]) == 1
    diagnostics, _ = _jsonl(capsys.readouterr().out)
    assert [d["code"] for d in diagnostics] == ["GG105"]


def test_check_function_follows_threads_and_exceptions(in_tmp: Path, capsys) -> None:
    """--function audits calls in threads the program starts and calls that end by raising."""
    script = _write(
        in_tmp,
        "threads.py",
        """\
        import threading
        import torch; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

        x = torch.ones(4, device=DEVICE)

        def step():
            x.sum().item()  # HAZARD GG101

        def failing_step():
            x.nonzero()  # HAZARD GG105
            raise KeyError("handled below")

        worker = threading.Thread(target=step)
        worker.start()
        worker.join()
        try:
            failing_step()
        except KeyError:
            pass
        x.sum().item()  # after the audited calls: not audited
        """,
    )
    argv = ["check", "--format", "jsonl", "--function", "step", "--function", "failing_step"]
    assert main([*argv, "threads.py"]) == 1
    diagnostics, summary = _jsonl(capsys.readouterr().out)
    assert [(d["code"], d["lineno"]) for d in diagnostics] == _marked_lines(script)
    assert diagnostics[0]["thread"] != "MainThread" and summary["completed"]


def test_check_function_that_never_runs_is_reported(in_tmp: Path, capsys) -> None:
    """A --function that matched no call is named on stderr (a typo otherwise passes silently)."""
    _write(in_tmp, "clean.py", CLEAN)
    assert main(["check", "--function", "trian_step", "clean.py"]) == 0
    assert "graphguard check: --function trian_step matched no call" in capsys.readouterr().err


def test_check_bad_function_spec_is_a_usage_error(in_tmp: Path, capsys) -> None:
    """A malformed --function value exits 2 before running anything."""
    _write(in_tmp, "clean.py", CLEAN)
    assert main(["check", "--function", "pkg:", "clean.py"]) == 2
    captured = capsys.readouterr()
    assert "--function 'pkg:' is not valid" in captured.err and "finished" not in captured.out


def test_check_restores_process_state(in_tmp: Path, capsys) -> None:
    """After check, the overrides, sys.argv, sys.path and the profile hook are as before."""
    _write(in_tmp, "step.py", HAZARDS)
    argv, path, profile = sys.argv[:], sys.path[:], sys.getprofile()
    main(["check", "--function", "anything", "step.py", "--flag"])
    capsys.readouterr()
    assert not _state.overrides.force_audit and not _state.overrides.collect
    assert sys.argv == argv and sys.path == path and sys.getprofile() is profile


def test_check_keeps_library_events_off_stdout(in_tmp: Path, capsys) -> None:
    """graphguard's structlog events are not printed while check runs (the report is)."""
    _write(in_tmp, "step.py", HAZARDS)
    main(["check", "step.py"])
    captured = capsys.readouterr()
    assert "graphguard.hazard" not in captured.out + captured.err


def test_check_verbose_logs_hazards_to_stderr(in_tmp: Path, capsys) -> None:
    """With --verbose, hazard events are written to stderr as they happen."""
    _write(in_tmp, "step.py", HAZARDS)
    main(["check", "--verbose", "step.py"])
    captured = capsys.readouterr()
    assert "graphguard.hazard" in captured.err and "graphguard.hazard" not in captured.out


def test_main_restores_structlog_configuration() -> None:
    """main() leaves structlog configured exactly as it found it."""
    before, configured = structlog.get_config(), structlog.is_configured()
    main(["rules"])
    assert structlog.get_config() == before and structlog.is_configured() == configured


# --- rules ----------------------------------------------------------------------------------------
def test_rules_lists_the_catalog(capsys) -> None:
    """`rules` prints one line per rule: code, kind, slug and title."""
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    for rule in graphguard.RULES.values():
        line = next(x for x in out.splitlines() if x.startswith(rule.code))
        assert rule.kind in line and rule.slug in line and line.endswith(rule.title)


def test_rules_json_lists_the_catalog(capsys) -> None:
    """`rules --format json` is a JSON list of the rules with code, kind, slug and title."""
    assert main(["rules", "--format", "json"]) == 0
    rules = json.loads(capsys.readouterr().out)
    assert [r["code"] for r in rules] == sorted(graphguard.RULES)
    assert {"code", "kind", "slug", "title"} <= set(rules[0])


def test_rules_shows_one_rule_page(capsys) -> None:
    """`rules GG101` prints the same page as docs/rules/GG101.md (case-insensitive code)."""
    assert main(["rules", "gg101"]) == 0
    assert capsys.readouterr().out == render_rule(graphguard.get_rule("GG101"))


def test_rules_filters_by_kind(capsys) -> None:
    """`rules rng-state` lists only the rules of that kind."""
    assert main(["rules", "rng-state"]) == 0
    codes = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:2] == "GG"]
    assert codes == [r.code for r in graphguard.RULES.values() if r.kind == "rng-state"]


def test_rules_unknown_code_is_a_one_line_error(capsys) -> None:
    """An unknown code exits 2 with one line naming the known codes."""
    assert main(["rules", "GG000"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("graphguard rules: unknown rule 'GG000'") and "GG101" in line


def test_rules_write_docs_regenerates_pages(tmp_path: Path, capsys) -> None:
    """`rules --write-docs DIR` writes every rule page and the index."""
    assert main(["rules", "--write-docs", str(tmp_path / "rules")]) == 0
    capsys.readouterr()
    for code, rule in graphguard.RULES.items():
        assert (tmp_path / "rules" / f"{code}.md").read_text(encoding="utf-8") == render_rule(rule)
    assert (tmp_path / "rules" / "README.md").exists()


# --- doctor, version, usage -----------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_doctor_reports_cuda_unavailable_on_cpu(capsys) -> None:
    """doctor runs on a CPU machine, reports CUDA unavailable and skips the capture test."""
    assert main(["doctor", "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"]["cuda_available"] is False
    assert info["torch"]["cuda_graph"] == "skipped (no CUDA)"
    assert info["graphguard"] == {"version": graphguard.__version__, "self_test": "ok"}
    assert info["features"]["torch_function_mode"] is True
    assert set(info["logging"]) >= {"structlog_configured", "GRAPHGUARD_LOG", "json_logs"}


def test_doctor_text_report(capsys) -> None:
    """doctor's text report names torch, CUDA, the capture test, features and logging."""
    main(["doctor"])
    out = capsys.readouterr().out
    for heading in ("graphguard", "torch", "cuda", "cuda graph", "features", "logging"):
        assert any(line.startswith(heading) for line in out.splitlines()), heading
    assert torch.__version__ in out


def test_version(capsys) -> None:
    """--version prints the package version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"graphguard {graphguard.__version__}"


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    """graphguard with no command prints the help (listing the commands) and exits 2."""
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: graphguard" in err and "check" in err and "doctor" in err


def test_bad_option_is_a_one_line_error(capsys) -> None:
    """An unknown option exits 2 with a single line on stderr."""
    assert main(["rules", "--bogus"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "unrecognized arguments: --bogus" in line


def test_certify_unavailable_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """If the certify module cannot be imported, certify exits 2 with one line."""
    monkeypatch.setitem(sys.modules, "graphguard._certify", None)
    assert main(["certify"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("graphguard certify: not available")


# --- as a real process ----------------------------------------------------------------------------
def test_python_dash_m_graphguard_check_in_a_subprocess(tmp_path: Path) -> None:
    """`python -m graphguard check` in a fresh process finds the hazards and exits 1."""
    _write(tmp_path, "step.py", HAZARDS)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-m", "graphguard", "check", "--format", "jsonl", "step.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    diagnostics, summary = _jsonl(proc.stdout)
    assert [d["code"] for d in diagnostics] == ["GG101", "GG105"] and summary["hazards"] == 2
    assert "Traceback" not in proc.stderr and "graphguard.hazard" not in proc.stdout
