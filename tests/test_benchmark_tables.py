"""The committed DSA benchmark tables are what their scripts render from the committed raw
results: no hand-edited cell, and every variant the table calls equal was checked equal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

from benchmarks import dsa_scorer_variants, dsa_topk_methods

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _meta(table: str) -> dict[str, str]:
    """The card, versions and date that the table's first two lines name."""
    gpu = re.search(r"^# .* \((.+)\)$", table, re.M)
    versions = re.search(r"^torch (\S+), triton (\S+), (.+?)\. Command", table, re.M)
    assert gpu and versions, "the table names no card or versions"
    return {"gpu": gpu[1], "torch": versions[1], "triton": versions[2], "date": versions[3]}


@pytest.mark.parametrize(
    ("script", "stem"),
    [
        (dsa_topk_methods, "dsa_topk_methods-h200"),
        (dsa_scorer_variants, "dsa_scorer_variants-h200"),
    ],
)
def test_committed_table_is_rendered_from_its_raw_results(script: ModuleType, stem: str) -> None:
    table = (RESULTS / f"{stem}.md").read_text()
    rows = json.loads((RESULTS / f"{stem}.json").read_text())
    assert rows, "no raw results"
    assert script.render(rows, _meta(table)) == table


def test_every_top_k_method_variant_returned_the_merge_methods_result() -> None:
    rows = json.loads((RESULTS / "dsa_topk_methods-h200.json").read_text())
    methods = {row["method"] for row in rows}
    assert methods == {"merge", "histogram", "bucket", "rows"}
    assert all(row["same"] is True for row in rows)


def test_render_without_its_metadata_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    raw = str(RESULTS / "dsa_topk_methods-h200.json")
    with pytest.raises(SystemExit) as exit_info:
        dsa_topk_methods.main(["--render", raw])
    assert exit_info.value.code == 2
    assert "--render needs --meta with gpu, torch, triton, date" in capsys.readouterr().err


def test_committed_speed_table_is_rendered_from_its_raw_results() -> None:
    """dsa_speed-h200.md (issue 14's table, and the scorer sweep of that run) from
    dsa_speed-h200.json, goals and verdicts too."""
    from benchmarks import dsa_speed

    raw = json.loads((RESULTS / "dsa_speed-h200.json").read_text())
    table = (RESULTS / "dsa_speed-h200.md").read_text()
    assert dsa_speed.render_document(raw) == table
    shapes = {(row["B"], row["L"]) for row in raw["rows"]}
    assert shapes == {(1, 4096), (1, 65536), (64, 4096), (64, 65536)}


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message a machine without CUDA gets"
)
@pytest.mark.parametrize("script", [dsa_topk_methods, dsa_scorer_variants])
def test_measuring_without_cuda_says_so(
    script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert script.main([]) == 2
    name = Path(script.__file__ or "").name
    assert capsys.readouterr().err.strip() == f"{name} needs a CUDA GPU"
