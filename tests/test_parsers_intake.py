"""The parsers inside the real hub: ``hub ingest`` a mixed batch, then read the ledger's dead letters.

Every valid invoice is accepted once; every broken or hostile document is a dead letter whose reason a
person understands, with the document's bytes kept (``hub dlq show`` names the stored document).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REFERENCE, run_hub, write_hub_yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def hub(cfg: Path, *args: str) -> Any:
    return json.loads(run_hub("-c", str(cfg), *args, "--json", cwd=cfg.parent).stdout)


@pytest.mark.slow
def test_mixed_batch_through_hub_ingest(tmp_path: Path) -> None:
    cfg = write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp_path}/ledger.db",
            "data_dir": str(tmp_path / ".hub"),
            "logging": {"level": "warning"},
            "connectors": {
                "inbox": {"type": "files", "settings": {"path": str(tmp_path / "inbox")}},
                "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
            },
            "routes": [{"name": "in", "from": "inbox", "to": "archive", "on_amendment": "deliver"}],
        },
    )
    (tmp_path / "inbox").mkdir()
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(REFERENCE.glob("*")):
            if path.name != "README.md":
                archive.write(path, f"reference/{path.name}")
        for path in sorted((FIXTURES / "cn").glob("*.xml")) + sorted((FIXTURES / "ofd").glob("*.ofd")):
            archive.write(path, f"中文/{path.name}")
    hostile = {
        "bundle.zip": bundle.getvalue(),
        "xxe.xml": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><r>&xxe;</r>',
        "settings.xml": b"<settings><a/></settings>",
        "bomb.zip": _zip({"x.xml": b"\0" * (8 * 1024 * 1024)}),
        "scan.pdf": (REFERENCE / "facturx-invoice_EN16931.pdf").read_bytes()[:40_000],
    }
    files = []
    for name, data in hostile.items():
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))

    rows = {Path(row["file"]).name: row for row in hub(cfg, "ingest", "--source", "inbox", *files)}
    bundle_row = rows["bundle.zip"]
    cn_identities = {
        "CN:25322000000045671234",
        "CN:26322000000012345678",
        "CN:26322000000098765432",
        "CN:26532000000055449123",
        "CN:032002100211:66422957",
    }
    assert cn_identities <= set(bundle_row["identities"])
    assert "DE:DE123456789:INV:471102" in bundle_row["identities"]
    assert all(rows[name]["accepted"] == 0 for name in hostile if name != "bundle.zip")

    letters = hub(cfg, "dlq", "list")
    unreadable: dict[str, str] = {}
    for letter in letters:
        if letter["identity"] is None:  # a document no parser could read: which one, and why
            shown = hub(cfg, "dlq", "show", str(letter["id"]))
            assert shown["document"]["sha256"], "the dead letter keeps the document"
            unreadable[shown["document"]["filename"]] = letter["message"]
    assert set(unreadable) == {"xxe.xml", "settings.xml", "bomb.zip", "scan.pdf", "no-invoice-data.ofd"}
    assert unreadable["xxe.xml"].startswith("forbidden XML construct (entity 'xxe'")
    assert unreadable["settings.xml"].startswith("XML is not an invoice (root element settings)")
    assert unreadable["bomb.zip"].startswith("zip limit max_ratio exceeded")
    assert "damaged or truncated" in unreadable["scan.pdf"]
    assert unreadable["no-invoice-data.ofd"].startswith("no structured invoice data")
    # Every reference invoice passes validation: none of them is among the dead letters.
    rejected = [letter for letter in letters if letter["identity"] is not None]
    assert rejected == []


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
