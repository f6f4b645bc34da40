"""The rule catalog is one table, and everything that describes rules is generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import graphguard
from graphguard._docs import render_index, render_rule

DOCS = Path(__file__).resolve().parent.parent / "docs" / "rules"


def test_codes_are_stable_format_and_kinds_known() -> None:
    """Every code is GG plus three digits and every rule's kind is a public kind."""
    for code, rule in graphguard.RULES.items():
        assert re.fullmatch(r"GG\d{3}", code) and rule.code == code
        assert rule.kind in graphguard.KINDS


def test_contract_kinds_are_present() -> None:
    """The hazard kinds named by the contract exist with these exact strings."""
    for kind in (
        "host-sync",
        "pinned-alloc",
        "stream-escape",
        "pageable-copy",
        "rng-state",
        "stale-host-scalar",
        "stale-output",
    ):
        assert kind in graphguard.KINDS
        assert any(r.kind == kind for r in graphguard.RULES.values())


@pytest.mark.parametrize("code", sorted(graphguard.RULES))
def test_rule_doc_page_is_current(code: str) -> None:
    """docs/rules/<code>.md exists and equals the page rendered from the table."""
    page = DOCS / f"{code}.md"
    assert page.exists(), (
        f"missing {page}; run `python -m graphguard rules --write-docs docs/rules`"
    )
    text = page.read_text(encoding="utf-8")
    assert text == render_rule(graphguard.get_rule(code))
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
        assert heading in text


def test_rule_index_is_current() -> None:
    """docs/rules/README.md lists every rule and equals the rendered index."""
    assert (DOCS / "README.md").read_text(encoding="utf-8") == render_index()


def test_get_rule_names_known_codes_on_error() -> None:
    """An unknown code raises KeyError listing the known ones; lookup is case-insensitive."""
    assert graphguard.get_rule("gg101").code == "GG101"
    with pytest.raises(KeyError, match="GG101"):
        graphguard.get_rule("GG000")
