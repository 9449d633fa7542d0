"""structlog set-up: JSON lines (orjson) when stderr is not a terminal, the console renderer when it is."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_SECRET_KEYS = ("password", "secret", "token", "authorization", "app_secret", "api_key", "bank_account")


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


#: The level ``configure_logging`` set last (structlog's own default, before it is called, logs all).
_LEVEL = logging.DEBUG


def log_enabled(level: int) -> bool:
    """Whether a log line at ``level`` is written. For hot paths: a call on a filtered level is already
    a no-op, but reaching it through ``structlog.get_logger()``'s proxy builds a logger each time."""
    return level >= _LEVEL


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Call once from the entry point. Logs go to stderr so stdout stays clean for ``--json``."""
    global _LEVEL
    _LEVEL = getattr(logging, level.upper())
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(
            serializer=lambda obj, **kw: orjson.dumps(obj, default=str).decode()
        )
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        structlog.processors.format_exc_info if json_lines else structlog.dev.set_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVEL),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
