"""Every Python block of the README runs as printed, and the quick start prints what it shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _env import child_env

import graphguard

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(\w+)\s*\] (\S+)")


def _run(code: str, tmp_path: Path, name: str = "block.py") -> subprocess.CompletedProcess[str]:
    script = tmp_path / name
    script.write_text(code, encoding="utf-8")
    env = child_env()
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_readme_has_python_blocks() -> None:
    """The README holds the quick start and the graphed examples (at least three blocks)."""
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    """Each ```python block of the README exits 0 when run as a script, as printed."""
    out = _run(BLOCKS[index], tmp_path)
    assert out.returncode == 0, f"block {index}:\n{BLOCKS[index]}\nstderr:\n{out.stderr}"


def _quick_start() -> tuple[str, str]:
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S)
    shown = re.search(r"Output on a machine without a GPU.*?```text\n(.*?)```", README, re.S)
    assert code is not None and shown is not None
    return code.group(1), shown.group(1)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the README shows this snippet's output without a GPU"
)
def test_readme_quick_start_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """The quick start's output has the README's lines, in order, and its events and no others."""
    code, shown = _quick_start()
    out = _run(code, tmp_path, "quick.py")
    assert out.returncode == 0, out.stderr
    printed = (out.stdout + out.stderr).splitlines()
    # The README shows a pip install's paths; here the script and the page are elsewhere.
    pages = f"{graphguard.RULES['GG102'].page.parent}/"
    expected = [
        line.replace("/tmp/quick.py", str(tmp_path / "quick.py")).replace(
            "/…/site-packages/graphguard/_pages/", pages
        )
        for line in shown.splitlines()
    ]
    shown_events = [m.groups() for m in map(TIMESTAMP.match, expected) if m]
    printed_events = [m.groups() for m in map(TIMESTAMP.match, printed) if m]
    assert printed_events == shown_events
    plain_printed = [line for line in printed if not TIMESTAMP.match(line)]
    plain_shown = [line for line in expected if not TIMESTAMP.match(line)]
    assert plain_printed == plain_shown


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the README shows this snippet's output without a GPU"
)
def test_readme_quick_start_prints_no_region_events(tmp_path: Path) -> None:
    """A region that finds nothing prints nothing: no graphguard.capture.start/end lines."""
    code, _shown = _quick_start()
    out = _run(code, tmp_path, "quick.py")
    assert "graphguard.capture." not in out.stdout + out.stderr


def test_readme_graphed_block_reports_the_changed_lr(tmp_path: Path) -> None:
    """The README's graphed block prints what the README says it prints."""
    block = next(b for b in BLOCKS if 'opt.param_groups[0]["lr"] = 0.05' in b)
    out = _run(block, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == """GG601 ["SGD.param_groups[0]['lr']"]"""
    assert """prints `GG601 ["SGD.param_groups[0]['lr']"]`""" in README


def test_readme_install_line_names_the_cpu_index_and_ci_pin() -> None:
    """The set-up shows the CPU wheel index and the torch version that .ci/run pins."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    pin = re.search(r'"torch==([\d.]+)"', ci)
    assert pin is not None
    assert (
        f"pip install torch=={pin.group(1)} --index-url https://download.pytorch.org/whl/cpu"
        in README
    )


def test_readme_torch_floor_matches_pyproject() -> None:
    """The torch lower bound in pyproject.toml is the one the README states."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'"torch>=([\d.]+)"', pyproject)
    assert floor is not None
    assert f"torch >= {floor.group(1)}" in README
