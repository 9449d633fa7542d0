"""The ledger on SQLite and on PostgreSQL: migrations, the outbox, the atomic claim, the whole flow."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from hub import ops
from hub.config import load_config
from hub.connectors import Incoming
from hub.engine import Hub
from hub.factory import invoice_json
from hub.ledger import Ledger, now
from hub.ledger import schema as t
from hub.ledger.schema import LATEST
from hub.models import Document
from tests.conftest import write_hub_yaml


def hub_config(tmp_path: Path, ledger_url: str, **sink: Any) -> Path:
    return write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": ledger_url,
            "data_dir": str(tmp_path / ".hub"),
            "worker": {"threads": 2, "relay_interval": 0.2},
            "retry": {"max_attempts": 3, "initial_delay": 0.05, "max_delay": 0.2, "jitter": 0.1},
            "connectors": {
                # Documents come in by hand here (Hub.ingest with source "manual"); the folder is unused.
                "manual": {"type": "files", "enabled": False, "settings": {"path": str(tmp_path)}},
                "sink": {"type": "recording", "settings": {"path": str(tmp_path / "sink.db"), **sink}},
            },
            "routes": [{"name": "manual", "from": "manual", "to": "sink"}],
        },
    )


def docs(numbers: range) -> list[Incoming]:
    return [
        Incoming(
            documents=[
                Document(
                    content=invoice_json(i),
                    media_type="application/json",
                    filename=f"{i}.json",
                    source="manual",
                )
            ],
            key=str(i),
        )
        for i in numbers
    ]


def test_migrations_are_versioned_and_idempotent(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    try:
        assert ledger.schema_version() == LATEST
        assert ledger.migrate() == []
        with ledger.engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("deliveries")}
        assert {"ix_deliveries_dest_identity", "ux_deliveries_claim", "ix_deliveries_state"} <= indexes
        assert "ix_deliveries_idem" not in indexes  # migration 5
        assert {
            "documents",
            "invoice_versions",
            "deliveries",
            "delivery_transitions",
            "attempts",
            "dead_letters",
            "checkpoints",
            "audit_log",
            "schema_migrations",
        } <= names
    finally:
        ledger.close()


def test_a_ledger_of_schema_3_loses_the_indexes_no_query_reads(ledger_url: str) -> None:
    """Migrations 4 and 5 on a ledger made before them: its index of events by document and its index
    of deliveries by key are dropped, once; everything else stays."""
    ledger = Ledger(ledger_url)
    try:
        with ledger.engine.begin() as conn:  # the ledger as schema 3 left it
            conn.execute(sa.text("CREATE INDEX ix_events_document ON events (document_sha256)"))
            conn.execute(sa.text("CREATE INDEX ix_deliveries_idem ON deliveries (idem_key, destination)"))
            conn.execute(sa.text("DELETE FROM schema_migrations WHERE version > 3"))
        assert ledger.schema_version() == 3
        assert ledger.migrate() == [4, 5, 6]
        assert ledger.migrate() == []
        with ledger.engine.connect() as conn:
            events = {i["name"] for i in sa.inspect(conn).get_indexes("events")}
            deliveries = {i["name"] for i in sa.inspect(conn).get_indexes("deliveries")}
        assert "ix_events_document" not in events and "ix_events_identity" in events
        assert "ix_deliveries_idem" not in deliveries
        assert {"ix_deliveries_event", "ix_deliveries_dest_identity", "ux_deliveries_claim"} <= deliveries
    finally:
        ledger.close()


def test_a_ledger_of_schema_5_finds_its_dead_letters_by_number(ledger_url: str) -> None:
    """Migration 6 on a ledger made before it: the dead letters get a number column, filled from the
    invoice JSON they hold, and indexes by identity, number and hash; a trace by number finds a letter
    written before the migration."""
    ledger = Ledger(ledger_url)
    at = now()
    letter = {
        "stage": "intake",
        "source": "manual",
        "identity": None,
        "invoice_json": None,
        "document_sha256": None,
        "error_class": "ValidationFailed",
        "message": "seller.tax_id: bad checksum",
        "attempts": 0,
        "state": "open",
        "created_at": at,
        "updated_at": at,
    }
    try:
        with ledger.engine.begin() as conn:  # the ledger as schema 5 left it
            for name in ("ix_dead_letters_identity", "ix_dead_letters_number", "ix_dead_letters_hash"):
                conn.execute(sa.text(f"DROP INDEX {name}"))
            conn.execute(sa.text("DELETE FROM schema_migrations WHERE version = 6"))
            conn.execute(
                t.dead_letters.insert(),
                [
                    {
                        **letter,
                        "identity": "CN:25310000000000000077",
                        "invoice_json": '{"number": "25310000000000000077"}',
                    },
                    {**letter, "invoice_json": "[1, 2]"},
                    {**letter, "document_sha256": "ab" * 32},
                ],
            )
        assert ledger.schema_version() == 5
        assert ledger.migrate() == [6]
        assert ledger.migrate() == []
        with ledger.engine.connect() as conn:
            numbers = conn.execute(sa.select(t.dead_letters.c.number).order_by(t.dead_letters.c.id)).scalars()
            assert list(numbers) == ["25310000000000000077", None, None]
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("dead_letters")}
        assert {"ix_dead_letters_identity", "ix_dead_letters_number", "ix_dead_letters_hash"} <= indexes
        story = ops.trace(ledger, "25310000000000000077")
        assert [x["message"] for x in story["dead_letters"]] == ["seller.tax_id: bad checksum"]
    finally:
        ledger.close()


def test_claim_index_allows_one_claimed_or_delivered_per_key(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    at = now()
    row = {
        "event_id": "e",
        "destination": "erp",
        "idem_key": "k",
        "identity": "CN:1",
        "content_hash": "h",
        "attempts": 0,
        "created_at": at,
        "updated_at": at,
    }
    try:
        with ledger.begin() as conn:
            conn.execute(
                t.deliveries.insert(),
                [{**row, "state": "delivered"}, {**row, "state": "pending"}, {**row, "state": "dead"}],
            )
        with pytest.raises(IntegrityError), ledger.begin() as conn:
            conn.execute(
                t.deliveries.update().where(t.deliveries.c.state == "pending").values(state="inflight")
            )
        with ledger.begin() as conn:  # another destination may hold the same key
            conn.execute(t.deliveries.insert(), [{**row, "destination": "archive", "state": "inflight"}])
    finally:
        ledger.close()


def test_documents_are_stored_once_and_the_wal_checkpoint_copies_everything(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    try:
        doc = Document(content=invoice_json(1), media_type="application/json", filename="a.json", source="s")
        again = Document(content=doc.content, media_type="text/plain", filename="b.json", source="t")
        with ledger.begin() as conn:
            ledger.put_documents(conn, [doc])
        with ledger.begin() as conn:
            ledger.put_documents(conn, [again, doc])  # already there: kept as first stored, no error
        with ledger.engine.connect() as conn:
            rows = conn.execute(sa.select(t.documents.c.filename, t.documents.c.source)).all()
        assert rows == [("a.json", "s")]
        frames, copied = ledger.wal_checkpoint()
        if ledger.dialect == "sqlite":
            assert frames > 0 and copied == frames, (frames, copied)
        else:
            assert (frames, copied) == (0, 0)
    finally:
        ledger.close()


def test_sqlite_writers_of_several_processes_take_turns_through_a_file_lock(tmp_path: Path) -> None:
    """`hub run --workers N` and the CLI write to one SQLite file from several processes: each write
    transaction holds an flock on `<ledger>.writer-lock` (woken at once when the holder lets go, where
    SQLite's busy handler sleeps and polls), and lets it go at commit or on an error."""
    db = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{db}")
    lock_path = Path(f"{db}.writer-lock")

    def held_elsewhere() -> bool:
        fd = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock this probe took
        return False

    try:
        assert lock_path.exists() and not held_elsewhere()
        with ledger.begin() as conn:
            ledger.set_checkpoint(conn, "erp", "1")
            assert held_elsewhere()
        assert not held_elsewhere()
        with pytest.raises(RuntimeError), ledger.begin() as conn:
            ledger.set_checkpoint(conn, "erp", "2")
            raise RuntimeError("a failed transaction")
        assert not held_elsewhere()
        assert ledger.get_checkpoint("erp") == "1"
        # A second process's writer waits for this one's commit.
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from hub.ledger import Ledger\n"
                f"l = Ledger({f'sqlite:///{db}'!r})\n"
                "print('ready', flush=True); sys.stdin.readline()\n"
                "with l.begin() as c: l.set_checkpoint(c, 'erp', '3')\n"
                "print(l.get_checkpoint('erp'))",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with ledger.begin() as conn:
            ledger.set_checkpoint(conn, "erp", "held")
            child.stdin.write("go\n")
            child.stdin.flush()
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)  # blocked on our lock, not finished
        out, _ = child.communicate(timeout=60)
        assert out.strip() == "3" and ledger.get_checkpoint("erp") == "3"
    finally:
        ledger.close()


def test_checkpoints_and_audit_are_kept(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    try:
        assert ledger.get_checkpoint("erp") is None
        with ledger.begin() as conn:
            ledger.set_checkpoint(conn, "erp", "2026-11-01T00:00:00|41")
        with ledger.begin() as conn:
            ledger.set_checkpoint(conn, "erp", "2026-11-02T00:00:00|42")
            ledger.audit(
                conn, actor="alice", action="dlq.replay", target="dead_letter:1", reason="sink fixed"
            )
        assert ledger.get_checkpoint("erp") == "2026-11-02T00:00:00|42"
        with ledger.engine.connect() as conn:
            audit = conn.execute(sa.select(t.audit_log)).mappings().one()
        assert (audit["actor"], audit["action"], audit["reason"]) == ("alice", "dlq.replay", "sink fixed")
        assert audit["at"].tzinfo is not None
    finally:
        ledger.close()


def test_flow_on_both_ledgers(tmp_path: Path, ledger_url: str) -> None:
    """Intake → deliveries → sink → outcome, with duplicates skipped and every transition timestamped."""
    with Hub(load_config(hub_config(tmp_path, ledger_url, fail_first=1))) as hub:
        outcomes = hub.ingest(docs(range(40)), "manual")
        assert sum(o.accepted for o in outcomes) == 40
        again = hub.ingest(docs(range(30, 45)), "manual")  # 10 duplicates, 5 new
        assert sum(o.duplicates for o in again) == 10
        summary = hub.run(until_idle=True)
        assert summary["open"] == 0
        with hub.ledger.engine.connect() as conn:
            states = dict(
                conn.execute(
                    sa.select(t.deliveries.c.state, sa.func.count()).group_by(t.deliveries.c.state)
                ).all()
            )
            transitions = conn.execute(sa.select(t.transitions)).mappings().all()
            failed_attempts = conn.execute(
                sa.select(sa.func.count()).select_from(t.attempts).where(t.attempts.c.outcome == "retrying")
            ).scalar()
        assert states == {"delivered": 45, "skipped": 10}
        assert failed_attempts == 45  # fail_first=1: every key failed once, then went through
        assert all(tr["at"].tzinfo is not None for tr in transitions)
        assert {(tr["from_state"], tr["to_state"]) for tr in transitions} >= {
            (None, "pending"),
            ("pending", "inflight"),
            ("inflight", "retrying"),
            ("retrying", "inflight"),
            ("inflight", "delivered"),
            (None, "skipped"),
        }
        sink = hub.connectors["sink"]
        assert len(list(sink.inventory())) == 45  # type: ignore[attr-defined]


def test_hot_statements_find_deliveries_by_key_never_by_walking_a_state(tmp_path: Path) -> None:
    """Intake's write and a worker's claim and record read deliveries by id or by key. SQLite, without
    statistics, had chosen the state or destination index for three of them: every delivered delivery
    read per batch (171 ms a batch at 500,000 deliveries instead of 1 ms), so a hub slowed down as its
    ledger grew. Every statement on deliveries those paths run is checked with EXPLAIN QUERY PLAN."""
    db = tmp_path / "ledger.db"
    hub = Hub(load_config(hub_config(tmp_path, f"sqlite:///{db}")))
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if (
            "deliveries" in statement
            and not many
            and statement.lstrip().upper().startswith(("SELECT", "UPDATE"))
        ):
            seen.append((statement, parameters))

    try:
        sa.event.listen(hub.ledger.engine, "before_cursor_execute", grab)
        hub.ingest(docs(range(30)), "manual")
        hub.ingest(docs(range(20, 40)), "manual")  # duplicates: the live-key check finds them
        with sqlite3.connect(db) as side:  # not through the hub's engine: not one of its statements
            ids = [i for (i,) in side.execute("SELECT id FROM deliveries WHERE state = 'pending'")]
        hub.worker.handle("sink", ids)  # claim, deliver, record
        sa.event.remove(hub.ledger.engine, "before_cursor_execute", grab)
        with hub.ledger.engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).where(t.deliveries.c.state == "delivered")).scalar()
                == 40
            )
    finally:
        hub.close()
    assert len(seen) >= 4, seen
    raw = sqlite3.connect(db)
    try:
        for statement, parameters in seen:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            bad = [
                p for p in plan if "ix_deliveries_state" in p or p.startswith(("SCAN deliveries", "SCAN d "))
            ]
            bad += [p for p in plan if p.endswith("ix_deliveries_dest_identity (destination=?)")]
            assert not bad, f"{statement}\n{plan}"
    finally:
        raw.close()


def test_trace_by_number_or_hash_prefix_reads_by_index_never_a_whole_table(tmp_path: Path) -> None:
    """`hub trace` on a grown ledger: by an invoice number (20 digits, which also look like a hash
    prefix) and by a hash prefix, every statement on versions, events and deliveries finds its rows
    through an index. A hash prefix asked with LIKE, and deliveries asked by identity, had read those
    tables whole."""
    db = tmp_path / "ledger.db"
    hub = Hub(load_config(hub_config(tmp_path, f"sqlite:///{db}")))
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    bad = orjson.loads(invoice_json(99))
    bad["seller"]["tax_id"] = bad["seller"]["tax_id"][:-1] + (
        "0" if bad["seller"]["tax_id"][-1] != "0" else "1"
    )
    letters = [
        Incoming(
            documents=[Document(content=orjson.dumps(bad), media_type="application/json", source="manual")],
            key="bad",
        ),
        Incoming(
            documents=[Document(content=b"not an invoice", media_type="text/plain", source="manual")],
            key="junk",
        ),
    ]
    try:
        hub.ingest(docs(range(20)) + letters, "manual")
        with hub.ledger.engine.connect() as conn:
            number, identity, chash = conn.execute(
                sa.select(
                    t.invoice_versions.c.number,
                    t.invoice_versions.c.identity,
                    t.invoice_versions.c.content_hash,
                ).limit(1)
            ).one()
        sa.event.listen(hub.ledger.engine, "before_cursor_execute", grab)
        by_number = ops.trace(hub.ledger, number)
        by_hash = ops.trace(hub.ledger, chash[:12])
        dead_by_number = ops.trace(hub.ledger, bad["number"])  # a letter with no version
        dead_by_document = ops.trace(hub.ledger, Document(content=b"not an invoice").sha256[:10])
        sa.event.remove(hub.ledger.engine, "before_cursor_execute", grab)
    finally:
        hub.close()
    for story in (by_number, by_hash):
        assert story["identities"] == [identity]
        assert [v["content_hash"] for v in story["versions"]] == [chash]
        assert len(story["deliveries"]) == 1 and story["deliveries"][0]["destination"] == "sink"
        assert story["dead_letters"] == []
    [letter] = dead_by_number["dead_letters"]
    assert letter["identity"] == f"CN:{bad['number']}" and letter["error_class"] == "InvoiceInvalid"
    assert dead_by_number["versions"] == [] and dead_by_number["identities"] == [letter["identity"]]
    [letter] = dead_by_document["dead_letters"]
    assert letter["identity"] is None and letter["stage"] == "intake"
    raw = sqlite3.connect(db)
    try:
        for statement, parameters in seen:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            whole = [
                p
                for p in plan
                if p.startswith(
                    (
                        "SCAN invoice_versions",
                        "SCAN events",
                        "SCAN deliveries",
                        "SCAN delivery_",
                        "SCAN dead_",
                    )
                )
            ]
            assert not whole, f"{statement}\n{plan}"
    finally:
        raw.close()


def test_intake_of_known_invoices_finds_their_deliveries_by_index(tmp_path: Path) -> None:
    """Intake asks which of a batch's keys are already live at a destination only for identities it
    has seen before, by destination and identity: the same invoices again are skipped duplicates of
    their first deliveries, a changed one is an amendment, and no statement reads a table whole."""
    db = tmp_path / "ledger.db"
    hub = Hub(load_config(hub_config(tmp_path, f"sqlite:///{db}")))
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if not many:
            seen.append((statement, parameters))

    try:
        hub.ingest(docs(range(30)), "manual")
        with hub.ledger.engine.connect() as conn:
            first = {
                r.identity: r.id for r in conn.execute(sa.select(t.deliveries.c.identity, t.deliveries.c.id))
            }
        sa.event.listen(hub.ledger.engine, "before_cursor_execute", grab)
        again = hub.ingest(docs(range(20, 40)), "manual")  # 10 seen before, 10 new
        sa.event.remove(hub.ledger.engine, "before_cursor_execute", grab)
        with hub.ledger.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.deliveries.c.identity, t.deliveries.c.state, t.deliveries.c.duplicate_of).where(
                    t.deliveries.c.id > max(first.values())
                )
            ).all()
    finally:
        hub.close()
    assert sum(o.duplicates for o in again) == 10
    skipped = {r.identity: r.duplicate_of for r in rows if r.state == t.SKIPPED}
    assert skipped == {identity: first[identity] for identity in skipped} and len(skipped) == 10
    assert sum(1 for r in rows if r.state == t.PENDING) == 10
    raw = sqlite3.connect(db)
    try:
        lookups = [s for s, _ in seen if "FROM deliveries" in s]
        assert lookups, "intake did not look up the known identities' deliveries"
        for statement, parameters in seen:
            plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert not [p for p in plan if p.startswith(("SCAN deliveries", "SCAN invoice_versions"))], (
                f"{statement}\n{plan}"
            )
    finally:
        raw.close()
