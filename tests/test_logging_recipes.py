"""The three logging set-ups in docs/logging.md deliver graphguard.hazard events as documented."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

import graphguard


@pytest.fixture
def restore_structlog():
    """Each recipe configures structlog like an application would; put it back afterwards."""
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    if was_configured:
        structlog.configure(**saved)


def _hazard(ctx) -> None:
    with graphguard.capture(mode="audit", on_hazard="warn", label="recipe"):
        ctx.x.sum().item()


def test_recipe_1_opt_in_json_lines_to_a_stream(ctx) -> None:
    """enable_json_logs(stream) writes one JSON object per event, without global config."""
    stream = io.StringIO()
    before = structlog.get_config()
    graphguard.enable_json_logs(stream)
    try:
        _hazard(ctx)
    finally:
        graphguard.disable_json_logs()
    assert structlog.get_config() == before
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    hazard = next(e for e in events if e["event"] == "graphguard.hazard")
    assert hazard["code"] == "GG101" and hazard["label"] == "recipe"
    assert hazard["action"] == "logged" and hazard["level"] == "warning"


def test_recipe_1_environment_variable(tmp_path, monkeypatch, ctx) -> None:
    """GRAPHGUARD_LOG=json:<path> turns on the JSON-lines output without code changes."""
    from graphguard import _log

    path = tmp_path / "gg.jsonl"
    monkeypatch.setenv("GRAPHGUARD_LOG", f"json:{path}")
    monkeypatch.setattr(_log, "_env_checked", False)
    try:
        _hazard(ctx)
    finally:
        graphguard.disable_json_logs()
    kinds = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert "graphguard.hazard" in kinds


def test_bad_environment_value_is_a_config_error(monkeypatch) -> None:
    """An unknown GRAPHGUARD_LOG value is refused with the allowed forms, never executed."""
    from graphguard import _log

    monkeypatch.setenv("GRAPHGUARD_LOG", "__import__('os').system('true')")
    monkeypatch.setattr(_log, "_env_checked", False)
    with pytest.raises(graphguard.ConfigError, match="json:<path>"):
        _log.get_logger()


def test_recipe_2_app_configured_structlog(restore_structlog, ctx, capsys) -> None:
    """With the app's structlog processors, graphguard's events are rendered by them."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ]
    )
    _hazard(ctx)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    hazard = next(e for e in lines if e["event"] == "graphguard.hazard")
    assert hazard["kind"] == "host-sync" and hazard["level"] == "warning"


def test_recipe_3_stdlib_logging_with_processor_formatter(restore_structlog, ctx) -> None:
    """Routed into logging, events reach the graphguard logger's handler as JSON."""
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer())
    )
    logger = logging.getLogger("graphguard")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        _hazard(ctx)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["graphguard.hazard"]  # info events filtered out
    assert events[0]["code"] == "GG101" and events[0]["lineno"] > 0
