"""graphed(..., verify=5) on real steps: verdicts and what a verified replay costs.

Runs every case of ``tests/verify_cases.py`` in its own process (a wrong replay can trip a
device-side assert), on the GPU: graphs that replay wrong must be GG901 on the first verified
replay, legal steps must verify clean over 5 replays with changing inputs. The cost columns
are host wall-clock times of one call, device synchronised, minimum over the calls: a verified
replay (snapshot, replay, eager shadow run, comparison, restore) against a plain replay of the
same graph, measured in the same process.

    python benchmarks/verify.py [--out results.md] [CASE ...]
    python benchmarks/verify.py --records FILE [--out results.md]

``--records`` renders the table from the JSON lines ``tests/test_verify_cuda.py`` writes when
``GRAPHGUARD_VERIFY_RECORDS=FILE`` is set (the same runs, one record per case).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import verify_cases as vc  # noqa: E402


def run(name: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "verify_cases.py"), name],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"case": name, "error": (done.stderr or done.stdout)[-300:]}
    return json.loads(lines[-1][len("RESULT ") :])


def table(records: list[dict]) -> str:
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    rows = [
        f"graphed(..., verify={vc.REPLAYS}) on {card}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}",
        "",
        "| case | expected | verdict | first difference (replay) | verified call | plain replay "
        "| ratio |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in records:
        case = vc.BY_NAME[r["case"]]
        if "skipped" in r:
            rows.append(f"| {case.what} | | skipped: needs {', '.join(r['skipped'])} | | | | |")
            continue
        if "error" in r:
            rows.append(f"| {case.what} | | error: {r['error'][:120]} | | | | |")
            continue
        where = ""
        if r["verdict"] != "legal":
            first = r["details"][0]
            where = f"`{first[0]}`: {first[1]} (replay {r['replay']})"
        cost = ratio = plain = ""
        if r.get("verified_call_ms") is not None and r.get("plain_call_ms"):
            cost = f"{r['verified_call_ms']:.2f} ms"
            plain = f"{r['plain_call_ms']:.3f} ms"
            ratio = f"{r['verified_call_ms'] / r['plain_call_ms']:.0f}x"
        mark = "" if r.get("ok") else " **(unexpected)**"
        rows.append(
            f"| {case.what} | {r['expect']} | {r['verdict']}{mark} | {where} | {cost} | {plain} "
            f"| {ratio} |"
        )
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--records", type=Path, help="render these records instead of running")
    parser.add_argument("cases", nargs="*", default=list(vc.BY_NAME))
    ns = parser.parse_args()
    records = []
    if ns.records is not None:
        records = [json.loads(line) for line in ns.records.read_text().splitlines() if line]
    for name in [] if ns.records is not None else ns.cases:
        records.append(run(name))
        print(json.dumps(records[-1])[:300], flush=True)
    text = table(records)
    print(text)
    if ns.out:
        ns.out.write_text(text)
    return 0 if all(r.get("ok", "skipped" in r) for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
