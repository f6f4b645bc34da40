"""Structured events through structlog, without configuring structlog or logging globally.

By default events go to ``structlog.get_logger("graphguard")``, so they flow through whatever the
application configured. Users who configured nothing can opt in to JSON lines, either with
:func:`enable_json_logs` or by setting ``GRAPHGUARD_LOG=json`` (stderr) or
``GRAPHGUARD_LOG=json:/path/to/file.jsonl``. The opt-in logger is private to graphguard: it never
touches ``structlog.configure`` or the stdlib root logger.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import IO, Any

import structlog

__all__ = ["disable_json_logs", "enable_json_logs", "get_logger", "json_logs_enabled"]

_LOGGER_NAME = "graphguard"
ENV_VAR = "GRAPHGUARD_LOG"

_lock = threading.Lock()
_json_logger: Any = None
_json_file: IO[str] | None = None
_env_checked = False


def enable_json_logs(file: IO[str] | str | os.PathLike[str] | None = None) -> None:
    """Send graphguard's events to ``file`` as JSON lines (default stderr; a path is appended to).

    Only graphguard's own events are affected; global structlog and logging stay untouched.
    """
    global _json_logger, _json_file
    with _lock:
        _close_file()
        if file is None:
            stream: IO[str] = sys.stderr
        elif isinstance(file, (str, os.PathLike)):
            stream = open(file, "a", encoding="utf-8")  # noqa: SIM115 - closed in _close_file
            _json_file = stream
        else:
            stream = file
        _json_logger = structlog.wrap_logger(
            structlog.PrintLogger(stream),  # type: ignore[arg-type]
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
            logger_name=_LOGGER_NAME,
        )


def disable_json_logs() -> None:
    """Stop the opt-in JSON output; events go back to ``structlog.get_logger("graphguard")``."""
    global _json_logger
    with _lock:
        _close_file()
        _json_logger = None


def json_logs_enabled() -> bool:
    """Whether graphguard's opt-in JSON-lines output is on."""
    _check_env()
    return _json_logger is not None


def _close_file() -> None:
    global _json_file
    if _json_file is not None:
        _json_file.close()
        _json_file = None


def _check_env() -> None:
    global _env_checked
    if _env_checked:
        return
    _env_checked = True
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return
    if value == "json":
        enable_json_logs()
    elif value.startswith("json:"):
        enable_json_logs(value[len("json:") :])
    else:
        from ._errors import ConfigError

        raise ConfigError(
            f"{ENV_VAR}={value!r} is not valid; allowed values: 'json', 'json:<path>'"
        )


def get_logger() -> Any:
    """graphguard's logger: the opt-in JSON logger if enabled, else structlog's ``graphguard``."""
    _check_env()
    if _json_logger is not None:
        return _json_logger
    return structlog.get_logger(_LOGGER_NAME)
