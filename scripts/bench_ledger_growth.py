"""Does the hub slow down as its ledger grows? Intake and delivery of 2,000 invoices into a SQLite ledger
that already holds N delivered deliveries, for a few N.

    python scripts/bench_ledger_growth.py [N ...]        (default: 0 100000 500000)

The N older deliveries are written straight into the ledger's tables (a synthetic history: one event
and one delivered delivery each, with their own keys), then the hub takes in 2,000 new invoices
(``Hub.ingest`` in batches of 500) and its worker delivers them to a recording sink
(``Worker.handle``), all in this process, one thread. Prints microseconds per invoice for each N: flat
figures mean every hot statement finds its rows by key, not by walking an index of everything done.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from hub.config import load_config
from hub.connectors import Incoming
from hub.engine import Hub
from hub.factory import invoice_json
from hub.ledger import Ledger
from hub.logging import configure_logging
from hub.models import Document

NEW = 2000
BATCH = 500


def seed(db: Path, n: int) -> None:
    Ledger(f"sqlite:///{db}").close()  # the schema
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN")
    stamp = "2026-01-01T00:00:00.000000+00:00"
    chunk = 50_000
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        con.executemany(
            "INSERT INTO events (id, type, source, identity, content_hash, version_id, status, trace_id,"
            " received_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                (f"old{i:012d}", "invoice.received", "old", f"CN:OLD{i}", _key(i), 0, "issued", "old", stamp)
                for i in rows
            ),
        )
        con.executemany(
            "INSERT INTO deliveries (event_id, destination, route, idem_key, identity, content_hash, state,"
            " attempts, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                (
                    f"old{i:012d}",
                    "sink",
                    "route-1",
                    _key(i),
                    f"CN:OLD{i}",
                    _key(i),
                    "delivered",
                    1,
                    stamp,
                    stamp,
                )
                for i in rows
            ),
        )
    con.execute("COMMIT")
    con.close()


def _key(i: int) -> str:
    return hashlib.sha256(f"old {i}".encode()).hexdigest()


def measure(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed(root / "ledger.db", n)
        cfg = root / "hub.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "ledger": f"sqlite:///{root}/ledger.db",
                    "data_dir": str(root / ".hub"),
                    "logging": {"level": "error"},
                    "connectors": {
                        "in": {"type": "files", "enabled": False, "settings": {"path": tmp}},
                        "sink": {"type": "recording", "settings": {"path": str(root / "sink.db")}},
                    },
                    "routes": [{"from": "in", "to": "sink"}],
                }
            )
        )
        hub = Hub(load_config(cfg))
        items = [
            Incoming(
                documents=[Document(content=invoice_json(i), media_type="application/json", source="in")],
                key=str(i),
            )
            for i in range(NEW)
        ]
        t0 = time.perf_counter()
        for start in range(0, NEW, BATCH):
            hub.ingest(items[start : start + BATCH], "in")
        with sqlite3.connect(root / "ledger.db") as side:
            ids = [
                i for (i,) in side.execute("SELECT id FROM deliveries WHERE state = 'pending' ORDER BY id")
            ]
        for start in range(0, len(ids), BATCH):
            hub.worker.handle("sink", ids[start : start + BATCH])
        elapsed = time.perf_counter() - t0
        delivered = hub.worker.stats.delivered
        hub.close()
        assert delivered == NEW, f"delivered {delivered} of {NEW}"
        return elapsed / NEW * 1e6


def main() -> None:
    configure_logging("error", "json")
    sizes = [int(a) for a in sys.argv[1:]] or [0, 100_000, 500_000]
    for n in sizes:
        print(f"seeding {n} delivered deliveries, then {NEW} new invoices in and out...", file=sys.stderr)
        print(f"ledger with {n:>9,} deliveries: {measure(n):7.1f} µs per invoice (intake + claim + record)")


if __name__ == "__main__":
    main()
