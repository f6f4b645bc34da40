"""The three logging set-ups in docs/logging.md deliver graphguard.hazard events as documented."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from _env import child_env

import graphguard

ROOT = Path(__file__).resolve().parent.parent


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
    monkeypatch.setattr(_log, "_env_applied", None)
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
    monkeypatch.setattr(_log, "_env_applied", None)
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


# --- quiet by default; region events on request ------------------------------------------------
_GUARD_100 = """
import torch, graphguard

@graphguard.guard
def step(x):
    return (x * 2).softmax(-1)

x = torch.randn(4, 8)
for _ in range(100):
    step(x)
with graphguard.capture(mode="audit"):
    step(x)
"""


def _run_script(code: str, tmp_path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "quiet.py"
    script.write_text(code, encoding="utf-8")
    env = child_env()
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_guard_without_hazards_prints_nothing(tmp_path) -> None:
    """A @guard called 100 times and a clean region print nothing with structlog's defaults."""
    out = _run_script(_GUARD_100, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_debug_filter_turns_region_events_on(tmp_path) -> None:
    """With make_filtering_bound_logger(logging.DEBUG), region start/end events are printed."""
    setup = (
        "import logging, structlog\n"
        "structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))\n"
    )
    out = _run_script(setup + _GUARD_100, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "graphguard.capture.start" in out.stdout and "graphguard.capture.end" in out.stdout


def test_region_events_are_debug_level(restore_structlog) -> None:
    """graphguard.capture.start and .end are debug-level events."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with structlog.testing.capture_logs() as logs, graphguard.capture(mode="audit"):
        pass
    levels = {e["event"]: e["log_level"] for e in logs}
    assert levels.get("graphguard.capture.start") == "debug"
    assert levels.get("graphguard.capture.end") == "debug"


def test_stdlib_debug_level_turns_region_events_on(restore_structlog) -> None:
    """With recipe 3 and the graphguard logger at DEBUG, region events reach its handler."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    logger = logging.getLogger("graphguard")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with graphguard.capture(mode="audit"):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("graphguard.capture.start" in r.getMessage() for r in records)
