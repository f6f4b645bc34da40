"""Every program in examples/ runs as a user runs it and prints what its docstring promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _env import child_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

#: Lines each example must print (substrings of stdout), whatever the device.
EXPECTED: dict[str, tuple[str, ...]] = {
    "01_lr_scheduler_baked.py": (
        "call 4 refused before replay:",
        "GG601 [stale-host-scalar] a Python scalar baked into the graph has changed",
        "SGD.param_groups[0]['lr'] was 0.1 when 'train_step' was captured and is 0.05 now",
        "fix 1 (re-capture on lr change): 3 graphs, weights equal eager training",
        "fix 2 (on_hazard='fallback'): eager from the lr change, weights equal eager training",
    ),
    "02_decode_loop_shape_classes.py": (
        "step  2: batch 5 -> bucket 8, logits (5, 32)",
        "16 steps equal the eager model; stats: calls=16 graphs=4",
        "kept logits read after the next step: GG701 [stale-output]",
        "with clone_outputs=True the kept logits stay valid",
    ),
    "03_fix_unsafe_step.py": (
        "summary: A 4 -> B 2 -> C 0 hazards; losses equal version A's: yes",
        "version C graphed: 3 calls equal eager",
    ),
    "04_json_logs.py": (
        "2 JSON events written",
        "event=graphguard.hazard level=warning action=logged code=GG101 kind=host-sync",
        "event=graphguard.hazard level=warning action=logged code=GG105 kind=host-sync",
        "no tensor values in the log: yes",
    ),
    "05_dsa_certify.py": (
        "[PASS] semantics",
        "[PASS] refusal (audit)",
        "certified: semantics, refusal (audit)",
        "the diagnostic names dsa.unpatched_hazard_lines().validation",
        "patched update: 0 hazards, same mask as the unpatched form",
    ),
    "06_cosine_lr_graphed.py": (
        "step 11: loss",
        "lr changed at every step: yes (12 distinct values)",
        "parameters equal the eager twin: yes",
        "graphed stats: calls=12 graphs=1 eager=False",
        "without graph_safe_optimizer: GG602 AdamW.step() at `optimizer.step()`",
    ),
}


def test_every_example_has_expectations() -> None:
    """Each examples/*.py is listed in EXPECTED, and each listed example exists."""
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    """The example exits 0 and prints its expected lines, ending with OK."""
    env = child_env()  # the examples choose their own logging
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, report
    for line in EXPECTED.get(path.name, ()):
        assert line in proc.stdout, f"missing {line!r}\n{report}"
    assert proc.stdout.splitlines()[-1] == "OK", report
