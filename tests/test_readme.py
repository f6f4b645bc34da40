"""The README's quick start runs as written and prints what the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the README shows this snippet's output without a GPU"
)
def test_readme_quick_start_runs(tmp_path) -> None:
    """The first python block of the README reports GG102 at its `if` line, then no hazard."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "quick.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "GG102 [host-sync] Python control flow on a device tensor" in out.stdout
    assert f"{script}:9 in step" in out.stdout
    assert out.stdout.rstrip().endswith("hazards: 0")
