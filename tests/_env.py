"""The environment of a child Python process a test starts."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env(*first: str | os.PathLike[str], keep_log: bool = False) -> dict[str, str]:
    """``os.environ`` with ``first`` (default: the repository root) ahead of ``PYTHONPATH``, so
    the child imports this checkout's graphguard and still finds its dependencies; without
    ``keep_log`` a ``GRAPHGUARD_LOG`` of the test run does not reach the child."""
    env = dict(os.environ)
    paths = [str(p) for p in (first or (ROOT,))]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    if not keep_log:
        env.pop("GRAPHGUARD_LOG", None)
    return env
