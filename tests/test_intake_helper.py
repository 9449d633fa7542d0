"""The intake helper process (hub/preparer.py): `hub run` parses, validates and hashes big batches in a
helper process; the ledger it writes is the same as without one, to the byte."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from hub.factory import invoice_data, invoice_json
from tests.conftest import run_hub, write_hub_yaml

COUNT = 4000


def make_inbox(inbox: Path) -> None:
    """Invoices with everything intake tells apart: new ones, byte-for-byte and formatting duplicates,
    amendments (more lines), status changes (void), and files that are not invoices."""
    inbox.mkdir(parents=True)
    for i in range(COUNT):
        (inbox / f"{i:05d}-a.json").write_bytes(invoice_json(i))
        if i % 40 == 0:
            (inbox / f"{i:05d}-b-copy.json").write_bytes(invoice_json(i))
        if i % 40 == 1:
            (inbox / f"{i:05d}-c-pretty.json").write_bytes(
                orjson.dumps(invoice_data(i), option=orjson.OPT_INDENT_2)
            )
        if i % 50 == 2:
            (inbox / f"{i:05d}-d-amended.json").write_bytes(invoice_json(i, lines=3))
        if i % 50 == 3:
            void = invoice_data(i)
            void["status"] = "void"
            (inbox / f"{i:05d}-e-void.json").write_bytes(orjson.dumps(void))
        if i % 500 == 4:
            (inbox / f"{i:05d}-f-broken.json").write_bytes(b'{"number": "not an invoice"')


def run(tmp: Path, inbox: Path, helper: bool) -> tuple[dict[str, Any], str]:
    tmp.mkdir()
    shutil.copytree(inbox, tmp / "inbox")
    cfg = write_hub_yaml(
        tmp / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp}/ledger.db",
            "data_dir": str(tmp / ".hub"),
            "logging": {"level": "info"},
            "worker": {"batch_size": 100, "intake_helper": helper},
            "connectors": {
                "inbox": {"type": "files", "settings": {"path": str(tmp / "inbox"), "min_age": 0}},
                "erp": {"type": "recording", "settings": {"path": str(tmp / "erp.db")}},
            },
            "routes": [{"from": "inbox", "to": "erp", "on_amendment": "deliver"}],
        },
    )
    result = run_hub("-c", str(cfg), "run", "--until-idle", "--json", cwd=tmp)
    return json.loads(result.stdout), result.stderr


def ledger_facts(tmp: Path) -> dict[str, Any]:
    with sqlite3.connect(tmp / "ledger.db") as db:
        return {
            "versions": db.execute(
                "SELECT identity, content_hash, status, invoice_json, warnings, document_sha256, gross"
                " FROM invoice_versions ORDER BY identity, content_hash"
            ).fetchall(),
            "events": db.execute(
                "SELECT type, identity, content_hash, status, document_sha256 FROM events"
                " ORDER BY identity, content_hash, type, status"
            ).fetchall(),
            "deliveries": db.execute(
                "SELECT destination, identity, content_hash, state FROM deliveries"
                " ORDER BY identity, content_hash, state"
            ).fetchall(),
            "dead": db.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        }


def test_the_intake_helper_writes_the_same_ledger_as_intake_in_one_process(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    make_inbox(inbox)
    with_helper, log = run(tmp_path / "helper", inbox, helper=True)
    alone, alone_log = run(tmp_path / "alone", inbox, helper=False)
    # The helper started and took batches (it starts in the background: the first are made here).
    assert "intake_helper_ready" in log, log[-3000:]
    assert "intake_helper_ready" not in alone_log
    for key in ("received", "duplicates", "amendments", "delivered", "intake_dead_letters", "skipped"):
        assert with_helper[key] == alone[key], (key, with_helper, alone)
    assert with_helper["received"] > COUNT and with_helper["duplicates"] > 0 and with_helper["amendments"] > 0
    assert with_helper["intake_dead_letters"] == COUNT // 500
    facts = ledger_facts(tmp_path / "helper")
    assert facts == ledger_facts(tmp_path / "alone")
    assert {e[0] for e in facts["events"]} == {"invoice.received", "invoice.status_changed"}
