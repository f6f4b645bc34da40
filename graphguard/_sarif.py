"""SARIF 2.1.0 output for ``graphguard check --format sarif`` (code-scanning dashboards read it).

The log holds one run. Its rules are the whole catalog, so a viewer can show a rule's page for any
code even when this run did not report it. Each distinct hazard (code, file, line, API) is one
result with ``occurrenceCount`` saying how often it was hit; a step called a thousand times is
one finding, not a thousand.

Locations inside the project root are written relative to it with ``uriBaseId`` "%SRCROOT%",
which is what code-scanning uploads expect; locations outside it (site-packages, a script in
/tmp) stay absolute ``file://`` URIs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._diagnostic import Diagnostic
from ._docs import render_rule
from ._rules import Rule, iter_rules

__all__ = ["SARIF_SCHEMA", "SARIF_VERSION", "SRCROOT", "artifact_location", "build_sarif"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
SRCROOT = "%SRCROOT%"


def _rule_descriptor(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.code,
        "name": rule.slug,
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.why},
        "help": {"text": rule.fix, "markdown": render_rule(rule)},
        **({"helpUri": rule.page.as_uri()} if rule.page is not None else {}),
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": [rule.kind]},
    }


def artifact_location(filename: str, project_root: Path) -> dict[str, str] | None:
    """The SARIF ``artifactLocation`` of ``filename``, or ``None`` for a pseudo-file (``<stdin>``).

    ``project_root`` must be absolute. Relative filenames are taken relative to the current
    directory, as Python resolved them when the code ran.
    """
    if not filename or filename.startswith("<"):
        return None
    path = Path(os.path.abspath(filename))
    for candidate, root in ((path, project_root), (_real(path), _real(project_root))):
        try:
            relative = candidate.relative_to(root)
        except ValueError:
            continue
        return {"uri": quote(relative.as_posix()), "uriBaseId": SRCROOT}
    return {"uri": path.as_uri()}


def _real(path: Path) -> Path:
    # A root reached through a symlink (macOS /tmp, a mounted checkout) still counts as the root.
    return Path(os.path.realpath(path))


def _result(diagnostic: Diagnostic, count: int, index: int, root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": diagnostic.code,
        "ruleIndex": index,
        "level": "error",
        "message": {"text": f"{diagnostic.title}: {diagnostic.message}"},
        "occurrenceCount": count,
        "properties": {
            "kind": diagnostic.kind,
            "api": diagnostic.api,
            "phase": diagnostic.phase,
            "label": diagnostic.label,
            "function": diagnostic.function,
        },
    }
    if diagnostic.rank is not None:
        result["properties"].update(
            rank=diagnostic.rank,
            local_rank=diagnostic.local_rank,
            world_size=diagnostic.world_size,
        )
    artifact = artifact_location(diagnostic.filename, root)
    if artifact is not None:
        physical: dict[str, Any] = {"artifactLocation": artifact}
        if diagnostic.lineno > 0:
            region: dict[str, Any] = {"startLine": diagnostic.lineno}
            if diagnostic.source_line:
                region["snippet"] = {"text": diagnostic.source_line}
            physical["region"] = region
        result["locations"] = [{"physicalLocation": physical}]
    return result


def build_sarif(
    findings: Iterable[tuple[Diagnostic, int]],
    *,
    project_root: str | os.PathLike[str],
    version: str,
    program_error: str | None = None,
) -> dict[str, Any]:
    """A SARIF log for ``findings`` (each a diagnostic and how many times it was hit).

    ``program_error`` is the one-line note of an exception that ended the checked program early:
    it is recorded as a failed invocation, since the results may then be incomplete.
    """
    root = Path(os.path.abspath(project_root))
    rules = list(iter_rules())
    index = {rule.code: i for i, rule in enumerate(rules)}
    invocation: dict[str, Any] = {"executionSuccessful": program_error is None}
    if program_error is not None:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": program_error}}
        ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "graphguard",
                        "version": version,
                        "semanticVersion": version,
                        "rules": [_rule_descriptor(rule) for rule in rules],
                    }
                },
                "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri().rstrip("/") + "/"}},
                "invocations": [invocation],
                "results": [
                    _result(diagnostic, count, index.get(diagnostic.code, -1), root)
                    for diagnostic, count in findings
                ],
            }
        ],
    }
