"""Ledger tables (SQLAlchemy Core) and the versioned migrations that create them.

Migrations are numbered functions run in order inside one transaction each; the applied versions are
kept in ``schema_migrations``. On PostgreSQL an advisory lock makes concurrent ``hub run`` processes
migrate one at a time. (Alembic's script directories and env.py are built for applications whose
schema is edited by hand; an embedded ledger that migrates itself on open needs only this.)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Dialect


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def to_db(value: datetime) -> datetime:
        """The value bound for PostgreSQL: aware, in UTC."""
        if value.tzinfo is None:
            raise ValueError("the ledger stores timezone-aware datetimes only")
        return value.astimezone(UTC)

    @staticmethod
    def to_db_sqlite(value: datetime) -> str:
        """The text stored on SQLite: naive UTC, SQLAlchemy's SQLite format."""
        if value.tzinfo is None:
            raise ValueError("the ledger stores timezone-aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = self.to_db(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # On SQLite the column holds text ("2026-11-23 13:20:03.000123", SQLAlchemy's SQLite format). The
    # two processors below write and read that same text directly, in C (isoformat/fromisoformat),
    # instead of SQLAlchemy's generic per-field formatting: the ledger writes several per invoice.
    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            return None if value is None else self.to_db_sqlite(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: str | datetime | None) -> datetime | None:
            if value is None:
                return None
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

        return process


Id = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("media_type", String(200), nullable=False),
    Column("filename", Text),
    Column("source", String(200), nullable=False),
    Column("origin", Text),
    Column("parent_sha256", String(64)),
    Column("size", Integer, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("content", LargeBinary, nullable=False),
)

invoice_versions = Table(
    "invoice_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("identity", String(300), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("canonical_version", Integer, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("number", String(100), nullable=False),
    Column("code", String(40)),
    Column("status", String(40), nullable=False),
    Column("issue_date", String(10), nullable=False),
    Column("seller_tax_id", String(100)),
    Column("buyer_tax_id", String(100)),
    Column("gross", String(40), nullable=False),
    Column("currency", String(10), nullable=False),
    Column("invoice_json", Text, nullable=False),
    Column("document_sha256", String(64)),
    Column("source", String(200), nullable=False),
    Column("warnings", Text),
    Column("received_at", UTCDateTime, nullable=False),
    Index("ux_versions_identity_hash", "identity", "content_hash", unique=True),
    Index("ix_versions_number", "number"),
    Index("ix_versions_hash", "content_hash"),
    Index("ix_versions_fuzzy", "seller_tax_id", "buyer_tax_id", "issue_date", "gross"),
)

events = Table(
    "events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("type", String(40), nullable=False),
    Column("source", String(200), nullable=False),
    Column("identity", String(300), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("version_id", Id, nullable=False),
    Column("status", String(40), nullable=False),
    Column("document_sha256", String(64)),
    Column("trace_id", String(32), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Index("ix_events_identity", "identity"),
)

#: Delivery states. ``inflight`` is a claimed delivery whose sink call is under way (with a lease).
PENDING, INFLIGHT, RETRYING, DELIVERED, SKIPPED, DEAD, DISCARDED = (
    "pending",
    "inflight",
    "retrying",
    "delivered",
    "skipped",
    "dead",
    "discarded",
)
OPEN_STATES = (PENDING, INFLIGHT, RETRYING)
FINAL_STATES = (DELIVERED, SKIPPED, DEAD, DISCARDED)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False),
    Column("destination", String(200), nullable=False),
    Column("route", String(200)),
    Column("idem_key", String(120), nullable=False),
    Column("identity", String(300), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime),
    Column("published_at", UTCDateTime),
    Column("lease_until", UTCDateTime),
    Column("amends", String(64)),
    Column("duplicate_of", Id),
    Column("remote_ref", Text),
    Column("receipt", Text),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_deliveries_state", "state", "next_attempt_at"),
    Index("ix_deliveries_dest_identity", "destination", "identity", "state"),
    Index("ix_deliveries_event", "event_id"),
    # The atomic check-and-claim: at most one claimed-or-delivered delivery per key and destination.
    Index(
        "ux_deliveries_claim",
        "destination",
        "idem_key",
        unique=True,
        sqlite_where=text("state IN ('inflight', 'delivered')"),
        postgresql_where=text("state IN ('inflight', 'delivered')"),
    ),
)

transitions = Table(
    "delivery_transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, nullable=False),
    Column("from_state", String(20)),
    Column("to_state", String(20), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("detail", Text),
    Index("ix_transitions_delivery", "delivery_id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, nullable=False),
    Column("number", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("error_class", String(200)),
    Column("error_message", Text),
    Column("remote_status", Integer),
    Column("remote_body", Text),
    Column("retry_after", String(40)),
    Index("ix_attempts_delivery", "delivery_id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("stage", String(20), nullable=False),  # intake | delivery
    Column("delivery_id", Id),
    Column("destination", String(200)),
    Column("source", String(200)),
    Column("identity", String(300)),
    Column("content_hash", String(64)),
    Column("event_id", String(32)),
    Column("invoice_json", Text),
    Column("document_sha256", String(64)),
    Column("number", String(100)),  # the invoice's number, when the letter holds an invoice (v6)
    Column("error_class", String(200), nullable=False),
    Column("message", Text, nullable=False),
    Column("traceback", Text),
    Column("detail", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("state", String(20), nullable=False),  # open | replayed | discarded
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_dead_letters_state", "state", "destination"),
    Index("ix_dead_letters_delivery", "delivery_id"),
    Index("ix_dead_letters_document", "document_sha256"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("connector", String(200), primary_key=True),
    Column("value", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", String(300)),
    Column("reason", Text),
    Column("detail", Text),
    Index("ix_audit_target", "target"),
)


# ---------------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------------
def _v1_initial(conn: Connection) -> None:
    metadata.create_all(
        conn,
        tables=[
            documents,
            invoice_versions,
            events,
            deliveries,
            transitions,
            attempts,
            dead_letters,
            checkpoints,
            audit_log,
        ],
    )


def _v2_document_children(conn: Connection) -> None:
    # Sinks receive the files under an invoice's document (a platform's XML and PDF beside its OFD).
    # Plain DDL: an Index object would join the table's metadata and be created by v1 on new ledgers.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_documents_parent ON documents (parent_sha256)"))


def _v3_deliveries_by_key(conn: Connection) -> None:
    # Intake asks which of a batch's keys are already live at a destination (pending, in flight,
    # retrying, delivered). Without an index on the key SQLite answered from the state index: every
    # delivered delivery read, per batch, so intake slowed down as the ledger grew.
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_deliveries_idem ON deliveries (idem_key, destination)"))


def _v4_drop_unread_index(conn: Connection) -> None:
    # No query reads events by document, yet each intake wrote this index, keyed by a content hash: a
    # random page per invoice, which a grown ledger writes to its WAL and checkpoints.
    conn.execute(text("DROP INDEX IF EXISTS ix_events_document"))


def _v5_no_index_by_key(conn: Connection) -> None:
    # Intake finds the deliveries that may already hold a batch's keys by destination and identity
    # (ix_deliveries_dest_identity) and only for identities it had seen before; replay and reconcile
    # ask by identity too. This index of random keys then served no query, yet each delivery wrote a
    # page of it of its own once the ledger had grown.
    conn.execute(text("DROP INDEX IF EXISTS ix_deliveries_idem"))


def _v6_dead_letters_by_number(conn: Connection) -> None:
    # `hub trace` found a letter by its invoice's number with ``invoice_json LIKE '%"number":"…"%'``,
    # and by a hash prefix with LIKE: every trace read the whole dead-letter table, which an incident
    # fills. The number gets a column (filled here from the letters' JSON), and identity, number and
    # content hash get indexes; a prefix of a hash is asked as a range.
    if "number" not in {c["name"] for c in inspect(conn).get_columns("dead_letters")}:
        conn.execute(text("ALTER TABLE dead_letters ADD COLUMN number VARCHAR(100)"))
    letters = conn.execute(
        text("SELECT id, invoice_json FROM dead_letters WHERE invoice_json IS NOT NULL AND number IS NULL")
    ).all()
    numbers = []
    for letter_id, invoice_json in letters:
        try:
            number = orjson.loads(invoice_json).get("number")
        except (orjson.JSONDecodeError, AttributeError):
            continue  # not an invoice's JSON: the letter keeps no number, as before
        if isinstance(number, str):
            numbers.append({"id": letter_id, "number": number[:100]})
    if numbers:
        conn.execute(text("UPDATE dead_letters SET number = :number WHERE id = :id"), numbers)
    for name, column in (
        ("ix_dead_letters_identity", "identity"),
        ("ix_dead_letters_number", "number"),
        ("ix_dead_letters_hash", "content_hash"),
    ):
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON dead_letters ({column})"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], Any]]] = [
    (1, "initial ledger", _v1_initial),
    (2, "index documents by parent", _v2_document_children),
    (3, "index deliveries by idempotency key", _v3_deliveries_by_key),
    (4, "drop the index no query reads", _v4_drop_unread_index),
    (5, "find deliveries by identity, not by key", _v5_no_index_by_key),
    (6, "find dead letters by number, identity and hash", _v6_dead_letters_by_number),
]
LATEST = MIGRATIONS[-1][0]
