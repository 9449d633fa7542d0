"""``recording``: a sink that records what reached it — for tests, benchmarks and demos.

Every call to ``deliver`` is counted per idempotency key in a SQLite file (``path``), so a test can
prove that no key was delivered twice (a count above 1 means the hub called the sink twice for one
key; a real sink would deduplicate, this one tells). Without ``path`` it counts in memory.

Fault injection for fault tests: ``fail_first`` transient failures per key, ``poison`` (numbers that
make the sink crash every time), ``down_file`` (while that file exists, every call fails as
connection refused), ``rate_limit_first`` (429 with ``retry_after``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

from pydantic import Field

from hub import (
    ConnectorSettings,
    DeliveryRequest,
    Health,
    Inventory,
    InventoryItem,
    RateLimited,
    Receipt,
    Sink,
    TransientError,
    hookimpl,
)

_INSERT = (
    "INSERT INTO received VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT(key) DO UPDATE SET count = count + 1"
)


class RecordingSettings(ConnectorSettings):
    path: Path | None = None
    fail_first: int = Field(0, ge=0)
    rate_limit_first: int = Field(0, ge=0)
    retry_after: float = Field(1.0, ge=0)
    poison: list[str] = Field(default_factory=list)
    down_file: Path | None = None
    #: Seconds each call takes before it answers: a slow remote system (a platform that polls).
    delay: float = Field(0.0, ge=0)


class RecordingSink(Sink, Inventory):
    wants_documents = False  # sends the invoice's data, not its files
    type_name = "recording"
    Settings = RecordingSettings
    settings: RecordingSettings

    def __init__(self, settings: RecordingSettings, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, context)
        self._lock = threading.Lock()
        self._faults = bool(settings.fail_first or settings.rate_limit_first)
        target = str(settings.path) if settings.path else ":memory:"
        if settings.path:
            settings.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS received (key TEXT PRIMARY KEY, identity TEXT, content_hash TEXT,"
            " number TEXT, issue_date TEXT, gross TEXT, currency TEXT, amends TEXT, count INTEGER)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, n INTEGER)")

    def deliver(self, request: DeliveryRequest) -> Receipt:
        self._admit(request)
        with self._lock:
            self._db.execute(_INSERT, self._row(request))
        return self._receipt(request)

    def deliver_batch(self, requests: list[DeliveryRequest]) -> list[Receipt | Exception]:
        """Record a batch in one SQLite transaction; each request still meets the faults on its own."""
        results: list[Receipt | Exception] = []
        rows = []
        for request in requests:
            try:
                self._admit(request)
            except Exception as exc:  # this request's own answer (a fault, a poison crash)
                results.append(exc)
                continue
            rows.append(self._row(request))
            results.append(self._receipt(request))
        if rows:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(_INSERT, rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        return results

    def _admit(self, request: DeliveryRequest) -> None:
        """Count the call and raise the fault this call is configured to meet, if any."""
        key = request.idempotency_key
        n = 1
        if self._faults:
            with self._lock:
                # Calls are counted in the file too, so fault injection holds across restarts.
                n = self._db.execute(
                    "INSERT INTO calls VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1 RETURNING n",
                    (key,),
                ).fetchone()[0]
        if self.settings.delay:
            time.sleep(self.settings.delay)
        if self.settings.down_file is not None and self.settings.down_file.exists():
            raise TransientError(f"{self.name}: connection refused (down)", connector=self.name)
        number = request.summary.number
        if any(p in number for p in self.settings.poison):
            raise RuntimeError(f"recording sink crashed on poison invoice {number}")
        if n <= self.settings.rate_limit_first:
            raise RateLimited(
                f"{self.name}: 429 Too Many Requests",
                retry_after=self.settings.retry_after,
                remote_status=429,
            )
        if n <= self.settings.rate_limit_first + self.settings.fail_first:
            raise TransientError(
                f"{self.name}: 503 Service Unavailable", remote_status=503, remote_body="try again later"
            )

    @staticmethod
    def _row(request: DeliveryRequest) -> tuple[str | None, ...]:
        # The summary only: what it records is in the ledger's columns, so the worker never validates
        # the stored invoice for this sink.
        inv = request.summary
        return (
            request.idempotency_key,
            inv.identity,
            inv.content_hash,
            inv.number,
            inv.issue_date.isoformat(),
            format(inv.gross, "f"),
            inv.currency,
            request.amends,
        )

    @staticmethod
    def _receipt(request: DeliveryRequest) -> Receipt:
        key = request.idempotency_key
        return Receipt(
            remote_ref=f"rec:{key[:16]}", detail={"amends": request.amends} if request.amends else {}
        )

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT identity, content_hash, issue_date, gross, currency, number"
                " FROM received ORDER BY identity, content_hash"
            ).fetchall()
        # One item per version: a status change ("hash:status") or a re-send is not a version of its own.
        for identity, chash, issued, gross, currency, number in rows:
            day = date.fromisoformat(issued)
            if (since and day < since) or (until and day > until):
                continue
            yield InventoryItem(identity, chash, day, Decimal(gross), currency, number=number)

    def health(self) -> Health:
        if self.settings.down_file is not None and self.settings.down_file.exists():
            return Health(False, "down (down_file exists)")
        return Health(True, "recording")

    def close(self) -> None:
        self._db.close()


@hookimpl
def hub_register_connector_types() -> list[type]:
    return [RecordingSink]
