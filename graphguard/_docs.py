"""Rule pages rendered from the catalog: ``docs/rules/<code>.md`` and ``graphguard rules CODE``."""

from __future__ import annotations

from pathlib import Path

from ._rules import Rule, iter_rules

__all__ = ["render_index", "render_rule", "write_rule_docs"]


def render_rule(rule: Rule) -> str:
    """The rule's page: What it does / Why is this bad? / Example / Use instead."""
    return "\n".join(
        [
            f"# {rule.code} `{rule.slug}`: {rule.title}",
            "",
            f"Kind: `{rule.kind}`. Error class: `graphguard.{_error_name(rule.kind)}`.",
            "",
            "## What it does",
            "",
            f"Reports this hazard ({rule.title}) {rule.detected}.",
            "",
            "## Why is this bad?",
            "",
            rule.why,
            "",
            f"What torch does on its own: {rule.torch_behaviour}",
            "",
            "## Example",
            "",
            "```python",
            rule.example,
            "```",
            "",
            "## Use instead",
            "",
            rule.fix,
            "",
            "```python",
            rule.use_instead,
            "```",
            "",
            "If this call site is known to be safe, allow it there and nowhere else:",
            "",
            "```python",
            f'with graphguard.allow("{rule.code}"):',
            "    ...",
            "```",
            "",
        ]
    )


def render_index() -> str:
    lines = [
        "# Hazard rules",
        "",
        "Every diagnostic carries one of these stable codes. Codes are never reused.",
        "",
        "| code | kind | rule | title |",
        "| --- | --- | --- | --- |",
    ]
    for rule in iter_rules():
        lines.append(
            f"| [{rule.code}]({rule.code}.md) | `{rule.kind}` | `{rule.slug}` | {rule.title} |"
        )
    return "\n".join(lines) + "\n"


def write_rule_docs(directory: str | Path) -> list[Path]:
    """Write every rule page and the index into ``directory``; returns the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rule in iter_rules():
        path = out / f"{rule.code}.md"
        path.write_text(render_rule(rule), encoding="utf-8")
        written.append(path)
    index = out / "README.md"
    index.write_text(render_index(), encoding="utf-8")
    written.append(index)
    return written


def _error_name(kind: str) -> str:
    from ._errors import error_class_for

    return error_class_for(kind).__name__
