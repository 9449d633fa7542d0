"""The ledger: the hub's durable memory and its outbox (SQLAlchemy 2, SQLite in WAL mode or PostgreSQL).

Everything that happens to an invoice is written here before anything is acknowledged: documents
(raw bytes), invoice versions by identity, events, deliveries with every state change, attempts,
dead letters, source checkpoints and the operator audit log. The bus only carries delivery ids; a
message lost or duplicated on the bus changes nothing the ledger does not already know.

SQLite runs with ``journal_mode=WAL`` and ``synchronous=NORMAL``: a committed transaction survives a
crash of the process (``kill -9``); only a power loss can take the last few commits, and the outbox
then re-derives nothing wrong, it just has fewer invoices. Writers open ``BEGIN IMMEDIATE`` so two
threads never deadlock on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from hub.errors import LedgerError
from hub.ledger import schema as t
from hub.ledger.schema import LATEST, MIGRATIONS
from hub.models import Document

__all__ = ["Ledger", "document_from_row", "t"]


def now() -> datetime:
    return datetime.now(UTC)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def loads(value: str | bytes | None) -> Any:
    return None if value is None else orjson.loads(value)


def document_from_row(row: Any) -> Document:
    """A ``Document`` from a row of the documents table (a mapping)."""
    return Document(
        content=row["content"],
        media_type=row["media_type"],
        filename=row["filename"],
        source=row["source"],
        origin=row["origin"],
        parent_sha256=row["parent_sha256"],
        received_at=row["received_at"],
    )


#: The WAL that makes a commit checkpoint (see ``_sqlite_setup``). The page size stays SQLite's 4 KB:
#: 16 KB pages made intake's write 20 % cheaper on a new ledger, but a new key of a content-hash index
#: lands on a page of its own once the ledger holds more than a batch's worth of pages, and four times
#: the bytes per page made 2,000 invoices 10-18 % slower against 100,000 and 500,000 older deliveries
#: (``scripts/bench_ledger_growth.py``; docs/benchmarks.md, stop 19).
WAL_CHECKPOINT_BYTES = 40 * 1024 * 1024


class _WriteLock:
    """The turn to write to a SQLite ledger: a lock for the threads of this process and, for a ledger
    file, an ``flock`` on a file beside it for the processes (``hub run --workers N``, the CLI).

    SQLite's own busy handler makes a writer that finds the database locked sleep 1, 2, 5, 10 … ms and
    try again; between two busy processes that was most of the supervisor's wait for the lock. A
    process blocked in ``flock`` is woken the moment the holder lets go. The kernel drops the lock of a
    process that dies (``kill -9``), and the busy handler stays behind it for writers that do not take
    this lock (an older hub, the ``sqlite3`` shell). Reentrant, like the ``RLock`` it wraps: only the
    outermost hold takes and drops the file lock."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        if path is not None:
            try:
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._fd = None  # a read-only folder: SQLite's busy handler alone, as before

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError:
                self._depth -= 1
                self._lock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._depth == 1 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._depth -= 1
            self._lock.release()

    @property
    def fd(self) -> int | None:
        """The lock file's descriptor (None without one), for a forked child to close."""
        return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Ledger:
    """One ledger database. Thread-safe: every transaction takes its own pooled connection."""

    def __init__(self, url: str, *, migrate: bool = True, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 16
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = sa.create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise LedgerError(f"cannot open the ledger {self.safe_url}: {exc}") from exc
        if self.dialect == "sqlite":
            self._sqlite_setup(self.engine)
        self._statements: dict[tuple[str, str, tuple[str, ...]], tuple[str, list[int]]] = {}
        self._migrate_lock = threading.Lock()
        self._write_lock: Any = contextlib.nullcontext()
        if self.dialect == "sqlite":
            database = parsed.database
            file_db = bool(database) and database != ":memory:" and not str(database).startswith("file:")
            self._write_lock = _WriteLock(f"{database}.writer-lock" if file_db else None)
        if migrate:
            self.migrate()

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @staticmethod
    def _sqlite_setup(engine: Engine) -> None:
        @sa_event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA temp_store=MEMORY")
            # A checkpoint runs inside the commit that crosses this many WAL pages, while that writer
            # holds the one write lock: at SQLite's default (1,000 pages, 4 MB) it was half of intake's
            # commit time. 40 MB of WAL at most between checkpoints halves that and measured 5-10 %
            # more invoices/s end to end (docs/benchmarks.md, stop 12). `hub run` also checkpoints
            # from a thread of its own, beside the writers (Hub._checkpoint_loop), so this is the
            # fallback.
            cur.execute("PRAGMA page_size")
            (page_size,) = cur.fetchone()
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page_size}")
            cur.close()

        @sa_event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the write lock up front (no deadlock on a lock upgrade); readers do not.
            conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("hub_write") else "BEGIN"
            )

    def close(self) -> None:
        self.engine.dispose()
        if isinstance(self._write_lock, _WriteLock):
            self._write_lock.close()

    # -----------------------------------------------------------------------------------------------
    # Transactions and migrations
    # -----------------------------------------------------------------------------------------------
    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction; ``LedgerError`` when the database cannot be reached.

        On SQLite the threads of one process take turns through a lock before ``BEGIN IMMEDIATE``:
        SQLite's own busy handler sleeps and polls, a lock wakes the next writer at once."""
        try:
            with self._write_lock, self.engine.connect() as conn:
                conn.execution_options(hub_write=True)
                with conn.begin():
                    yield conn
        except sa.exc.OperationalError as exc:
            raise LedgerError(f"ledger {self.safe_url} failed: {exc.orig}") from exc

    def wal_checkpoint(self) -> tuple[int, int]:
        """Copy what the SQLite WAL holds into the database file (``PRAGMA wal_checkpoint(PASSIVE)``),
        without the write lock: writers go on meanwhile. Returns (WAL frames, frames copied); (0, 0)
        for PostgreSQL."""
        if self.dialect != "sqlite":
            return (0, 0)
        with self.engine.connect() as conn:
            _busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            conn.rollback()
        return int(frames), int(copied)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.begin() as conn:
            yield conn

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("schema_migrations"):
                return 0
            return int(conn.execute(sa.select(sa.func.max(t.schema_migrations.c.version))).scalar() or 0)

    def migrate(self) -> list[int]:
        """Apply the migrations this ledger has not seen; returns the versions applied."""
        applied: list[int] = []
        with self._migrate_lock:
            try:
                with self.engine.begin() as conn:
                    if self.dialect == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(724331)"))
                    t.schema_migrations.create(conn, checkfirst=True)
                    have = set(conn.execute(sa.select(t.schema_migrations.c.version)).scalars())
                    if have and max(have) > LATEST:
                        raise LedgerError(
                            f"the ledger is at schema version {max(have)}, newer than this hub ({LATEST}); "
                            "upgrade invoice-hub"
                        )
                    for version, name, fn in MIGRATIONS:
                        if version in have:
                            continue
                        fn(conn)
                        conn.execute(
                            t.schema_migrations.insert().values(version=version, name=name, applied_at=now())
                        )
                        applied.append(version)
            except SQLAlchemyError as exc:
                raise LedgerError(f"cannot migrate the ledger {self.safe_url}: {exc}") from exc
        return applied

    # -----------------------------------------------------------------------------------------------
    # Bulk writes straight through the driver
    # -----------------------------------------------------------------------------------------------
    def insert_many(
        self,
        conn: Connection,
        table: sa.Table,
        rows: Sequence[Mapping[str, Any]],
        *,
        on_conflict_skip: str | None = None,
    ) -> None:
        """``INSERT`` many rows with one DBAPI ``executemany``. The hot writes (several rows per invoice)
        go this way: SQLAlchemy Core's executemany builds and type-processes a parameter dict per row,
        which cost more than SQLite's own work. Every row has the keys of the first; values are what the
        driver takes (str, int, bytes, None) except timestamps, which are converted as ``UTCDateTime``
        stores them (aware datetimes only). ``on_conflict_skip``: a unique column; a row whose value is
        already there is left out."""
        if rows:
            names = tuple(rows[0])
            verb = f"insert-skip:{on_conflict_skip}" if on_conflict_skip else "insert"
            sql, stamps = self._statement(verb, table, names)
            self._execute_many(conn, sql, [[row[n] for n in names] for row in rows], stamps)

    def insert_many_ids(
        self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """``insert_many`` for a table with an integer ``id`` key; returns the new ids in the order of
        ``rows``.

        On SQLite the write transaction holds the database (``BEGIN IMMEDIATE``) and a rowid table gives
        each new row one more than the largest id it holds, so the rows of one ``executemany`` get
        consecutive ids ending at ``last_insert_rowid()``: no query reads them back. (Only a table
        whose largest id is 2**63 - 1 picks ids at random; the count check below refuses that.) On
        PostgreSQL, ``INSERT … RETURNING`` in parameter order."""
        if not rows:
            return []
        if self.dialect != "sqlite":
            result = conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
            return [int(i) for i in result.scalars()]
        self.insert_many(conn, table, rows)
        last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
        first = last - len(rows) + 1
        mine = conn.exec_driver_sql(
            f"SELECT count(*) FROM {table.name} WHERE id BETWEEN ? AND ?", (first, last)
        ).scalar_one()
        if mine != len(rows):
            raise LedgerError(f"{table.name}: {len(rows)} rows inserted but {mine} ids in {first}..{last}")
        return list(range(first, last + 1))

    def update_many(
        self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], key: str = "id"
    ) -> None:
        """``UPDATE table SET … WHERE key = …`` for each row (the same columns in every row), in one
        DBAPI ``executemany``; see ``insert_many``."""
        if rows:
            names = (*(n for n in rows[0] if n != key), key)
            sql, stamps = self._statement("update", table, names)
            self._execute_many(conn, sql, [[row[n] for n in names] for row in rows], stamps)

    def _statement(self, verb: str, table: sa.Table, names: tuple[str, ...]) -> tuple[str, list[int]]:
        cached = self._statements.get((verb, table.name, names))
        if cached is None:
            for name in names:
                if name not in table.c:
                    raise LedgerError(f"table {table.name} has no column {name!r}")
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            if verb.startswith("insert"):
                sql = (
                    f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"
                )
                _, _, skip = verb.partition("insert-skip:")
                if skip:
                    if skip not in table.c:
                        raise LedgerError(f"table {table.name} has no column {skip!r}")
                    sql += f" ON CONFLICT ({skip}) DO NOTHING"
            else:
                sets = ", ".join(f"{n} = {mark}" for n in names[:-1])
                sql = f"UPDATE {table.name} SET {sets} WHERE {names[-1]} = {mark}"
            stamps = [i for i, n in enumerate(names) if isinstance(table.c[n].type, t.UTCDateTime)]
            cached = self._statements[(verb, table.name, names)] = (sql, stamps)
        return cached

    def _execute_many(self, conn: Connection, sql: str, params: list[list[Any]], stamps: list[int]) -> None:
        if stamps:
            # Rows of one batch share their timestamps: each distinct one is converted once.
            convert = t.UTCDateTime.to_db_sqlite if self.dialect == "sqlite" else t.UTCDateTime.to_db
            seen: dict[int, Any] = {}
            for values in params:
                for i in stamps:
                    value = values[i]
                    if value is not None:
                        done = seen.get(id(value))
                        if done is None or done[0] is not value:
                            done = seen[id(value)] = (value, convert(value))
                        values[i] = done[1]
        conn.exec_driver_sql(sql, [tuple(values) for values in params])

    # -----------------------------------------------------------------------------------------------
    # Documents
    # -----------------------------------------------------------------------------------------------
    def put_documents(self, conn: Connection, docs: Sequence[Document]) -> None:
        """Insert documents not yet stored (by sha256); existing ones are kept as they are
        (``ON CONFLICT DO NOTHING``, the same words on SQLite and PostgreSQL: no query first)."""
        if not docs:
            return
        # The first of a batch's documents with the same bytes is kept, as a later batch's would be.
        unique: dict[str, Document] = {}
        for d in docs:
            unique.setdefault(d.sha256, d)
        rows = [
            {
                "sha256": sha,
                "media_type": d.media_type,
                "filename": d.filename,
                "source": d.source,
                "origin": d.origin,
                "parent_sha256": d.parent_sha256,
                "size": d.size,
                "received_at": d.received_at,
                "content": d.content,
            }
            for sha, d in unique.items()
        ]
        self.insert_many(conn, t.documents, rows, on_conflict_skip="sha256")

    def get_document(self, sha256: str, conn: Connection | None = None) -> Document | None:
        def fetch(c: Connection) -> Document | None:
            row = c.execute(sa.select(t.documents).where(t.documents.c.sha256 == sha256)).mappings().first()
            return None if row is None else document_from_row(row)

        if conn is not None:
            return fetch(conn)
        with self.engine.connect() as c:
            return fetch(c)

    # -----------------------------------------------------------------------------------------------
    # Checkpoints and audit
    # -----------------------------------------------------------------------------------------------
    def get_checkpoint(self, connector: str) -> str | None:
        try:
            with self.engine.connect() as conn:
                value = conn.execute(
                    sa.select(t.checkpoints.c.value).where(t.checkpoints.c.connector == connector)
                ).scalar()
        except sa.exc.OperationalError as exc:
            raise LedgerError(f"ledger {self.safe_url} failed: {exc.orig}") from exc
        return None if value is None else str(value)

    def set_checkpoint(self, conn: Connection, connector: str, value: str) -> None:
        updated = conn.execute(
            t.checkpoints.update()
            .where(t.checkpoints.c.connector == connector)
            .values(value=value, updated_at=now())
        ).rowcount
        if not updated:
            conn.execute(t.checkpoints.insert().values(connector=connector, value=value, updated_at=now()))

    def audit(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        target: str | None,
        reason: str | None = None,
        detail: Any = None,
    ) -> None:
        conn.execute(
            t.audit_log.insert().values(
                at=now(),
                actor=actor,
                action=action,
                target=target,
                reason=reason,
                detail=None if detail is None else dumps(detail),
            )
        )

    def transition(
        self,
        conn: Connection,
        rows: Sequence[tuple[int, str | None, str, str | None]],
        at: datetime | None = None,
    ) -> None:
        """Record state changes: (delivery_id, from_state, to_state, detail)."""
        if rows:
            when = at or now()
            self.insert_many(
                conn,
                t.transitions,
                [
                    {"delivery_id": d, "from_state": f, "to_state": s, "at": when, "detail": detail}
                    for d, f, s, detail in rows
                ],
            )

    # -----------------------------------------------------------------------------------------------
    # Outbox helpers (scale-out)
    # -----------------------------------------------------------------------------------------------
    def mark_unpublished(self, ids: Sequence[int]) -> None:
        """Deliveries whose message did not reach the bus: the relay's next pass publishes them again
        (rather than waiting for the stale-message timeout)."""
        if not ids:
            return
        d = t.deliveries
        with self.begin() as conn:
            for start in range(0, len(ids), 1000):
                conn.execute(
                    d.update()
                    .where(d.c.id.in_(list(ids[start : start + 1000])), d.c.state.in_(t.OPEN_STATES))
                    .values(published_at=None)
                )

    def among(self, column: Any, values: Sequence[Any]) -> Any:
        """``column IN values`` for a long list (a batch's ids, keys, identities). On SQLite the list
        travels as one JSON parameter read by ``json_each``: the SQL stays the same whatever the length,
        so SQLAlchemy compiles it once, where an ``IN`` of 500 parameters was rendered and bound anew
        on every execution (~1 ms, more than SQLite's own work for the query). Elsewhere a plain
        ``IN``."""
        if self.dialect == "sqlite":
            listed = sa.func.json_each(sa.literal(orjson.dumps(list(values)).decode(), sa.Text))
            return column.in_(sa.select(listed.table_valued("value").c.value))
        return column.in_(list(values))

    def locking(self, select: Any, of: Any = None) -> Any:
        """``select`` with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL: concurrent relays and workers
        (threads or ``hub run`` processes) each take rows no other transaction holds; ``of`` limits the
        lock to one table of a join. SQLite is one process (``BEGIN IMMEDIATE`` already serialises
        writers), so the select is returned unchanged."""
        if self.dialect == "postgresql":
            return select.with_for_update(skip_locked=True, of=of)
        return select
