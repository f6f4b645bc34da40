"""graphed(..., verify=5) on a GPU: graphs that replay wrong are GG901, legal steps are silent.

Each case runs in its own child process (``tests/verify_cases.py CASE``: a replay that trips a
device-side assert would poison the process for the cases after it), one JSON record each.
Cases whose packages are missing are skipped, by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _env import child_env

sys.path.insert(0, str(Path(__file__).resolve().parent))
import verify_cases as vc

# one fixture runs every case in its own process (a few minutes): more than the default limit
pytestmark = [pytest.mark.cuda, pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    env = child_env()
    out = {}
    for name in vc.BY_NAME:
        done = subprocess.run(
            [sys.executable, str(HERE / "verify_cases.py"), name],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        out[name] = (
            json.loads(lines[-1][len("RESULT ") :])
            if lines
            else {"case": name, "error": done.stdout[-2000:] + done.stderr[-2000:]}
        )
    keep = os.environ.get("GRAPHGUARD_VERIFY_RECORDS")  # for benchmarks/verify.py --records
    if keep:
        Path(keep).write_text("".join(json.dumps(r) + "\n" for r in out.values()))
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
