"""The hub's exception tree.

Only the worker decides what happens to a delivery, and it decides from the class::

    HubError
     ├── TransientError          retry with backoff (network, time-out, 5xx, 429)
     │    └── RateLimited         the remote said when to come back (Retry-After)
     ├── PermanentError          dead-letter at once (4xx, business refusal, bad data)
     │    ├── ParseError          no parser could read a document, or the reader failed
     │    ├── InvoiceInvalid      an invoice failed validation (problems with field paths)
     │    └── AmendmentRejected   same identity, other content, and the route says dead_letter
     ├── ConfigError             hub.yaml is wrong (carries the YAML path and line)
     ├── PluginError             a plugin failed to load or broke its contract
     └── LedgerError             the ledger could not be reached or migrated

Connectors translate third-party exceptions (httpx, kombu, SQLAlchemy, IMAP) into these at their seam
and ``raise ... from exc``; anything else a plugin raises is treated as a permanent failure of that one
delivery, never of the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class HubError(Exception):
    """Root of every error the hub raises on purpose."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        return self.message


class TransientError(HubError):
    """Worth retrying: the same request may succeed later.

    ``remote_status`` and ``remote_body`` keep what the destination answered.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_status: int | None = None,
        remote_body: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, remote_status=remote_status, remote_body=remote_body, **context)
        self.remote_status = remote_status
        self.remote_body = remote_body


class RateLimited(TransientError):
    """The destination asked us to wait ``retry_after`` seconds; the worker waits at least that long."""

    def __init__(self, message: str, *, retry_after: float, **context: Any) -> None:
        super().__init__(message, **context)
        self.retry_after = float(retry_after)
        self.context["retry_after"] = self.retry_after


class PermanentError(HubError):
    """Retrying cannot help: the delivery goes to the dead-letter queue at once.

    ``code`` is the remote system's own error code (for example a platform's business refusal code).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        remote_status: int | None = None,
        remote_body: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, code=code, remote_status=remote_status, remote_body=remote_body, **context)
        self.code = code
        self.remote_status = remote_status
        self.remote_body = remote_body


class ParseError(PermanentError):
    """A document could not be turned into invoices (unknown format, broken or hostile content)."""


@dataclass(frozen=True)
class Problem:
    """One validation finding: ``path`` is the field path (``lines[0].amount``)."""

    path: str
    message: str
    severity: str = "error"  # "error" | "warning"
    rule: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvoiceInvalid(PermanentError):
    """An invoice failed validation; ``problems`` lists each finding with its field path."""

    def __init__(self, problems: list[Problem], **context: Any) -> None:
        errors = [p for p in problems if p.severity == "error"]
        text = "; ".join(str(p) for p in errors) or "invalid invoice"
        super().__init__(f"invoice invalid: {text}", **context)
        self.problems = problems


# The name ValidationError is what the style guide asks for; it is the same class.
ValidationError = InvoiceInvalid


class AmendmentRejected(PermanentError):
    """Same identity already delivered with other content and the route's policy is ``dead_letter``."""


class ConfigError(HubError):
    """hub.yaml (or a connector's settings) is wrong; ``location`` names file, YAML path and line."""

    def __init__(self, message: str, *, location: str | None = None, **context: Any) -> None:
        super().__init__(f"{location}: {message}" if location else message, location=location, **context)
        self.location = location


class PluginError(HubError):
    """A plugin failed to load, is incompatible, or broke its contract."""


class LedgerError(HubError):
    """The ledger could not be reached, migrated or written."""
