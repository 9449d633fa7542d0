"""``erp.sql``: the middle-table (中间表) integration Kingdee / Yonyou style ERPs use.

Two tables in the ERP's own database (any SQLAlchemy URL; not the hub's ledger):

* **outbound** (the ERP fills it): one row per invoice the ERP wants issued or sent, with identity
  fields, parties, totals, lines (a JSON column) or a whole JSON ``payload``, a ``status``
  (``NEW`` → ``PICKED`` | ``ERROR`` → ``DONE``), ``updated_at`` and ``id``. As a **source** the
  connector reads rows in ``(updated_at, id)`` order from a cursor the hub keeps as the source
  checkpoint, so a restart goes on where it stopped and a row the ERP changes later (it sets the row
  back to ``NEW`` and bumps ``updated_at``) is read again. ``commit`` marks the row ``PICKED`` (or
  ``ERROR`` with the reason) — only when the row is still the version that was read.
* **inbound** (the hub writes it): one row per delivery, keyed ``UNIQUE`` by the delivery's
  idempotency key, so a retried delivery never creates a second row; an amendment (same identity,
  other content) is a new row with the next ``version``. When the delivered invoice is an issued
  invoice coming back from an e-invoice platform for one of the outbound rows (it carries
  ``extra["source_row"]`` or ``extra["order_no"]``), the issued number, date and status are written
  back to that outbound row and it becomes ``DONE`` — in the same transaction as the inbound row.

Table and column names come from ``hub.yaml`` (``ErpSqlSettings``); ``contrib/erp_sql/schema_*.sql`` are
example tables and ``python -m invoice_hub_plugins.erp_sql create-tables URL`` creates them from the
settings. SQLAlchemy errors are translated at this seam: connection loss, time-outs, deadlocks →
``TransientError``; integrity and data errors, missing tables → ``PermanentError``.

The connector never writes ``updated_at`` of an outbound row except to itself (``SET updated_at =
updated_at``), so MariaDB's ``ON UPDATE CURRENT_TIMESTAMP`` does not turn its own status write into a
"changed row". A trigger that bumps ``updated_at`` on every update is harmless too: only rows whose
status is one of ``pick_statuses`` are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import click
import sqlalchemy as sa
import structlog
from invoice_hub_plugins import _erp_mapping as mapping
from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from hub import (
    Capabilities,
    ConfigError,
    ConnectorContext,
    ConnectorSettings,
    DeliveryRequest,
    Document,
    Health,
    Incoming,
    IntakeOutcome,
    Inventory,
    InventoryItem,
    Invoice,
    PermanentError,
    Receipt,
    Sink,
    Source,
    TransientError,
    hookimpl,
)
from hub.canonical import content_hash

log = structlog.get_logger()

#: Media type of an outbound row that did not map to an invoice (no parser claims it: a dead letter).
ROW_MEDIA_TYPE = "application/vnd.invoice-hub.erp-row+json"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, _ and $; at most 63)")
    return value


Ident = Annotated[str, AfterValidator(_identifier)]

_INVOICE_ROOTS = frozenset(Invoice.model_fields) | mapping.VIRTUAL_PATHS

#: Invoice path → outbound column, for the example tables in ``contrib/erp_sql``.
DEFAULT_OUTBOUND_FIELDS: dict[str, str] = {
    "extra.order_no": "order_no",
    "kind": "kind",
    "number": "invoice_number",
    "code": "invoice_code",
    "issue_date": "issue_date",
    "currency": "currency",
    "seller.name": "seller_name",
    "seller.tax_id": "seller_tax_id",
    "buyer.name": "buyer_name",
    "buyer.tax_id": "buyer_tax_id",
    "totals.net": "net",
    "totals.tax": "tax",
    "totals.gross": "gross",
    "lines": "invoice_lines",
    "reverses": "reverses",
    "extra.remark": "remark",
}


def _check_paths(fields: dict[str, str]) -> dict[str, str]:
    for path in fields:
        root = path.split(".", 1)[0]
        if root not in _INVOICE_ROOTS:
            raise ValueError(f"{path!r} is not an invoice field (known: {', '.join(sorted(_INVOICE_ROOTS))})")
    return fields


class Statuses(ConnectorSettings):
    """The values the status column holds (some ERPs use numbers or Chinese words)."""

    new: str = "NEW"
    picked: str = "PICKED"
    done: str = "DONE"
    error: str = "ERROR"


class WriteBack(ConnectorSettings):
    """Outbound columns the issued invoice is written back to (``null`` leaves a column alone)."""

    number: Ident | None = "issued_number"
    code: Ident | None = "issued_code"
    issue_date: Ident | None = "issued_date"
    invoice_status: Ident | None = "invoice_status"
    content_hash: Ident | None = "hub_ref"
    #: Matched against ``extra["order_no"]`` when the invoice does not carry ``extra["source_row"]``.
    match_column: Ident | None = "order_no"


class Outbound(ConnectorSettings):
    table: Ident = "hub_outbound"
    id_column: Ident = "id"
    updated_at_column: Ident = "updated_at"
    status_column: Ident = "status"
    error_column: Ident | None = "error"
    #: A JSON column holding the invoice (hub JSON form); mapped columns override its values.
    payload_column: Ident | None = "payload"
    #: Invoice path (dotted) → column. ``extra.*`` paths keep ERP data that is not content.
    fields: Annotated[dict[str, Ident], AfterValidator(_check_paths)] = Field(
        default_factory=lambda: dict(DEFAULT_OUTBOUND_FIELDS)
    )
    #: Rows in these statuses are read (default: the ``new`` status).
    pick_statuses: list[str] | None = None
    writeback: WriteBack = Field(default_factory=WriteBack)
    batch_size: int = Field(200, ge=1, le=10_000)
    #: Also read rows still waiting behind the cursor (committed late by a long ERP transaction).
    rescan_behind: bool = True


class InboundColumns(ConnectorSettings):
    id: Ident = "id"
    idempotency_key: Ident = "idempotency_key"
    identity: Ident = "identity"
    content_hash: Ident = "content_hash"
    payload: Ident = "payload"
    event_type: Ident | None = "event_type"
    kind: Ident | None = "kind"
    number: Ident | None = "invoice_number"
    issue_date: Ident | None = "issue_date"
    seller_tax_id: Ident | None = "seller_tax_id"
    buyer_tax_id: Ident | None = "buyer_tax_id"
    gross: Ident | None = "gross"
    currency: Ident | None = "currency"
    invoice_status: Ident | None = "invoice_status"
    source: Ident | None = "source"
    status: Ident | None = "status"
    erp_doc_no: Ident | None = "erp_doc_no"
    error: Ident | None = "error"
    version: Ident | None = "version"
    amends: Ident | None = "amends"
    created_at: Ident | None = "created_at"
    updated_at: Ident | None = "updated_at"


class Inbound(ConnectorSettings):
    table: Ident = "hub_inbound"
    columns: InboundColumns = Field(default_factory=InboundColumns)


class ErpSqlSettings(ConnectorSettings):
    """``erp.sql`` settings (``connectors.<name>.settings`` in hub.yaml)."""

    #: SQLAlchemy URL of the ERP database, e.g. ``postgresql+psycopg://erp:${ERP_PW}@db/erp``.
    url: SecretStr
    db_schema: Ident | None = Field(None, alias="schema")
    outbound: Outbound | None = Field(default_factory=Outbound)
    inbound: Inbound | None = Field(default_factory=Inbound)
    statuses: Statuses = Field(default_factory=Statuses)
    #: Which table ``inventory()`` lists (reconciliation).
    inventory: Literal["inbound", "outbound"] = "inbound"
    #: Kind used for outbound rows whose kind column is empty.
    default_kind: str = "cn.digital.ordinary"
    connect_timeout: int = Field(5, ge=1, le=300)
    pool_size: int = Field(5, ge=1, le=100)
    poll_interval: float = Field(2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _parse_url(cls, value: SecretStr) -> SecretStr:
        try:
            sa.make_url(value.get_secret_value())
        except sa_exc.ArgumentError as exc:
            raise ValueError(f"not an SQLAlchemy URL: {exc}") from None
        return value

    @model_validator(mode="after")
    def _some_table(self) -> ErpSqlSettings:
        if self.outbound is None and self.inventory == "outbound":
            raise ValueError("inventory: 'outbound' needs an outbound table")
        if self.inbound is None and self.inventory == "inbound":
            raise ValueError("inventory: 'inbound' needs an inbound table (or set inventory: outbound)")
        return self


#: The settings model of this connector type (``connectors.<name>.settings`` in hub.yaml).
Settings = ErpSqlSettings


# ---------------------------------------------------------------------------------------------------
# Tables (the same builder serves queries and ``create-tables``)
# ---------------------------------------------------------------------------------------------------
_COMPOUND_ROOTS = frozenset({"seller", "buyer", "totals", "lines", "extra"})


def _type_for(path: str) -> sa.types.TypeEngine[Any]:
    if path in _COMPOUND_ROOTS:
        return sa.JSON()
    if path == "issue_date":
        return sa.Date()
    if path.startswith("totals.") or path.split(".")[-1] in {"amount", "tax_amount", "gross", "net", "tax"}:
        return sa.Numeric(18, 2)
    if path in {"kind", "currency", "status"}:
        return sa.String(32)
    if path.endswith(".name") or path.startswith("extra."):
        return sa.String(255)
    return sa.String(64)


def _timestamp() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql_dialect.DATETIME(fsp=6), "mysql", "mariadb")


def _now_default(dialect: str) -> sa.TextClause:
    return (
        sa.text("CURRENT_TIMESTAMP(6)") if dialect in {"mysql", "mariadb"} else sa.text("CURRENT_TIMESTAMP")
    )


def _text_type() -> sa.types.TypeEngine[Any]:
    return sa.Text()


@dataclass
class Tables:
    outbound: sa.Table | None
    inbound: sa.Table | None
    metadata: sa.MetaData


def build_tables(settings: ErpSqlSettings, dialect: str = "default") -> Tables:
    """SQLAlchemy tables for the configured mapping (typed, so ``create_all`` makes usable tables)."""
    md = sa.MetaData(schema=settings.db_schema)
    now = _now_default(dialect)
    outbound = inbound = None
    if settings.outbound is not None:
        ob = settings.outbound
        cols: dict[str, sa.Column[Any]] = {}
        cols[ob.id_column] = sa.Column(
            ob.id_column,
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        )
        for path, column in ob.fields.items():
            if column not in cols:
                cols[column] = sa.Column(column, _type_for(path))
        if ob.payload_column and ob.payload_column not in cols:
            cols[ob.payload_column] = sa.Column(ob.payload_column, sa.JSON())
        cols[ob.status_column] = sa.Column(
            ob.status_column, sa.String(16), nullable=False, server_default=settings.statuses.new
        )
        if ob.error_column:
            cols[ob.error_column] = sa.Column(ob.error_column, _text_type())
        wb = ob.writeback
        for column, type_ in (
            (wb.number, sa.String(32)),
            (wb.code, sa.String(16)),
            (wb.issue_date, sa.Date()),
            (wb.invoice_status, sa.String(32)),
            (wb.content_hash, sa.String(64)),
        ):
            if column and column not in cols:
                cols[column] = sa.Column(column, type_)
        cols[ob.updated_at_column] = sa.Column(
            ob.updated_at_column, _timestamp(), nullable=False, server_default=now
        )
        outbound = sa.Table(
            ob.table,
            md,
            *cols.values(),
            sa.Index(f"ix_{ob.table}_cursor", ob.status_column, ob.updated_at_column, ob.id_column),
        )
    if settings.inbound is not None:
        c = settings.inbound.columns
        spec: list[tuple[str | None, sa.types.TypeEngine[Any], dict[str, Any]]] = [
            (c.idempotency_key, sa.String(160), {"nullable": False}),
            (c.identity, sa.String(160), {"nullable": False}),
            (c.content_hash, sa.String(64), {"nullable": False}),
            (c.event_type, sa.String(40), {}),
            (c.kind, sa.String(32), {}),
            (c.number, sa.String(64), {}),
            (c.issue_date, sa.Date(), {}),
            (c.seller_tax_id, sa.String(32), {}),
            (c.buyer_tax_id, sa.String(32), {}),
            (c.gross, sa.Numeric(18, 2), {}),
            (c.currency, sa.String(3), {}),
            (c.invoice_status, sa.String(32), {}),
            (c.source, sa.String(64), {}),
            (c.payload, sa.JSON(), {"nullable": False}),
            (c.status, sa.String(16), {"nullable": False, "server_default": settings.statuses.new}),
            (c.erp_doc_no, sa.String(64), {}),
            (c.error, _text_type(), {}),
            (c.version, sa.Integer(), {"nullable": False, "server_default": "1"}),
            (c.amends, sa.String(160), {}),
            (c.created_at, _timestamp(), {"nullable": False, "server_default": now}),
            (c.updated_at, _timestamp(), {"nullable": False, "server_default": now}),
        ]
        in_cols = [
            sa.Column(
                c.id,
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            )
        ]
        in_cols += [sa.Column(name, type_, **kw) for name, type_, kw in spec if name]
        table_name = settings.inbound.table
        extras: list[Any] = [sa.UniqueConstraint(c.idempotency_key, name=f"uq_{table_name}_key")]
        extras.append(sa.Index(f"ix_{table_name}_identity", c.identity))
        if c.issue_date:
            extras.append(sa.Index(f"ix_{table_name}_issue_date", c.issue_date))
        inbound = sa.Table(table_name, md, *in_cols, *extras)
    return Tables(outbound, inbound, md)


def create_tables(settings: ErpSqlSettings) -> None:
    """Create the outbound and inbound tables the settings describe (if they do not exist)."""
    engine = _engine(settings)
    try:
        tables = build_tables(settings, engine.dialect.name)
        with _db_errors("create_tables"):
            tables.metadata.create_all(engine)
    finally:
        engine.dispose()


def drop_tables(settings: ErpSqlSettings) -> None:
    """Drop the tables the settings describe (tests and demos)."""
    engine = _engine(settings)
    try:
        tables = build_tables(settings, engine.dialect.name)
        with _db_errors("drop_tables"):
            tables.metadata.drop_all(engine)
    finally:
        engine.dispose()


def _engine(settings: ErpSqlSettings) -> Engine:
    url = sa.make_url(settings.url.get_secret_value())
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = settings.connect_timeout
    elif backend in {"mysql", "mariadb"}:
        connect_args["connect_timeout"] = settings.connect_timeout
        connect_args["charset"] = "utf8mb4"
    kwargs: dict[str, Any] = {}
    if backend != "sqlite":
        kwargs.update(pool_size=settings.pool_size, max_overflow=settings.pool_size, pool_pre_ping=True)
    return sa.create_engine(
        url,
        connect_args=connect_args,
        json_serializer=mapping.dumps,
        json_deserializer=lambda text: json.loads(text, parse_float=Decimal),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------
# Error translation (the seam)
# ---------------------------------------------------------------------------------------------------
@contextmanager
def _db_errors(action: str, **context: Any) -> Iterator[None]:
    try:
        yield
    except (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.TimeoutError,
        sa_exc.DisconnectionError,
    ) as exc:
        raise TransientError(f"{action}: database unavailable: {_short(exc)}", **context) from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(f"{action}: connection lost: {_short(exc)}", **context) from exc
        code = _driver_code(exc)
        raise PermanentError(
            f"{action}: the database refused it: {_short(exc)}", code=code, **context
        ) from exc
    except sa_exc.SQLAlchemyError as exc:
        raise PermanentError(f"{action}: {_short(exc)}", **context) from exc


def _short(exc: sa_exc.SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _driver_code(exc: sa_exc.DBAPIError) -> str | None:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    if sqlstate:
        return str(sqlstate)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # pymysql: (errno, message)
        return str(args[0])
    return None


# ---------------------------------------------------------------------------------------------------
# Cursor (the source checkpoint)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    updated_at: datetime
    id: Any

    def dump(self) -> str:
        return json.dumps({"updated_at": self.updated_at.isoformat(), "id": self.id}, default=str)

    @classmethod
    def load(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(datetime.fromisoformat(data["updated_at"]), data["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"erp.sql checkpoint {text!r} is not a cursor this connector wrote "
                '(expected {"updated_at": ISO, "id": ...}); reset the source checkpoint'
            ) from exc


@dataclass(frozen=True)
class RowHandle:
    id: Any
    updated_at: datetime
    error: str | None = None


# ---------------------------------------------------------------------------------------------------
# The connector
# ---------------------------------------------------------------------------------------------------
class ErpSqlConnector(Source, Sink, Inventory):
    """Middle tables in the ERP's database: outbound rows in, deliveries out, issued numbers back."""

    wants_documents = False  # sends the invoice's data, not its files

    type_name = "erp.sql"
    Settings = ErpSqlSettings
    #: Any invoice (the inbound row keeps it whole as JSON), red-letter invoices included.
    capabilities = Capabilities(red_letter=True)

    def __init__(self, settings: ErpSqlSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self.settings: ErpSqlSettings = settings
        self.poll_interval = settings.poll_interval
        self._engine = _engine(settings)
        self._dialect = self._engine.dialect.name
        self._tables = build_tables(settings, self._dialect)
        self._safe_url = sa.make_url(settings.url.get_secret_value()).render_as_string(hide_password=True)

    # -- lifecycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        self._engine.dispose()

    def health(self) -> Health:
        try:
            with _db_errors("health"), self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
                inspector = sa.inspect(conn)
                missing = [
                    t.name
                    for t in (self._tables.outbound, self._tables.inbound)
                    if t is not None and not inspector.has_table(t.name, schema=t.schema)
                ]
        except (TransientError, PermanentError) as exc:
            return Health(False, f"{self._safe_url}: {exc}")
        if missing:
            return Health(False, f"{self._safe_url}: missing table(s) {', '.join(missing)}")
        return Health(True, f"{self._safe_url}: ok")

    # -- source -------------------------------------------------------------------------------------
    def _outbound(self) -> tuple[Outbound, sa.Table]:
        if self.settings.outbound is None or self._tables.outbound is None:
            raise ConfigError(f"connector {self.name!r}: erp.sql has no outbound table configured")
        return self.settings.outbound, self._tables.outbound

    def _pick_statuses(self) -> list[str]:
        ob = self.settings.outbound
        return list(ob.pick_statuses) if ob and ob.pick_statuses else [self.settings.statuses.new]

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        """Rows in ``pick_statuses`` after the cursor, in ``(updated_at, id)`` order, batch by batch.

        First, rows still waiting *behind* the cursor are read again (``rescan_behind``): an ERP
        transaction that ran long commits rows whose ``updated_at`` is older than rows already read.
        A cursor alone would skip them for ever; their status (still ``NEW``) gives them away. They
        are yielded without moving the checkpoint.
        """
        ob, table = self._outbound()
        cursor = Cursor.load(checkpoint)
        ua, rid = table.c[ob.updated_at_column], table.c[ob.id_column]
        waiting = table.c[ob.status_column].in_(self._pick_statuses())
        if cursor is not None and ob.rescan_behind:
            behind = sa.or_(ua < cursor.updated_at, sa.and_(ua == cursor.updated_at, rid <= cursor.id))
            query = sa.select(table).where(waiting, behind).order_by(ua, rid).limit(ob.batch_size)
            with _db_errors("poll", table=ob.table), self._engine.connect() as conn:
                late = [dict(r._mapping) for r in conn.execute(query)]
            for row in late:
                self.log.warning(
                    "erp_row_behind_cursor", table=ob.table, row=row[ob.id_column], cursor=cursor.dump()
                )
                yield self._incoming(ob, row, None)
        while True:
            query = sa.select(table).where(waiting)
            if cursor is not None:
                query = query.where(
                    sa.or_(ua > cursor.updated_at, sa.and_(ua == cursor.updated_at, rid > cursor.id))
                )
            query = query.order_by(ua, rid).limit(ob.batch_size)
            with _db_errors("poll", table=ob.table), self._engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(query)]
            for row in rows:
                cursor = Cursor(row[ob.updated_at_column], row[ob.id_column])
                yield self._incoming(ob, row, cursor)
            if len(rows) < ob.batch_size:
                return

    def _incoming(self, ob: Outbound, row: dict[str, Any], cursor: Cursor | None) -> Incoming:
        """One row as an ``Incoming``: the invoice mapped from it, with the row (JSON) as its document.

        The row is handed over as data (``invoices``, with the row as their document), so no parser
        reads it. A row that does not map to an invoice is handed over as a document only, under a
        media type no parser claims: intake keeps it as a dead letter with its bytes, and ``commit``
        writes the mapping error to the row.
        """
        row_id = row[ob.id_column]
        where = f"{ob.table} row {row_id}"
        content = mapping.dumps(row).encode("utf-8")
        handle = RowHandle(row_id, row[ob.updated_at_column])
        key, checkpoint = f"row:{row_id}", cursor.dump() if cursor else None
        try:
            invoice = self.row_invoice(row, where=where)
        except ValueError as exc:
            self.log.warning("erp_row_unmappable", table=ob.table, row=row_id, error=str(exc))
            document = Document(
                content=content,
                media_type=ROW_MEDIA_TYPE,
                filename=f"{ob.table}-{row_id}.erp-row",
                source=self.name,
                origin=f"{ob.table}#{row_id}",
            )
            return Incoming(
                documents=[document],
                key=key,
                checkpoint=checkpoint,
                handle=RowHandle(row_id, handle.updated_at, str(exc)),
            )
        document = Document(
            content=content,
            media_type="application/json",
            filename=f"{ob.table}-{row_id}.json",
            source=self.name,
            origin=f"{ob.table}#{row_id}",
        )
        return Incoming(
            documents=[document],
            invoices=[(invoice, document)],
            key=key,
            checkpoint=checkpoint,
            handle=handle,
        )

    def row_invoice(self, row: dict[str, Any], *, where: str = "row") -> Invoice:
        """Map one outbound row to an Invoice (payload JSON first, mapped columns over it)."""
        ob, _ = self._outbound()
        data: dict[str, Any] = {}
        if ob.payload_column:
            payload = mapping.loads(row.get(ob.payload_column))
            if payload is not None and not isinstance(payload, dict):
                raise ValueError(
                    f"{where}: column {ob.payload_column} holds {type(payload).__name__}, not an object"
                )
            data = payload or {}
        for path, column in ob.fields.items():
            value = row.get(column)
            if value is None or value == "":
                continue
            if path == "lines" or path in _COMPOUND_ROOTS:
                value = mapping.loads(value) if isinstance(value, str | bytes) else mapping.decimals(value)
            mapping.set_path(data, path, value)
        data.setdefault("kind", self.settings.default_kind)
        extra = data.setdefault("extra", {})
        if not isinstance(extra, dict):
            raise ValueError(f"{where}: extra must be an object")
        extra["source_row"] = row[ob.id_column]
        extra["source_table"] = ob.table
        extra["source_connector"] = self.name
        if not data.get("number") and extra.get("order_no"):
            # Not issued yet: the ERP's own document number stands in until the platform issues one.
            data["number"] = str(extra["order_no"])
            extra["issue_request"] = True
        return mapping.build_invoice(data, where=where)

    def commit(self, incoming: Incoming, outcome: IntakeOutcome) -> None:
        ob, table = self._outbound()
        handle: RowHandle = incoming.handle
        statuses = self.settings.statuses
        values: dict[str, Any] = {ob.updated_at_column: table.c[ob.updated_at_column]}
        if outcome.ok:
            values[ob.status_column] = statuses.picked
            if ob.error_column:
                values[ob.error_column] = None
        else:
            values[ob.status_column] = statuses.error
            if ob.error_column:
                values[ob.error_column] = handle.error or (
                    f"the hub could not take this row ({outcome.dead_letters} dead letter(s)); "
                    "see `hub dlq list`"
                )
        stmt = (
            sa.update(table)
            .where(table.c[ob.id_column] == handle.id)
            .where(table.c[ob.updated_at_column] == handle.updated_at)
            .where(table.c[ob.status_column].in_(self._pick_statuses()))
            .values(values)
        )
        with _db_errors("commit", table=ob.table, row=handle.id), self._engine.begin() as conn:
            changed = conn.execute(stmt).rowcount
        self.log.info(
            "erp_row_committed",
            table=ob.table,
            row=handle.id,
            status=values[ob.status_column],
            changed=changed,
        )

    # -- sink ---------------------------------------------------------------------------------------
    def deliver(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        detail: dict[str, Any] = {}
        with (
            _db_errors("deliver", identity=invoice.identity, idempotency_key=request.idempotency_key),
            self._engine.begin() as conn,
        ):
            if self._tables.inbound is not None:
                detail.update(self._write_inbound(conn, request))
            if self._tables.outbound is not None:
                detail["written_back"] = self._write_back(conn, request)
        self.log.info("erp_delivered", identity=invoice.identity, **detail)
        ref = detail.get("inbound_id")
        remote_ref = (
            f"{self._tables.inbound.name}:{ref}"
            if ref is not None and self._tables.inbound is not None
            else None
        )
        return Receipt(remote_ref=remote_ref, detail=detail)

    def _write_inbound(self, conn: Connection, request: DeliveryRequest) -> dict[str, Any]:
        assert self.settings.inbound is not None and self._tables.inbound is not None
        c = self.settings.inbound.columns
        table = self._tables.inbound
        invoice = request.invoice
        key = request.idempotency_key
        existing = conn.execute(self._inbound_row(key)).first()
        if existing is not None:
            return {"inbound_id": existing[0], "version": existing[1], "created": False}
        version = 1
        if c.version:
            latest = conn.execute(
                sa.select(sa.func.max(table.c[c.version])).where(table.c[c.identity] == invoice.identity)
            ).scalar()
            version = (latest or 0) + 1
        now = datetime.now(UTC).replace(tzinfo=None)
        values: dict[str, Any] = {
            c.idempotency_key: key,
            c.identity: invoice.identity,
            c.content_hash: request.event.content_hash,
            c.payload: mapping.invoice_data(invoice),
        }
        optional = {
            c.event_type: request.event.type,
            c.kind: invoice.kind.value,
            c.number: invoice.number,
            c.issue_date: invoice.issue_date,
            c.seller_tax_id: invoice.seller.tax_id,
            c.buyer_tax_id: invoice.buyer.tax_id,
            c.gross: invoice.totals.gross,
            c.currency: invoice.currency,
            c.invoice_status: invoice.status.value,
            c.source: request.event.source,
            c.status: self.settings.statuses.new,
            c.version: version,
            c.amends: request.amends,
            c.created_at: now,
            c.updated_at: now,
        }
        values.update({col: value for col, value in optional.items() if col})
        created = self._insert_once(conn, table, c.idempotency_key, values)
        query = self._inbound_row(key)
        if self._dialect in {"mysql", "mariadb"}:
            # InnoDB's REPEATABLE READ would answer from this transaction's snapshot, taken before a
            # concurrent delivery of the same key committed its row; a locking read sees that row.
            query = query.with_for_update(read=True)
        row = conn.execute(query).one()
        return {"inbound_id": row[0], "version": row[1], "created": created}

    def _inbound_row(self, key: str) -> sa.Select[Any]:
        assert self.settings.inbound is not None and self._tables.inbound is not None
        c = self.settings.inbound.columns
        table = self._tables.inbound
        version = table.c[c.version] if c.version else sa.literal(1)
        return sa.select(table.c[c.id], version).where(table.c[c.idempotency_key] == key)

    def _insert_once(
        self, conn: Connection, table: sa.Table, key_column: str, values: dict[str, Any]
    ) -> bool:
        """INSERT that does nothing when the idempotency key is there already (a concurrent delivery
        of the same key got there first); True when this call inserted the row."""
        if self._dialect in {"postgresql", "sqlite"}:
            dialect_insert = pg_dialect.insert if self._dialect == "postgresql" else sqlite_dialect.insert
            stmt = (
                dialect_insert(table)
                .values(values)
                .on_conflict_do_nothing(index_elements=[key_column])
                .returning(*table.primary_key.columns)
            )
            return conn.execute(stmt).first() is not None
        if self._dialect in {"mysql", "mariadb"}:
            mysql_stmt = mysql_dialect.insert(table).values(values)
            mysql_stmt = mysql_stmt.on_duplicate_key_update({key_column: mysql_stmt.inserted[key_column]})
            return bool(conn.execute(mysql_stmt).lastrowid)  # 0: the key existed, nothing inserted
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.insert(table).values(values))
        except sa_exc.IntegrityError:
            savepoint.rollback()
            if conn.execute(self._inbound_row(values[key_column])).first() is None:
                raise  # another constraint refused the row
            return False
        savepoint.commit()
        return True

    def _write_back(self, conn: Connection, request: DeliveryRequest) -> int:
        """Update the outbound row an issued invoice belongs to; returns the rows changed (0 or 1)."""
        ob, table = self._outbound()
        invoice = request.invoice
        extra = invoice.extra
        issued_elsewhere = bool(extra.get("platform_serial") or extra.get("requested_as"))
        if request.event.source == self.name and not issued_elsewhere:
            return 0  # our own row coming back unchanged: nothing was issued
        if extra.get("issue_request") and not issued_elsewhere:
            return 0  # still the request, not an issued invoice
        if extra.get("source_table") not in (None, ob.table):
            return 0
        wb = ob.writeback
        if extra.get("source_row") is not None:
            condition = table.c[ob.id_column] == extra["source_row"]
        elif extra.get("order_no") is not None and wb.match_column:
            condition = table.c[wb.match_column] == str(extra["order_no"])
        else:
            return 0
        values: dict[str, Any] = {ob.updated_at_column: table.c[ob.updated_at_column]}
        if request.event.type == "invoice.received":
            values[ob.status_column] = self.settings.statuses.done
            if ob.error_column:
                values[ob.error_column] = None
            for column, value in (
                (wb.number, invoice.number),
                (wb.code, invoice.code),
                (wb.issue_date, invoice.issue_date),
                (wb.content_hash, request.event.content_hash),
            ):
                if column:
                    values[column] = value
        if wb.invoice_status:
            values[wb.invoice_status] = invoice.status.value
        changed = conn.execute(sa.update(table).where(condition).values(values)).rowcount
        self.log.info(
            "erp_written_back",
            table=ob.table,
            number=invoice.number,
            status=invoice.status.value,
            changed=changed,
        )
        return int(changed)

    # -- inventory ----------------------------------------------------------------------------------
    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        if self.settings.inventory == "outbound":
            yield from self._inventory_outbound(since, until)
        else:
            yield from self._inventory_inbound(since, until)

    def _inventory_inbound(self, since: date | None, until: date | None) -> Iterator[InventoryItem]:
        assert self.settings.inbound is not None and self._tables.inbound is not None
        c = self.settings.inbound.columns
        table = self._tables.inbound
        query = sa.select(table)
        if c.issue_date:
            if since:
                query = query.where(table.c[c.issue_date] >= since)
            if until:
                query = query.where(table.c[c.issue_date] <= until)
        order = [table.c[c.identity]] + ([table.c[c.version]] if c.version else []) + [table.c[c.id]]
        query = query.order_by(*order)
        previous: dict[str, Any] | None = None
        with _db_errors("inventory", table=table.name), self._engine.connect() as conn:
            result = conn.execution_options(yield_per=500).execute(query)
            for raw in result:
                row = dict(raw._mapping)
                if previous is not None and previous[c.identity] != row[c.identity]:
                    item = self._inbound_item(previous, since, until)
                    if item is not None:
                        yield item
                previous = row
        if previous is not None:
            item = self._inbound_item(previous, since, until)
            if item is not None:
                yield item

    def _inbound_item(
        self, row: dict[str, Any], since: date | None, until: date | None
    ) -> InventoryItem | None:
        assert self.settings.inbound is not None
        c = self.settings.inbound.columns
        payload = mapping.loads(row[c.payload]) or {}
        issue_date = row.get(c.issue_date) if c.issue_date else None
        if issue_date is None and payload.get("issue_date"):
            issue_date = date.fromisoformat(str(payload["issue_date"]))
        if issue_date is not None and ((since and issue_date < since) or (until and issue_date > until)):
            return None
        gross = row.get(c.gross) if c.gross else None
        if gross is None:
            gross_text = mapping.get_path(payload, "totals.gross")
            gross = Decimal(str(gross_text)) if gross_text is not None else None
        return InventoryItem(
            identity=row[c.identity],
            content_hash=row[c.content_hash],
            issue_date=issue_date,
            gross=gross,
            currency=(row.get(c.currency) if c.currency else None) or payload.get("currency"),
            seller_tax_id=(row.get(c.seller_tax_id) if c.seller_tax_id else None)
            or mapping.get_path(payload, "seller.tax_id"),
            buyer_tax_id=(row.get(c.buyer_tax_id) if c.buyer_tax_id else None)
            or mapping.get_path(payload, "buyer.tax_id"),
            number=(row.get(c.number) if c.number else None) or payload.get("number"),
            remote_ref=(row.get(c.erp_doc_no) if c.erp_doc_no else None)
            or f"{self._tables.inbound.name}:{row[c.id]}",  # type: ignore[union-attr]
        )

    def _inventory_outbound(self, since: date | None, until: date | None) -> Iterator[InventoryItem]:
        ob, table = self._outbound()
        wb = ob.writeback
        date_column = ob.fields.get("issue_date")
        query = sa.select(table)
        if date_column:
            if since:
                query = query.where(table.c[date_column] >= since)
            if until:
                query = query.where(table.c[date_column] <= until)
        query = query.order_by(table.c[ob.id_column])
        with _db_errors("inventory", table=ob.table), self._engine.connect() as conn:
            result = conn.execution_options(yield_per=500).execute(query)
            for raw in result:
                row = dict(raw._mapping)
                if wb.number and row.get(wb.number):
                    row[ob.fields.get("number", "__number")] = row[wb.number]
                try:
                    invoice = self.row_invoice(row, where=f"{ob.table} row {row[ob.id_column]}")
                except ValueError as exc:
                    self.log.warning(
                        "erp_row_unmappable", table=ob.table, row=row[ob.id_column], error=str(exc)
                    )
                    continue
                if (since and invoice.issue_date < since) or (until and invoice.issue_date > until):
                    continue
                yield InventoryItem(
                    identity=invoice.identity,
                    content_hash=content_hash(invoice),
                    issue_date=invoice.issue_date,
                    gross=invoice.totals.gross,
                    currency=invoice.currency,
                    seller_tax_id=invoice.seller.tax_id,
                    buyer_tax_id=invoice.buyer.tax_id,
                    number=invoice.number,
                    remote_ref=f"{ob.table}:{row[ob.id_column]}",
                )


@hookimpl
def hub_register_connector_types() -> list[type[ErpSqlConnector]]:
    return [ErpSqlConnector]


# ---------------------------------------------------------------------------------------------------
# python -m invoice_hub_plugins.erp_sql create-tables URL
# ---------------------------------------------------------------------------------------------------
@click.group()
def main() -> None:
    """Helpers for the erp.sql middle tables."""


@main.command("create-tables")
@click.argument("url")
@click.option("--schema", default=None, help="Database schema to create the tables in.")
@click.option("--outbound", "outbound_table", default="hub_outbound", show_default=True)
@click.option("--inbound", "inbound_table", default="hub_inbound", show_default=True)
def create_tables_command(url: str, schema: str | None, outbound_table: str, inbound_table: str) -> None:
    """Create the example outbound and inbound tables (default column mapping) in the database at URL."""
    settings = ErpSqlSettings.model_validate(
        {
            "url": url,
            "schema": schema,
            "outbound": {"table": outbound_table},
            "inbound": {"table": inbound_table},
        }
    )
    create_tables(settings)
    where = sa.make_url(url).render_as_string(hide_password=True)
    click.echo(f"created {outbound_table} and {inbound_table} (if missing) in {where}")


def ddl(settings: ErpSqlSettings, dialect: str) -> str:
    """The CREATE statements for the configured tables in ``dialect`` (for a DBA to review and run)."""
    from sqlalchemy.schema import CreateIndex, CreateTable

    engine_dialect = (
        mysql_dialect.dialect(is_mariadb=dialect == "mariadb")
        if dialect in {"mysql", "mariadb"}
        else pg_dialect.dialect()
        if dialect == "postgresql"
        else sqlite_dialect.dialect()
    )
    tables = build_tables(settings, dialect)
    out = []
    for table in (tables.outbound, tables.inbound):
        if table is None:
            continue
        out.append(str(CreateTable(table).compile(dialect=engine_dialect)).strip() + ";")
        out.extend(str(CreateIndex(ix).compile(dialect=engine_dialect)).strip() + ";" for ix in table.indexes)
    return "\n".join(out) + "\n"


@hookimpl
def hub_register_commands(cli: click.Group) -> None:
    @cli.group("erp-sql")
    def erp_sql_group() -> None:
        """erp.sql middle tables."""

    @erp_sql_group.command("create-tables")
    @click.argument("connector")
    @click.option("--print-ddl", is_flag=True, help="Print the CREATE statements instead of running them.")
    @click.pass_obj
    def create_for_connector(state: Any, connector: str, print_ddl: bool) -> None:
        """Create the outbound/inbound tables of CONNECTOR (an erp.sql connector in hub.yaml)."""
        config = state.loaded.config
        entry = config.connectors.get(connector)
        if entry is None or entry.type != ErpSqlConnector.type_name:
            names = sorted(n for n, c in config.connectors.items() if c.type == "erp.sql")
            raise click.UsageError(
                f"{connector!r} is not an erp.sql connector in hub.yaml (erp.sql: {names})"
            )
        settings = ErpSqlSettings.model_validate(entry.settings)
        url = sa.make_url(settings.url.get_secret_value())
        if print_ddl:
            click.echo(ddl(settings, url.get_backend_name()), nl=False)
            return
        create_tables(settings)
        click.echo(f"{connector}: tables ready in {url.render_as_string(hide_password=True)}")


if __name__ == "__main__":
    main()
