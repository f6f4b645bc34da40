"""The pytest plugin: graph_safe marker, fixture and option; a hazard fails with its diagnostic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

# Inputs come from a fixture: in audit mode on a CPU machine, tensors made before the test body
# stand for device tensors (ones the body makes on the CPU itself are host tensors).
PREAMBLE = """\
import pytest
import torch; DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

import graphguard


@pytest.fixture
def x():
    return torch.ones(4, device=DEVICE)


def step(t):
    return t.sum().item()  # HAZARD
"""


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs load the plugin with -p only, whether or not graphguard is installed."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def _tests(pytester: pytest.Pytester, body: str) -> Path:
    return pytester.makepyfile(test_steps=PREAMBLE + "\n\n" + body)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "graphguard.pytest_plugin", "--strict-markers", *args)


def _failure_text(result: pytest.RunResult) -> str:
    """The failure reports of the run's output, without the captured output of the tests."""
    text = result.stdout.str()
    start = text.index("= FAILURES =")
    kept, in_captured = [], False
    for line in text[start : text.index("short test summary info", start)].splitlines():
        if line.startswith("-") and " Captured " in line:
            in_captured = True  # until the next test's "____ name ____" header
        elif line.startswith("_"):
            in_captured = False
        if not in_captured:
            kept.append(line)
    return "\n".join(kept)


def test_marked_test_with_hazard_fails_with_the_diagnostic(pytester: pytest.Pytester) -> None:
    """A marked test with a hazard fails; its report has the code, the user's line and the fix."""
    path = _tests(
        pytester,
        """\
@pytest.mark.graph_safe
def test_step(x):
    step(x * 2)
""",
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    failure = _failure_text(result)
    lines = path.read_text().splitlines()
    hazard = next(i for i, text in enumerate(lines, 1) if "# HAZARD" in text)
    call = next(i for i, text in enumerate(lines, 1) if "step(x * 2)" in text)
    assert "GG101 [host-sync] a device value is read on the host" in failure
    assert f"{path}:{hazard} in step" in failure
    assert "return t.sum().item()  # HAZARD" in failure
    assert f"test_steps.py:{call}: in test_step\n    step(x * 2)" in failure
    assert "= fix: Keep the value on the device" in failure and "docs/rules/GG101.md" in failure


def test_failure_report_shows_only_the_users_frames(pytester: pytest.Pytester) -> None:
    """The failure shows the user's frames only: no graphguard, torch, pytest or pluggy files."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe
def test_step(x):
    step(x)
""",
    )
    failure = _failure_text(_run(pytester))
    internals = ("/graphguard/", "/torch/", "/_pytest/", "/pluggy/", "site-packages")
    for internal in internals:
        assert internal not in failure, internal
    assert "Traceback" not in failure and "HostSyncError" not in failure


def test_summary_line_names_the_hazard(pytester: pytest.Pytester) -> None:
    """The short summary line of a failed test carries the code and title."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe
def test_step(x):
    step(x)
""",
    )
    result = _run(pytester, "-ra")
    result.stdout.re_match_lines(
        [r"FAILED test_steps\.py::test_step - GG101 \[host-sync\] a device"]
    )


def test_marked_clean_test_passes(pytester: pytest.Pytester) -> None:
    """A marked test whose body is capture-safe passes."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe
def test_step(x):
    y = torch.where(x > 0, x, 0.0)
    assert y.shape == (4,)
""",
    )
    _run(pytester).assert_outcomes(passed=1)


def test_unmarked_test_is_not_guarded(pytester: pytest.Pytester) -> None:
    """Without marker, fixture or option, the plugin leaves a test alone."""
    _tests(
        pytester,
        """\
def test_step(x):
    assert step(x) == 4.0
""",
    )
    _run(pytester).assert_outcomes(passed=1)


def test_command_line_option_guards_unmarked_tests(pytester: pytest.Pytester) -> None:
    """--graph-safe guards every test, marked or not."""
    _tests(
        pytester,
        """\
def test_step(x):
    step(x)

def test_clean(x):
    x.mul_(2)
""",
    )
    result = _run(pytester, "--graph-safe")
    result.assert_outcomes(failed=1, passed=1)
    assert "graphguard: every test body runs under graph_safe (audit)" in result.stdout.str()


def test_ini_option_guards_unmarked_tests(pytester: pytest.Pytester) -> None:
    """graph_safe = true in the ini file guards every test (and passes --strict-config)."""
    pytester.makeini("[pytest]\ngraph_safe = true\n")
    _tests(
        pytester,
        """\
def test_step(x):
    step(x)
""",
    )
    _run(pytester, "--strict-config").assert_outcomes(failed=1)


def test_marker_enabled_false_opts_out_of_suite_wide_guard(pytester: pytest.Pytester) -> None:
    """@pytest.mark.graph_safe(enabled=False) exempts one test from --graph-safe."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe(enabled=False)
def test_step(x):
    assert step(x) == 4.0
""",
    )
    _run(pytester, "--graph-safe").assert_outcomes(passed=1)


def test_fixture_applies_the_guard(pytester: pytest.Pytester) -> None:
    """Requesting the graph_safe fixture guards the test without a marker."""
    _tests(
        pytester,
        """\
def test_step(graph_safe, x):
    x[x > 0]
""",
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    assert "GG105 [host-sync]" in _failure_text(result)


def test_fixture_exposes_the_running_region(pytester: pytest.Pytester) -> None:
    """The fixture's value describes the guard and holds the running graphguard.Capture."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe(allow=["GG402"])
def test_step(graph_safe, x):
    assert graph_safe.mode == "audit" and graph_safe.allow == ("GG402",)
    assert graph_safe.region.mode == "audit"
    assert graph_safe.region.label == "test_steps.py::test_step"
""",
    )
    _run(pytester).assert_outcomes(passed=1)


def test_marker_allow_suppresses_for_the_whole_test(pytester: pytest.Pytester) -> None:
    """allow=[...] on the marker lets the named codes or kinds through the whole test."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe(allow=["gg101", "host-sync"])
def test_step(x):
    step(x)
    x.nonzero()
""",
    )
    _run(pytester).assert_outcomes(passed=1)


def test_graphguard_allow_inside_the_test_suppresses_one_call_site(
    pytester: pytest.Pytester,
) -> None:
    """graphguard.allow() around one call lets that call through and keeps the guard elsewhere."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe
def test_allowed(x):
    with graphguard.allow("GG101"):
        step(x)

@pytest.mark.graph_safe
def test_still_guarded(x):
    with graphguard.allow("GG101"):
        step(x)
    x.nonzero()
""",
    )
    result = _run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    assert "GG105" in _failure_text(result)


def test_bad_marker_argument_fails_with_one_message(pytester: pytest.Pytester) -> None:
    """An invalid marker option fails the test with a message naming the allowed values."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe(mode="fast")
def test_step(x):
    pass
""",
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    failure = _failure_text(result)
    assert "graph_safe(mode='fast') is not valid; allowed values:" in failure
    assert "Traceback" not in failure and "During handling" not in failure


def test_fixture_lists_the_hazards_of_the_body(pytester: pytest.Pytester) -> None:
    """After the body, graph_safe.hazards lists what the region reported, even if it was caught."""
    pytester.makeconftest(
        """\
import pytest

@pytest.fixture
def check_hazards_after(graph_safe):
    yield
    assert [d.code for d in graph_safe.hazards] == ["GG101"]
"""
    )
    _tests(
        pytester,
        """\
def test_step(check_hazards_after, x):
    with pytest.raises(graphguard.HostSyncError):
        step(x)
""",
    )
    _run(pytester).assert_outcomes(passed=1)


def test_unknown_allow_value_fails_with_one_message(pytester: pytest.Pytester) -> None:
    """An allow= value that is neither a code nor a kind fails the test naming the valid ones."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe(allow=["scalar-read"])
def test_step(x):
    pass
""",
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    failure = _failure_text(result)
    assert "allow=['scalar-read']" in failure and "GG101" in failure and "host-sync" in failure
    assert "Traceback" not in failure and "ConfigError" not in failure


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    """The marker is listed by --markers, so --strict-markers accepts it."""
    result = _run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.graph_safe(mode='audit', allow=(), enabled=True):*"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_capture_mode_without_cuda_skips(pytester: pytest.Pytester) -> None:
    """mode="capture" needs CUDA: without it the test is skipped with the reason."""
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe(mode="capture")
def test_step(x):
    pass
""",
    )
    result = _run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*graph_safe(mode='capture') needs a CUDA device*"])


def test_plugin_works_in_a_separate_process(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a fresh pytest process the marker fails a hazardous test with the diagnostic."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    _tests(
        pytester,
        """\
@pytest.mark.graph_safe
def test_step(x):
    step(x)

@pytest.mark.graph_safe
def test_clean(x):
    x.add_(1)
""",
    )
    result = pytester.runpytest_subprocess("-p", "graphguard.pytest_plugin", "--strict-markers")
    result.assert_outcomes(failed=1, passed=1)
    assert "GG101 [host-sync]" in _failure_text(result)
