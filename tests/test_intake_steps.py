"""Intake takes a batch a step at a time (every parse, then every invoice's rules, then every hash):
what it records is what it records taking the same items one at a time."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import orjson

from hub.config import load_config
from hub.connectors import Incoming
from hub.engine import Hub
from hub.factory import invoice_data, invoice_json
from hub.models import Document, Invoice
from tests.conftest import REFERENCE, write_hub_yaml

CN_XML = Path(__file__).parent / "fixtures" / "cn" / "special-goods-2025.xml"


def _doc(content: bytes, name: str, media_type: str = "application/octet-stream") -> Document:
    return Document(content=content, media_type=media_type, filename=name, source="manual")


AsData = list[tuple[Invoice, Document | None]]


def _item(key: str, *docs: Document, invoices: AsData | None = None) -> Incoming:
    return Incoming(documents=list(docs), key=key, invoices=invoices or [])


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def items() -> list[Incoming]:
    """One of everything intake tells apart, in one batch."""
    bad_checksum = invoice_data(3)
    bad_checksum["seller"]["tax_id"] = bad_checksum["seller"]["tax_id"][:-1] + (
        "0" if bad_checksum["seller"]["tax_id"][-1] != "0" else "1"
    )
    bad_totals = invoice_data(4)
    bad_totals["totals"]["gross"] = "1.00"
    as_data = Invoice.model_validate(invoice_data(9))
    as_data_doc = _doc(invoice_json(9), "9-from-erp.json", "application/json")
    return [
        _item("new", _doc(invoice_json(1), "1.json", "application/json")),
        _item("copy", _doc(invoice_json(1) + b"\n", "1-copy.json", "application/json")),
        _item("pretty", _doc(orjson.dumps(invoice_data(1), option=orjson.OPT_INDENT_2), "1-pretty.json")),
        _item("amended", _doc(invoice_json(1, lines=3), "1-amended.json", "application/json")),
        _item("checksum", _doc(orjson.dumps(bad_checksum), "3-bad-checksum.json", "application/json")),
        _item("totals", _doc(orjson.dumps(bad_totals), "4-bad-totals.json", "application/json")),
        _item("text", _doc(b"minutes of the meeting", "minutes.txt", "text/plain")),
        _item("broken", _doc(b'{"number": "not an invoice"', "broken.json", "application/json")),
        _item(
            "zip",
            _doc(
                _zip(
                    {
                        "5.json": invoice_json(5),
                        "4-bad.json": orjson.dumps(bad_totals),
                        "notes.txt": b"not an invoice",
                    }
                ),
                "bundle.zip",
                "application/zip",
            ),
        ),
        _item(
            "array",
            _doc(orjson.dumps([invoice_data(6), bad_totals, invoice_data(7)]), "many.json"),
        ),
        _item("ubl", _doc((REFERENCE / "peppol-base-example.xml").read_bytes(), "peppol.xml")),
        _item("cn-xml", _doc(CN_XML.read_bytes(), CN_XML.name)),
        _item(
            "two-docs",
            _doc(invoice_json(8), "8.json", "application/json"),
            _doc(b"a cover letter", "cover.txt", "text/plain"),
        ),
        _item("as-data", as_data_doc, invoices=[(as_data, as_data_doc)]),
        _item("last", _doc(invoice_json(2), "2.json", "application/json")),
    ]


def _facts(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as con:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(con.execute(sql).fetchall(), key=repr)

        return {
            "documents": rows("SELECT sha256, media_type, filename, parent_sha256 FROM documents"),
            "versions": rows(
                "SELECT identity, content_hash, status, invoice_json, warnings, document_sha256"
                " FROM invoice_versions"
            ),
            "events": rows("SELECT type, identity, content_hash, status, document_sha256 FROM events"),
            "deliveries": rows("SELECT destination, identity, content_hash, idem_key, state FROM deliveries"),
            "dead": rows(
                "SELECT stage, source, identity, content_hash, number, document_sha256, error_class, message"
                " FROM dead_letters"
            ),
        }


def _ingest(tmp: Path, batches: list[list[Incoming]]) -> tuple[list[Any], dict[str, Any]]:
    tmp.mkdir()
    cfg = write_hub_yaml(
        tmp / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp}/ledger.db",
            "data_dir": str(tmp / ".hub"),
            "connectors": {
                "manual": {"type": "files", "enabled": False, "settings": {"path": str(tmp)}},
                "sink": {"type": "recording", "settings": {"path": str(tmp / "sink.db")}},
            },
            "routes": [{"from": "manual", "to": "sink"}],
        },
    )
    with Hub(load_config(cfg)) as hub:
        outcomes = [o for batch in batches for o in hub.ingest(batch, "manual")]
    return outcomes, _facts(tmp / "ledger.db")


def test_a_batch_records_what_its_items_one_at_a_time_record(tmp_path: Path) -> None:
    together, ledger = _ingest(tmp_path / "batch", [items()])
    alone, ledger_alone = _ingest(tmp_path / "alone", [[item] for item in items()])
    assert together == alone
    assert ledger == ledger_alone
    # The batch held everything intake tells apart (so the comparison above covers each path).
    by_key = dict(zip([i.key for i in items()], together, strict=True))
    assert by_key["new"].accepted == 1 and by_key["copy"].duplicates == 1 and by_key["pretty"].duplicates == 1
    assert by_key["amended"].amendments == 1
    for key in ("checksum", "totals", "text", "broken"):
        assert by_key[key].dead_letters == 1 and by_key[key].accepted == 0, key
    assert (by_key["zip"].accepted, by_key["zip"].dead_letters) == (1, 2)
    assert (by_key["array"].accepted, by_key["array"].dead_letters) == (2, 1)
    for key in ("ubl", "cn-xml", "as-data", "last"):
        assert by_key[key].accepted == 1 and by_key[key].dead_letters == 0, (key, by_key[key])
    assert by_key["two-docs"].accepted == 1 and by_key["two-docs"].dead_letters == 1
    messages = " ".join(row[-1] for row in ledger["dead"])
    assert "check character" in messages and "is not net + tax" in messages, messages
