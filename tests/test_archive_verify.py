"""`hub archive verify`, `hub archive export` and `hub archive verify-export`, run as the real `hub`
command on an archive the real hub filled (files source → archive, SQLite ledger), on both backends."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from hub import Document
from tests import test_archive_store as store
from tests.test_archive_store import FsBackend, make_invoice, make_request, obj_key

# The backends (a folder; moto's S3 server over HTTP) and their fixtures, shared with the store tests.
backend = store.backend
fs_backend = store.fs_backend
s3_backend = store.s3_backend
moto_endpoint = store.moto_endpoint

SELLER = "91320200MA1MXK8P32"
BUYER = "91330106MA2H0B3C4L"


def invoice_json(n: int, day: str = "2026-10-05", net: str = "1000.00") -> dict[str, Any]:
    tax = f"{float(net) * 0.13:.2f}"
    gross = f"{float(net) + float(tax):.2f}"
    return {
        "kind": "cn.digital.special",
        "number": f"2632200000{n:010d}",
        "issue_date": day,
        "currency": "CNY",
        "seller": {"name": "江苏长江机械制造有限公司", "tax_id": SELLER},
        "buyer": {"name": "杭州明远贸易有限公司", "tax_id": BUYER},
        "lines": [{"name": "*机械设备*配件", "amount": net, "tax_rate": "0.13", "tax_amount": tax}],
        "totals": {"net": net, "tax": tax, "gross": gross},
    }


def hub(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Filled:
    """A hub that has run: its folder, its archive backend, and what it archived."""

    cwd: Path
    backend: Any
    records: dict[str, str]  # invoice number → record key
    originals: dict[str, str]  # invoice number → original's sha256
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return hub(*args, cwd=self.cwd, env=self.env)

    def verify(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.run("archive", "verify", "--json", *args)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)


def fill(
    tmp_path: Path, backend: Any, settings: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Filled:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    days = ["2026-09-30", "2026-10-01", "2026-10-05", "2026-10-05", "2026-10-31"]
    for n, day in enumerate(days, start=1):
        (inbox / f"{n:02d}.json").write_text(
            json.dumps(invoice_json(n, day), ensure_ascii=False), encoding="utf-8"
        )
    # Invoice 5 again, now red-lettered: a status change, archived as a status record.
    later = {**invoice_json(5, days[4]), "status": "red_lettered"}
    (inbox / "99-status.json").write_text(json.dumps(later, ensure_ascii=False), encoding="utf-8")
    config = {
        "ledger": f"sqlite:///{tmp_path}/ledger.db",
        "bus": "memory://",
        "data_dir": str(tmp_path / "data"),
        "logging": {"level": "warning"},
        "connectors": {
            "inbox": {"type": "files", "settings": {"path": str(inbox), "after": "keep"}},
            "archive": {"type": f"archive.{backend.name}", "settings": settings or backend.settings()},
        },
        "routes": [{"from": "inbox", "to": "archive"}],
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {"HUB_CONFIG": str(tmp_path / "hub.yaml"), **(env or {})}
    result = hub("run", "--until-idle", "--quiet", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    records, originals = {}, {}
    for key in backend.stored_keys():
        if key.startswith("invoices/"):
            record = orjson.loads(backend.connector(**_extra(settings, backend, env)).archive.read(key))
            records[record["number"]] = key
            originals[record["number"]] = record["documents"][0]["sha256"]
    assert len(records) == len(days)
    return Filled(tmp_path, backend, records, originals, env)


def _extra(settings: dict[str, Any] | None, backend: Any, env: dict[str, str]) -> dict[str, Any]:
    """The settings beyond the backend's own, with ${NAME} taken from ``env`` as hub.yaml would."""
    base = backend.settings()
    extra = {k: v for k, v in (settings or {}).items() if k not in base}
    text = json.dumps(extra)
    for name, value in env.items():
        text = text.replace("${" + name + "}", value)
    return dict(json.loads(text))


def number(n: int) -> str:
    return f"2632200000{n:010d}"


def failures(report: dict[str, Any], prop: str, check: str | None = None) -> list[dict[str, str]]:
    return [f for f in report["properties"][prop]["failed"] if check is None or f["check"] == check]


# ---------------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------------
def test_verify_passes_an_intact_archive_then_names_a_flipped_byte_a_deleted_file_and_a_ledger_disagreement(
    backend: Any, tmp_path: Path
) -> None:
    filled = fill(tmp_path, backend)
    rc, report = filled.verify()
    assert rc == 0, report
    assert report["ok"] is True
    assert report["counts"]["records"] == 5
    assert report["counts"]["originals"] == 5
    assert report["counts"]["ledger_deliveries"] == 6  # five versions and one status change
    assert report["counts"]["status_records"] == 1
    for prop in ("authenticity", "integrity", "usability", "security"):
        assert report["properties"][prop]["ok"]
        assert report["properties"][prop]["checked"], prop
    checked = {c["check"]: c["items"] for p in report["properties"].values() for c in p["checked"]}
    assert (
        checked["original_hashes"] == 5 and checked["ledger_complete"] == 6 and checked["originals_open"] == 5
    )

    # Now break it three ways.
    flipped = obj_key(filled.originals[number(1)])
    data = bytearray(backend.raw_get(flipped))
    data[len(data) // 2] ^= 0x01
    backend.raw_put(flipped, bytes(data))
    deleted = obj_key(filled.originals[number(2)])
    backend.raw_delete(deleted)
    edited = filled.records[number(3)]
    record = orjson.loads(backend.raw_get(edited))
    real_gross = record["gross"]
    record["gross"] = "1.00"
    backend.raw_put(edited, orjson.dumps(record))

    rc, report = filled.verify()

    assert rc == 1
    assert [f["item"].split(" ")[0] for f in report["corrupt"]] == [flipped]
    assert "SHA-256 is" in report["corrupt"][0]["problem"]
    assert [f["item"].split(" ")[0] for f in report["missing"]] == [deleted]
    assert filled.records[number(2)] in report["missing"][0]["problem"]
    ledger = failures(report, "authenticity", "ledger_agreement")
    assert [(f["item"], f["problem"]) for f in ledger] == [
        (edited, f"gross is 1.00, the ledger says {real_gross}")
    ]
    assert {f["check"] for f in failures(report, "integrity")} == {"original_hashes", "originals_present"}
    assert report["properties"]["security"]["ok"]

    text = filled.run("archive", "verify")
    assert text.returncode == 1
    for name in (flipped, deleted, edited):
        assert name in text.stdout
    for prop in ("authenticity", "integrity", "usability", "security"):
        assert prop in text.stdout
    assert "RESULT: FAILED" in text.stdout


def test_verify_finds_a_record_the_ledger_delivered_but_the_archive_lost(
    fs_backend: FsBackend, tmp_path: Path
) -> None:
    filled = fill(tmp_path, fs_backend)
    lost = filled.records[number(4)]
    fs_backend.raw_delete(lost)

    rc, report = filled.verify()

    assert rc == 1
    assert [f["item"] for f in report["missing"]] == [lost]
    assert "was delivered here" in report["missing"][0]["problem"]
    # Its original is still there, now named by no record.
    assert [f["item"] for f in report["orphaned"]] == [obj_key(filled.originals[number(4)])]


def test_verify_since_checks_only_later_invoices_and_skips_the_orphan_scan(
    fs_backend: FsBackend, tmp_path: Path
) -> None:
    filled = fill(tmp_path, fs_backend)
    fs_backend.raw_delete(obj_key(filled.originals[number(1)]))  # issued 2026-09-30

    rc, report = filled.verify("--since", "2026-10-01")

    assert rc == 0, report
    assert report["counts"]["records"] == 4
    skipped = {c["check"]: c["skipped"] for c in report["properties"]["integrity"]["checked"]}
    assert skipped["no_orphans"] == "only on a full run (without --since)"
    assert filled.verify()[0] == 1


def test_verify_checks_encryption_at_rest(fs_backend: FsBackend, tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = fs_backend.settings(encryption={"key_id": "2026a", "key": "${ARCHIVE_KEY}"})
    filled = fill(tmp_path, fs_backend, settings, env={"ARCHIVE_KEY": key})
    rc, report = filled.verify()
    assert rc == 0, report
    enc = {c["check"]: c for c in report["properties"]["security"]["checked"]}["encryption"]
    assert enc["items"] == 11 and enc["skipped"] is None  # 5 records, 1 status record, 5 originals

    # Someone drops a plaintext file where a sealed original was.
    target = obj_key(filled.originals[number(5)])
    plain = fs_backend.connector(encryption={"key_id": "2026a", "key": key}).archive.read(target)
    fs_backend.raw_put(target, plain)
    rc, report = filled.verify()
    assert rc == 1
    insecure = failures(report, "security", "encryption")
    assert [(f["item"], f["problem"]) for f in insecure] == [
        (target, "stored unencrypted although encryption is configured")
    ]


def test_verify_without_an_archive_connector_says_so(tmp_path: Path) -> None:
    (tmp_path / "hub.yaml").write_text("ledger: sqlite:///ledger.db\nconnectors: {}\n")
    result = hub("archive", "verify", cwd=tmp_path, env={"HUB_CONFIG": str(tmp_path / "hub.yaml")})
    assert result.returncode != 0
    assert "name the archive with --connector" in result.stderr


# ---------------------------------------------------------------------------------------------------
# export / verify-export
# ---------------------------------------------------------------------------------------------------
def _rewrite(
    src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename in change:
                if change[item.filename] is not None:
                    zout.writestr(item.filename, change[item.filename])
                continue
            zout.writestr(item, zin.read(item.filename))
        for name, data in (add or {}).items():
            zout.writestr(name, data)


def test_export_and_verify_export_round_trip_and_any_changed_file_fails(
    fs_backend: FsBackend, tmp_path: Path
) -> None:
    # Export reads through the same archive code on both backends; the S3 read path is covered above.
    filled = fill(tmp_path, fs_backend)
    out = tmp_path / "audit" / "2026-10.zip"

    exported = filled.run("archive", "export", "--period", "2026-10", str(out))
    assert exported.returncode == 0, exported.stderr
    fingerprint = next(
        line.split(": ", 1)[1]
        for line in exported.stdout.splitlines()
        if line.startswith("signing key fingerprint")
    )
    with zipfile.ZipFile(out) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        names = set(zf.namelist())
    assert manifest["period"] == "2026-10"
    assert sorted(i["identity"] for i in manifest["invoices"]) == [f"CN:{number(n)}" for n in (2, 3, 4, 5)]
    first = manifest["invoices"][0]
    assert {"sha256", "sm3", "path", "media_type"} <= set(first["originals"][0])
    assert first["record"] in names and first["originals"][0]["path"] in names
    assert {"manifest.json", "manifest.sig", "signing-key.pub"} <= names

    ok = hub("archive", "verify-export", str(out), "--fingerprint", fingerprint, cwd=tmp_path / "audit")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert fingerprint in ok.stdout and "RESULT: OK" in ok.stdout

    original = first["originals"][0]["path"]
    with zipfile.ZipFile(out) as zf:
        body = bytearray(zf.read(original))
    body[0] ^= 0x20
    # One original changed, nothing else: named, and the bundle fails.
    changed = tmp_path / "changed-original.zip"
    _rewrite(out, changed, {original: bytes(body)})
    result = hub("archive", "verify-export", str(changed), "--json", cwd=tmp_path)
    assert result.returncode == 1
    assert [f["item"] for f in json.loads(result.stdout)["failed"]] == [original]

    # A record removed, a file slipped in, the manifest edited, and a signing key that is not the
    # expected one: each named in one report.
    manifest_body = zipfile.ZipFile(out).read("manifest.json").replace(b'"2026-10"', b'"2026-11"')
    several = tmp_path / "several.zip"
    _rewrite(
        out,
        several,
        {first["record"]: None, "manifest.json": manifest_body},
        {"originals/extra.xml": b"<x/>"},
    )
    result = hub(
        "archive", "verify-export", str(several), "--json", "--fingerprint", "SHA256:0000", cwd=tmp_path
    )
    assert result.returncode == 1
    named = {(f["item"], f["problem"].split(": ")[0]) for f in json.loads(result.stdout)["failed"]}
    assert named == {
        ("manifest.json", "the signature does not match"),
        ("signing-key.pub", f"fingerprint {fingerprint} is not the expected SHA256:0000"),
        (first["record"], "listed in the manifest but missing from the zip"),
        ("originals/extra.xml", "is in the zip but not in the manifest"),
    }


def test_export_refuses_to_hand_out_a_corrupt_original(fs_backend: FsBackend, tmp_path: Path) -> None:
    filled = fill(tmp_path, fs_backend)
    target = obj_key(filled.originals[number(3)])
    fs_backend.raw_put(target, b"{}")
    result = filled.run("archive", "export", "--period", "2026-10", str(tmp_path / "out.zip"))
    assert result.returncode == 1
    assert target in result.stderr and "run `hub archive verify`" in result.stderr
    assert not (tmp_path / "out.zip").exists()


def test_export_uses_the_configured_signing_key(fs_backend: FsBackend, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    filled = fill(tmp_path, fs_backend, fs_backend.settings(signing_key_file=str(key_file)))
    result = filled.run("archive", "export", "--period", "2026-09", str(tmp_path / "sep.zip"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["invoices"], info["signing_key"], info["signing_key_generated"]) == (1, str(key_file), False)
    with zipfile.ZipFile(tmp_path / "sep.zip") as zf:
        bundled = serialization.load_pem_public_key(zf.read("signing-key.pub"))
        signature = base64.b64decode(zf.read("manifest.sig"))
        key.public_key().verify(signature, zf.read("manifest.json"))  # raises if not ours
    assert bundled.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == (
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def test_verify_opens_each_original_with_the_reader_for_its_format(
    fs_backend: FsBackend, tmp_path: Path
) -> None:
    from pypdf import PdfWriter

    pdf = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.write(pdf)
    ofd = io.BytesIO()
    with zipfile.ZipFile(ofd, "w") as zf:
        zf.writestr("OFD.xml", '<ofd:OFD xmlns:ofd="http://www.ofdspec.org/2016" Version="1.1"/>')
    not_ofd = io.BytesIO()
    with zipfile.ZipFile(not_ofd, "w") as zf:
        zf.writestr("readme.txt", "no OFD.xml in here")
    originals = {
        1: (pdf.getvalue(), "application/pdf", "good.pdf"),
        2: (b"%PDF-1.7\n%broken and truncated", "application/pdf", "broken.pdf"),
        3: (ofd.getvalue(), "application/ofd", "good.ofd"),
        4: (not_ofd.getvalue(), "application/ofd", "hollow.ofd"),
        5: (b"<Invoice><unclosed></Invoice>", "application/xml", "bad.xml"),
    }
    conn = fs_backend.connector()
    for n, (content, media_type, name) in originals.items():
        doc = Document(content=content, media_type=media_type, filename=name)
        conn.deliver(make_request(make_invoice(n), [doc]))
    config = {
        "ledger": f"sqlite:///{tmp_path}/none.db",
        "connectors": {"archive": {"type": "archive.fs", "settings": fs_backend.settings()}},
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))

    result = hub(
        "archive",
        "verify",
        "--no-ledger",
        "--json",
        cwd=tmp_path,
        env={"HUB_CONFIG": str(tmp_path / "hub.yaml")},
    )

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    unreadable = {f["item"].split("(")[1].split(",")[0]: f["problem"] for f in failures(report, "usability")}
    assert set(unreadable) == {"broken.pdf", "hollow.ofd", "bad.xml"}
    assert unreadable["hollow.ofd"] == "OFD package has no OFD.xml"
    assert report["properties"]["integrity"]["ok"] and report["properties"]["authenticity"]["ok"]
    skipped = {c["check"]: c["skipped"] for p in report["properties"].values() for c in p["checked"]}
    assert skipped["ledger_agreement"] == skipped["ledger_complete"] == "no ledger given"


def test_archive_commands_come_with_either_archive_plugin(tmp_path: Path) -> None:
    (tmp_path / "hub.yaml").write_text("plugins:\n  disabled: [archive_fs]\n")
    result = hub("archive", "--help", cwd=tmp_path, env={"HUB_CONFIG": str(tmp_path / "hub.yaml")})
    assert result.returncode == 0, result.stderr
    assert "verify-export" in result.stdout


def test_an_archive_written_with_two_shard_levels_is_verified_exported_and_purged(
    fs_backend: FsBackend, tmp_path: Path
) -> None:
    """Archives written before 2026-12 keep originals under ``objects/ab/cd/<sha256>``; their records
    name those keys, and verify, export and delete read them there."""
    filled = fill(tmp_path, fs_backend)
    for rkey in filled.records.values():
        record = orjson.loads(fs_backend.raw_get(rkey))
        for entry in record["documents"]:
            sha = entry["sha256"]
            legacy = f"objects/{sha[:2]}/{sha[2:4]}/{sha}"
            if entry["object"] != legacy:
                fs_backend.raw_put(legacy, fs_backend.raw_get(entry["object"]))
                fs_backend.raw_delete(entry["object"])
                entry["object"] = legacy
        fs_backend.raw_put(rkey, orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
    assert not [k for k in fs_backend.stored_keys() if k.startswith("objects/") and k.count("/") == 2]

    rc, report = filled.verify()
    assert rc == 0, report
    assert report["counts"]["originals"] == 5 and not report["orphaned"]

    out = tmp_path / "2026-10.zip"
    exported = filled.run("archive", "export", "--period", "2026-10", str(out))
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(out) as zf:
        manifest = orjson.loads(zf.read("manifest.json"))
        sha = manifest["invoices"][0]["originals"][0]["sha256"]
        path = manifest["invoices"][0]["originals"][0]["path"]
        assert zf.read(path) == fs_backend.raw_get(f"objects/{sha[:2]}/{sha[2:4]}/{sha}")

    sha = filled.originals[number(2)]
    deleted = fs_backend.connector().delete(filled.records[number(2)])
    assert f"objects/{sha[:2]}/{sha[2:4]}/{sha}" in deleted
    assert f"objects/{sha[:2]}/{sha[2:4]}/{sha}" not in fs_backend.stored_keys()
