"""Structured events through structlog, without configuring structlog or logging globally.

By default events go to ``structlog.get_logger("graphguard")``, so they flow through whatever the
application configured. Users who configured nothing can opt in to JSON lines, either with
:func:`enable_json_logs` or by setting ``GRAPHGUARD_LOG=json`` (stderr) or
``GRAPHGUARD_LOG=json:/path/to/file.jsonl``. The opt-in logger is private to graphguard: it never
touches ``structlog.configure`` or the stdlib root logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import structlog

__all__ = [
    "disable_json_logs",
    "enable_json_logs",
    "get_logger",
    "quiet_events",
    "region_event",
]

_LOGGER_NAME = "graphguard"
ENV_VAR = "GRAPHGUARD_LOG"

_lock = threading.Lock()
_json_logger: Any = None
_json_file: IO[str] | None = None
_json_regions = False


def enable_json_logs(
    file: IO[str] | str | os.PathLike[str] | None = None, *, regions: bool = False
) -> None:
    """Send graphguard's events to ``file`` as JSON lines (default stderr; a path is appended to).

    Hazards are always written; region start/end events only with ``regions=True``. Only
    graphguard's own events are affected; global structlog and logging stay untouched.
    """
    global _json_logger, _json_file, _json_regions
    with _lock:
        opened = _open_log_file(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else None
        _close_file()
        _json_regions = regions
        _json_file = opened
        stream: IO[str] = opened or (sys.stderr if file is None else file)  # type: ignore[assignment]
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


def _close_file() -> None:
    global _json_file
    if _json_file is not None:
        _json_file.close()
        _json_file = None


def _open_log_file(path: str) -> IO[str]:
    """Open ``path`` for appending JSON lines, or raise ConfigError saying what is wrong.

    Only a regular file will do: a FIFO would block the first region until a reader appears,
    and a device such as ``/dev/full`` would fail every later write.
    """
    from ._errors import ConfigError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot open the JSON log file {path!r}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"the JSON log file {path!r} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


_env_applied: str | None = None
#: The raw value of ``GRAPHGUARD_LOG`` last applied, as ``os.environ`` stores it.
_env_raw: Any = None
_NOT_READ = object()


_env_key: tuple[Any, Any] = (None, None)
#: The JSON logger ``GRAPHGUARD_LOG`` set up, so that unsetting the variable removes it (and
#: not one the application set up itself with ``enable_json_logs``).
_env_logger: Any = None


def _raw_env() -> Any:
    """``GRAPHGUARD_LOG`` as ``os.environ`` stores it (encoded), read without the Python-level
    ``os.environ.get``: a region reads it at every entry."""
    global _env_key
    environ = os.environ
    data = getattr(environ, "_data", None)
    if type(data) is not dict:
        return _NOT_READ
    owner, key = _env_key
    if owner is not environ:
        encodekey = getattr(environ, "encodekey", None)
        if encodekey is None:
            return _NOT_READ
        key = encodekey(ENV_VAR)
        _env_key = (environ, key)
    return data.get(key)


def check_env() -> None:
    """Apply ``GRAPHGUARD_LOG``; an invalid value raises ConfigError every time it is read."""
    global _env_applied, _env_raw, _env_logger
    raw = _raw_env()
    if raw is not _NOT_READ and raw == _env_raw and _env_applied is not None:
        return
    value = os.environ.get(ENV_VAR, "").strip()
    if value == _env_applied:
        _env_raw = raw
        return
    from ._errors import ConfigError

    try:
        if not value:
            if _env_logger is not None and _json_logger is _env_logger:
                disable_json_logs()  # the variable was unset: its JSON output ends with it
            _env_logger = None
        elif value == "json":
            enable_json_logs()
            _env_logger = _json_logger
        elif value.startswith("json:") and value[len("json:") :]:
            enable_json_logs(value[len("json:") :])
            _env_logger = _json_logger
        else:
            raise ConfigError(
                f"{ENV_VAR}={value!r} is not valid; allowed values: 'json', 'json:<path>'"
            )
    except ConfigError as e:
        raise ConfigError(f"{ENV_VAR}={value!r}: {e}") from None
    _env_applied = value
    _env_raw = raw


_regions_cache: tuple[Any, bool] | None = None


def _regions_enabled() -> bool:
    """Region events are debug events: emitted only where the application asked for debug.

    An unconfigured structlog (which would print every level) gets none, so a library region
    that finds nothing is silent by default.
    """
    global _regions_cache
    if _json_logger is not None:
        return _json_regions
    if not structlog.is_configured():
        return False
    # what decides the answer, read without building get_config()'s dict (every region asks)
    internal = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
    if internal is not None and hasattr(internal, "default_wrapper_class"):
        key = (internal.default_wrapper_class, internal.logger_factory)
    else:  # pragma: no cover - a structlog that keeps its configuration elsewhere
        config = structlog.get_config()
        key = (config.get("wrapper_class"), config.get("logger_factory"))
    if _regions_cache is not None and _regions_cache[0] == key:
        return _regions_cache[1]
    logger = structlog.get_logger(_LOGGER_NAME).bind()
    is_enabled = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    enabled = bool(is_enabled(logging.DEBUG)) if is_enabled is not None else True
    _regions_cache = (key, enabled)
    return enabled


def region_event(event: str, **fields: Any) -> None:
    """Log a region start/end event at debug level, if debug events are wanted."""
    try:
        check_env()  # GRAPHGUARD_LOG decides where the event goes, hence whether it is wanted
        if _regions_enabled():
            get_logger().debug(event, **fields)
    except Exception:  # logging must never break the user's region
        pass


def get_logger() -> Any:
    """graphguard's logger: the opt-in JSON logger if enabled, else structlog's ``graphguard``."""
    check_env()
    logger = _json_logger if _json_logger is not None else structlog.get_logger(_LOGGER_NAME)
    from ._rank import rank_fields

    ranks = rank_fields()  # in a torch.distributed job every event says which rank sent it
    return logger.bind(**ranks) if ranks else logger


# --- for applications (the command line), never for the library ---------------------------------
class _GraphguardEvents:
    """A structlog processor that keeps graphguard's own events off stdout.

    Dropped by default; with ``verbose``, events from WARNING up are written to ``stream``. Events
    that are not graphguard's pass through untouched.
    """

    _SHOWN = frozenset({"warning", "warn", "error", "critical", "exception", "fatal"})

    def __init__(self, *, verbose: bool, stream: IO[str]) -> None:
        self.verbose = verbose
        self.stream = stream
        self._render = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event = event_dict.get("event")
        if not (isinstance(event, str) and event.startswith("graphguard.")):
            return event_dict
        if self.verbose and method_name in self._SHOWN:
            shown = {k: v for k, v in event_dict.items() if k not in ("why", "hint")}
            shown["level"] = method_name
            print(self._render(logger, method_name, shown), file=self.stream)
        raise structlog.DropEvent


@contextlib.contextmanager
def quiet_events(*, verbose: bool = False, stream: IO[str] | None = None) -> Iterator[None]:
    """While the block runs, drop graphguard's structlog events (other events pass unchanged).

    With ``verbose``, graphguard's events from WARNING up are written to ``stream`` (default:
    ``sys.stderr`` when the block starts) instead of being dropped. This is for applications,
    such as the ``graphguard`` command line, that print a report of their own and provoke hazards
    on purpose (``graphguard certify``): it configures structlog for the duration of the block
    and restores the previous configuration afterwards, so it is process-wide and not for use
    from library code. The opt-in JSON logger (``enable_json_logs``) is not affected.
    """
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    target = sys.stderr if stream is None else stream
    structlog.configure(
        processors=[_GraphguardEvents(verbose=verbose, stream=target), *saved["processors"]]
    )
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
