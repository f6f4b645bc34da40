"""Statements in docs/ (contract, getting started, set-up) that hold as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _env import child_env

import graphguard

ROOT = Path(__file__).resolve().parent.parent


def test_contract_stats_is_a_dict_property() -> None:
    """`step.stats` is a dict with the keys docs/contract.md lists, read without a call."""
    step = graphguard.graphed(lambda x: x * 2)
    step(torch.ones(2))
    assert set(step.stats) == {"calls", "graphs", "replays", "eager", "eager_reason"}
    assert step.stats["calls"] == 1 and "step.stats()" not in _doc("contract.md")


def test_module_stats_matches_function_stats() -> None:
    """`fast_model.stats` of a graphed module is the same dict as for a function."""
    fast = graphguard.graphed(torch.nn.Linear(2, 2))
    with torch.no_grad():
        fast(torch.ones(1, 2))
    assert set(fast.stats) == {"calls", "graphs", "replays", "eager", "eager_reason"}


def test_getting_started_diagnostic_fields_exist(ctx) -> None:
    """The fields getting-started.md prints for each hazard (code, location, title) exist."""
    with graphguard.capture(mode="audit", on_hazard="warn") as cap:
        ctx.x.sum().item()
    d = cap.hazards[0]
    assert (d.code, d.title) == ("GG101", graphguard.get_rule("GG101").title)
    assert isinstance(d.location, str) and d.location


def test_cli_prints_no_numpy_warning_without_numpy(tmp_path) -> None:
    """The CLI run without numpy prints no 'Failed to initialize NumPy' warning from torch."""
    stub = tmp_path / "numpy"
    stub.mkdir()
    (stub / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'numpy\'", name="numpy")\n'
    )
    env = child_env(tmp_path, ROOT, keep_log=True)
    out = subprocess.run(
        [sys.executable, "-W", "default", "-m", "graphguard", "rules"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "GG101" in out.stdout
    assert "Failed to initialize NumPy" not in out.stderr


def _doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def test_wheel_ships_every_rule_page_where_diagnostics_find_it(tmp_path) -> None:
    """A pip user's diagnostics link to a page that exists: the wheel carries docs/rules as
    graphguard/_pages, byte for byte, and an installed copy resolves its links there."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    offline = ("Failed to establish a new connection", "No matching distribution found for hatch")
    if built.returncode != 0 and any(text in built.stderr for text in offline):
        pytest.skip("building the wheel needs the hatchling build backend from a package index")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("graphguard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        # the rows method's CUDA source, compiled on first use, travels with the package too
        assert zf.read("dsa/_cuda_topk.cu") == (root / "dsa" / "_cuda_topk.cu").read_bytes()
        zf.extractall(tmp_path / "site")
        for code in graphguard.RULES:
            shipped = zf.read(f"graphguard/_pages/{code}.md")
            assert shipped == (root / "docs" / "rules" / f"{code}.md").read_bytes()
    # The installed copy (no source checkout beside it) links to its own shipped pages.
    probe = (
        "import graphguard, pathlib; r = graphguard.RULES['GG101']; "
        "print(r.docs_link); print(pathlib.Path(r.docs_link).is_file())"
    )
    env = child_env(tmp_path / "site")  # the wheel's copy first, not this checkout
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
        check=True,
    )
    link, exists = done.stdout.split()
    assert link == str(tmp_path / "site" / "graphguard" / "_pages" / "GG101.md")
    assert exists == "True"


def test_diagnostic_docs_link_resolves_in_a_checkout(ctx) -> None:
    """In a source checkout the diagnostic's docs field is the page's absolute path."""
    with pytest.raises(graphguard.HazardError) as info, graphguard.capture(mode="audit"):
        ctx.x.sum().item()
    page = Path(info.value.diagnostic.docs)
    assert page.is_absolute() and page.is_file() and page.name == "GG101.md"


def _run_recipe(title: str, tmp_path: Path, capsys: Any) -> tuple[str, str]:
    """Run the first Python block after ``title`` in docs/recipes.md as printed; return the one
    line it printed that starts with a rule code, split into (code, source line)."""
    import runpy

    text = (ROOT / "docs" / "recipes.md").read_text()
    section = text[text.index(title) :]
    script = tmp_path / "recipe.py"
    script.write_text(section.split("```python\n", 1)[1].split("```", 1)[0])
    runpy.run_path(str(script), run_name="recipe")
    # the diagnostic's own log line may be printed too, depending on the logging set up
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("GG")]
    assert len(printed) == 1
    code, line = printed[0].split(" ", 1)
    return code, line


def test_hidden_host_reads_recipe_runs_as_printed(tmp_path, capsys) -> None:
    """docs/recipes.md's variable-length example: the bad step is GG101, the fix is silent."""
    code, line = _run_recipe("## Host reads hidden inside torch calls", tmp_path, capsys)
    assert code == "GG101" and line.startswith("return x[:, :n].mean(-1)")


def test_sampling_recipe_runs_as_printed(tmp_path, capsys) -> None:
    """docs/recipes.md's sampling example: a validated distribution is GG102 at the user's
    line; torch.multinomial and an unvalidated distribution are silent."""
    code, line = _run_recipe("## Sampling a token inside a captured step", tmp_path, capsys)
    assert code == "GG102" and line.startswith(
        "return Categorical(logits=logits, validate_args=True).sample()"
    )
