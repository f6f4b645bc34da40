"""The command line shared by the DSA benchmark scripts that print one markdown table.

``run_table_script`` measures (CUDA only) or, with ``--render``, re-renders the JSON rows an
earlier run wrote, then prints the table and writes it (``--out``) and the raw rows
(``--json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_table_script"]

Rows = list[dict[str, Any]]
META_KEYS = ("gpu", "torch", "triton", "date")


def run_table_script(
    doc: str,
    script: str,
    measure: Callable[[], Rows],
    render: Callable[[Rows, dict[str, str]], str],
    argv: list[str] | None = None,
) -> int:
    """The ``main`` of a table script: its docstring, its file name and its two functions."""
    parser = argparse.ArgumentParser(prog=script, description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--render", type=Path, help="only render a JSON file an earlier run wrote")
    parser.add_argument("--meta", default="{}", help="with --render: card, versions, date (JSON)")
    args = parser.parse_args(argv)
    if args.render:
        rows, meta = json.loads(args.render.read_text()), json.loads(args.meta)
        missing = [key for key in META_KEYS if key not in meta]
        if missing:
            parser.error(f"--render needs --meta with {', '.join(missing)} (a JSON object)")
    else:
        if not torch.cuda.is_available():
            print(f"{script} needs a CUDA GPU", file=sys.stderr)
            return 2
        import triton

        rows = measure()
        meta = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
        if args.json:
            args.json.write_text(json.dumps(rows))
    text = render(rows, meta)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0
