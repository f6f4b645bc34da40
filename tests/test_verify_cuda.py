"""graphed(..., verify=5) on a GPU: graphs that replay wrong are GG901, legal steps are silent.

All cases run in one child process (``tests/verify_cases.py``), one JSON record each; every
test below asserts one case's record. Cases whose packages are missing are skipped, by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verify_cases as vc

pytestmark = pytest.mark.cuda

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    done = subprocess.run(
        [sys.executable, str(HERE / "verify_cases.py"), *vc.BY_NAME],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    out = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            record = json.loads(line[len("RESULT ") :])
            out[record["case"]] = record
    assert out, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", [c.name for c in vc.CASES if c.expect == "GG901"])
def test_wrong_replay_is_reported_with_the_differing_path(records, name) -> None:
    record = records[name]
    if "skipped" in record:
        pytest.skip(f"needs {record['skipped']}")
    assert record.get("verdict") == "GG901", record
    assert record["replay"] == 1, record  # on the first verified replay
    assert " differs from the eager step at " in record["message"]


@pytest.mark.parametrize("name", [c.name for c in vc.CASES if c.expect is None])
def test_legal_step_verifies_clean_over_five_replays(records, name) -> None:
    record = records[name]
    if "skipped" in record:
        pytest.skip(f"needs {record['skipped']}")
    assert record.get("verdict") == "legal", record
    assert record["graphs"] == 1
