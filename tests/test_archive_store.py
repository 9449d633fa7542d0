"""The archive connectors (archive.fs, archive.s3) through their public methods: deliver, inventory,
health, delete. Every behaviour test runs on both backends: a folder, and moto's S3 server over real
HTTP (started by the fixture in this file)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from hub import (
    ConnectorContext,
    DeliveryRequest,
    Document,
    Event,
    HubError,
    Invoice,
    PermanentError,
    TransientError,
)
from hub.canonical import content_hash
from hub.plugins import build_plugins

SELLER = "91110000600037341L"
BUYER = "91310000MA1FL0LP0C"
XML = b"<?xml version='1.0' encoding='utf-8'?><Invoice><Number>%d</Number></Invoice>"


def make_invoice(
    n: int, *, day: date = date(2026, 10, 5), gross: str = "113", status: str = "issued"
) -> Invoice:
    net = Decimal(gross) / Decimal("1.13")
    net = net.quantize(Decimal("0.01"))
    tax = Decimal(gross) - net
    return Invoice.model_validate(
        {
            "kind": "cn.digital.special",
            "number": f"2611200000{n:010d}",
            "issue_date": day.isoformat(),
            "status": status,
            "seller": {"name": "北京测试有限公司", "tax_id": SELLER},
            "buyer": {"name": "上海买方有限公司", "tax_id": BUYER},
            "lines": [{"name": "服务费", "amount": str(net), "tax_rate": "0.13", "tax_amount": str(tax)}],
            "totals": {"net": str(net), "tax": str(tax), "gross": gross},
        }
    )


def make_request(
    invoice: Invoice,
    documents: list[Document] | None = None,
    *,
    event_type: str = "invoice.received",
    amends: str | None = None,
    destination: str = "archive",
) -> DeliveryRequest:
    chash = content_hash(invoice)
    docs = documents if documents is not None else [xml_document(invoice)]
    event = Event(
        type=event_type,
        source="inbox",
        identity=invoice.identity,
        content_hash=chash,
        invoice=invoice,
        document_sha256=docs[0].sha256 if docs else None,
    )
    return DeliveryRequest(
        event=event,
        destination=destination,
        idempotency_key=event.idempotency_key,
        attempt=1,
        documents=docs,
        amends=amends,
    )


def xml_document(invoice: Invoice) -> Document:
    return Document(
        content=XML % int(invoice.number[-6:]),
        media_type="application/xml",
        filename=f"{invoice.number}.xml",
        source="inbox",
    )


# ---------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------
class FsBackend:
    name = "fs"

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "archive"
        self.data = tmp / "data"

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"path": str(self.root), **extra}

    def connector(self, **extra: Any) -> Any:
        from invoice_hub_plugins.archive_fs import ArchiveFs

        return ArchiveFs(
            ArchiveFs.Settings.model_validate(self.settings(**extra)), ConnectorContext("archive", self.data)
        )

    def raw_get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def raw_put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.chmod(0o644)
        path.write_bytes(data)

    def raw_delete(self, key: str) -> None:
        (self.root / key).unlink()

    def stored_keys(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


def need_server(reason: str) -> None:
    """Missing server: a failure in CI, a skip (saying how to get it) elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free port, over real HTTP, for the whole session."""
    exe = shutil.which("moto_server")
    if exe is None:
        need_server('moto_server is not installed: pip install "moto[server]"')
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                need_server(f"moto_server did not start on port {port}: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class S3Backend:
    name = "s3"

    def __init__(self, endpoint: str, bucket: str, data: Path) -> None:
        import boto3

        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = "hub/"
        self.data = data
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
            **extra,
        }

    def connector(self, **extra: Any) -> Any:
        from invoice_hub_plugins.archive_s3 import ArchiveS3

        return ArchiveS3(
            ArchiveS3.Settings.model_validate(self.settings(**extra)), ConnectorContext("archive", self.data)
        )

    def raw_get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def raw_put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def raw_delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def stored_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        return sorted(o["Key"][len(self.prefix) :] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def s3_backend(moto_endpoint: str, tmp_path: Path) -> Iterator[S3Backend]:
    backend = S3Backend(moto_endpoint, f"archive-{uuid.uuid4().hex[:12]}", tmp_path / "data")
    try:
        yield backend
    finally:
        backend.client.close()


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "fs":
        yield FsBackend(tmp_path)
    else:
        yield request.getfixturevalue("s3_backend")


@pytest.fixture
def fs_backend(tmp_path: Path) -> FsBackend:
    return FsBackend(tmp_path)


def obj_key(sha: str) -> str:
    return f"objects/{sha[:2]}/{sha}"


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------
def test_archive_types_are_registered_through_entry_points() -> None:
    plugins = build_plugins()
    assert plugins.connector_type("archive.fs").type_name == "archive.fs"
    assert plugins.connector_type("archive.fs").roles() >= {"sink", "inventory"}


# ---------------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------------
def test_deliver_stores_original_content_addressed_with_a_metadata_record(backend: Any) -> None:
    conn = backend.connector()
    invoice = make_invoice(1)
    req = make_request(invoice)
    doc = req.documents[0]

    receipt = conn.deliver(req)

    assert backend.raw_get(obj_key(doc.sha256)) == doc.content
    record = orjson.loads(backend.raw_get(receipt.remote_ref))
    assert record["identity"] == invoice.identity == "CN:26112000000000000001"
    assert record["content_hash"] == content_hash(invoice)
    assert record["issue_date"] == "2026-10-05"
    assert (record["gross"], record["currency"]) == ("113", "CNY")
    assert (record["seller_tax_id"], record["buyer_tax_id"]) == (SELLER, BUYER)
    assert record["source"] == "inbox"
    assert record["received_at"] == req.event.received_at.isoformat()
    [entry] = record["documents"]
    import hashlib

    assert entry["sha256"] == hashlib.sha256(doc.content).hexdigest()
    assert entry["sm3"] == hashlib.new("sm3", doc.content).hexdigest()
    assert (entry["media_type"], entry["filename"]) == ("application/xml", f"{invoice.number}.xml")
    # The canonical form stored in the record hashes to the content hash (self-authenticating).
    assert (
        hashlib.sha256(orjson.dumps(record["canonical"], option=orjson.OPT_SORT_KEYS)).hexdigest()
        == (record["content_hash"])
    )
    assert receipt.detail["documents"] == [{"sha256": entry["sha256"], "sm3": entry["sm3"]}]


def test_second_delivery_of_the_same_key_returns_the_same_receipt_and_writes_nothing(backend: Any) -> None:
    conn = backend.connector()
    req = make_request(make_invoice(2))
    first = conn.deliver(req)
    before = {k: backend.raw_get(k) for k in backend.stored_keys()}

    again = make_request(make_invoice(2))  # a new event (new id, new received time) for the same content
    again.attempt = 2
    second = conn.deliver(again)

    assert second == first
    assert {k: backend.raw_get(k) for k in backend.stored_keys()} == before


def test_same_document_for_two_invoices_is_stored_once(backend: Any) -> None:
    conn = backend.connector()
    shared = Document(content=b"%PDF-1.4 not really", media_type="application/pdf", filename="batch.pdf")
    conn.deliver(make_request(make_invoice(3), [shared]))
    conn.deliver(make_request(make_invoice(4), [shared]))
    objects = [k for k in backend.stored_keys() if k.startswith("objects/")]
    assert objects == [obj_key(shared.sha256)]


def test_other_bytes_under_an_existing_key_are_refused_naming_the_key(backend: Any) -> None:
    conn = backend.connector()
    req = make_request(make_invoice(5))
    conn.deliver(req)
    key = obj_key(req.documents[0].sha256)
    backend.raw_put(key, b"tampered")

    # Another invoice arriving with the same original must not silently accept the altered object.
    with pytest.raises(PermanentError, match=key) as info:
        conn.deliver(make_request(make_invoice(6), req.documents))
    assert "altered" in str(info.value)
    assert backend.raw_get(key) == b"tampered"  # and nothing overwrote it


def test_amendment_is_a_new_version_that_names_the_one_it_amends(backend: Any) -> None:
    conn = backend.connector()
    original = make_invoice(7, gross="113")
    amended = make_invoice(7, gross="226")
    r1 = conn.deliver(make_request(original))
    r2 = conn.deliver(make_request(amended, amends=content_hash(original)))

    assert r1.remote_ref != r2.remote_ref
    record = orjson.loads(backend.raw_get(r2.remote_ref))
    assert record["amends"] == content_hash(original)
    held = {(i.identity, i.content_hash, i.gross) for i in conn.inventory()}
    assert held == {
        (original.identity, content_hash(original), Decimal("113")),
        (amended.identity, content_hash(amended), Decimal("226")),
    }


def test_status_change_appends_a_status_record_once(backend: Any) -> None:
    conn = backend.connector()
    invoice = make_invoice(8)
    conn.deliver(make_request(invoice))
    voided = make_invoice(8, status="red_lettered")
    req = make_request(voided, event_type="invoice.status_changed")
    assert req.idempotency_key == f"{content_hash(invoice)}:red_lettered"

    first = conn.deliver(req)
    count = len(backend.stored_keys())
    second = conn.deliver(make_request(voided, event_type="invoice.status_changed"))

    assert first == second
    assert len(backend.stored_keys()) == count
    status = orjson.loads(backend.raw_get(first.remote_ref))
    assert status["status"] == "red_lettered"
    assert status["content_hash"] == content_hash(invoice)
    assert status["idempotency_key"] == req.idempotency_key
    # The status change did not create a second version.
    assert [i.content_hash for i in conn.inventory()] == [content_hash(invoice)]


def test_status_change_takes_the_new_status_from_the_idempotency_key(backend: Any) -> None:
    # The worker hands over the stored version (status as received) with the key naming the new status.
    conn = backend.connector()
    invoice = make_invoice(9)
    conn.deliver(make_request(invoice))
    req = make_request(invoice, event_type="invoice.status_changed")
    req.idempotency_key = f"{content_hash(invoice)}:void"

    receipt = conn.deliver(req)

    assert receipt.remote_ref.endswith(f"{content_hash(invoice)}.void.json")
    assert orjson.loads(backend.raw_get(receipt.remote_ref))["status"] == "void"


def test_original_is_read_from_the_ledger_when_the_request_carries_none(fs_backend: FsBackend) -> None:
    from invoice_hub_plugins.archive_fs import ArchiveFs

    invoice = make_invoice(9)
    doc = xml_document(invoice)
    context = ConnectorContext("archive", fs_backend.data, load_document={doc.sha256: doc}.get)
    conn = ArchiveFs(ArchiveFs.Settings.model_validate(fs_backend.settings()), context)
    req = make_request(invoice, [doc])
    req.documents = []

    conn.deliver(req)

    assert fs_backend.raw_get(obj_key(doc.sha256)) == doc.content


# ---------------------------------------------------------------------------------------------------
# Inventory and health
# ---------------------------------------------------------------------------------------------------
def test_inventory_streams_by_period(backend: Any) -> None:
    conn = backend.connector()
    days = [date(2026, 9, 30), date(2026, 10, 1), date(2026, 10, 31), date(2026, 11, 1)]
    for n, day in enumerate(days, start=20):
        conn.deliver(make_request(make_invoice(n, day=day)))

    items = conn.inventory(since=date(2026, 10, 1), until=date(2026, 10, 31))
    assert iter(items) is items  # a stream, not a list built in memory
    got = sorted(
        (i.issue_date, i.number, i.gross, i.currency, i.seller_tax_id, i.buyer_tax_id) for i in items
    )
    assert got == [
        (date(2026, 10, 1), "26112000000000000021", Decimal("113"), "CNY", SELLER, BUYER),
        (date(2026, 10, 31), "26112000000000000022", Decimal("113"), "CNY", SELLER, BUYER),
    ]
    assert len(list(conn.inventory())) == 4
    assert [i.issue_date for i in conn.inventory(since=date(2026, 11, 1))] == [date(2026, 11, 1)]


def test_health_reports_a_writable_store(backend: Any) -> None:
    assert backend.connector().health().ok


def test_health_reports_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    from invoice_hub_plugins.archive_fs import ArchiveFs

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    conn = ArchiveFs(ArchiveFs.Settings(path=blocker / "archive"), ConnectorContext("archive", tmp_path))
    health = conn.health()
    assert not health.ok
    assert str(blocker / "archive") in health.detail


def test_fs_writes_are_complete_read_only_files_without_temp_leftovers(fs_backend: FsBackend) -> None:
    conn = fs_backend.connector()
    for n in range(30, 35):
        conn.deliver(make_request(make_invoice(n)))
    leftovers = [p for p in fs_backend.root.rglob(".*")]
    assert leftovers == []
    for path in fs_backend.root.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o444, path


# ---------------------------------------------------------------------------------------------------
# Encryption at rest and retention
# ---------------------------------------------------------------------------------------------------
def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_encryption_at_rest_with_key_rotation(backend: Any, tmp_path: Path) -> None:
    k1, k2 = _key(), _key()
    old = backend.connector(encryption={"key_id": "k1", "key": k1})
    first = make_request(make_invoice(40))
    r1 = old.deliver(first)
    stored = backend.raw_get(obj_key(first.documents[0].sha256))
    assert first.documents[0].content not in stored
    assert b"k1" in stored[:16]
    assert b"CN:" not in backend.raw_get(r1.remote_ref)  # records are sealed too

    key_file = tmp_path / "k2.key"
    key_file.write_text(k2)
    rotated = backend.connector(
        encryption={"key_id": "k2", "key_file": str(key_file), "previous_keys": {"k1": k1}}
    )
    second = make_request(make_invoice(41))
    rotated.deliver(second)
    assert b"k2" in backend.raw_get(obj_key(second.documents[0].sha256))[:16]
    # Both generations read back; the hashes are of the plaintext originals.
    items = {i.number: i for i in rotated.inventory()}
    assert set(items) == {"26112000000000000040", "26112000000000000041"}
    assert rotated.deliver(first) == r1

    forgotten = backend.connector(encryption={"key_id": "k2", "key": k2})
    with pytest.raises(PermanentError, match="key id 'k1'"):
        list(forgotten.inventory())


def test_encryption_settings_need_exactly_one_key() -> None:
    from invoice_hub_plugins.archive_fs import ArchiveFs

    with pytest.raises(ValueError, match=r"exactly one of encryption\.key and encryption\.key_file"):
        ArchiveFs.Settings.model_validate({"path": "/tmp/x", "encryption": {"key_id": "k1"}})


def test_bad_key_is_refused_with_its_setting_named(fs_backend: FsBackend) -> None:
    with pytest.raises(PermanentError, match=r"encryption\.key: an AES-256 key is 32 bytes, this one is 3"):
        fs_backend.connector(encryption={"key_id": "k1", "key": base64.b64encode(b"abc").decode()})


def test_retention_refuses_deletion_before_it_ends(backend: Any) -> None:
    conn = backend.connector(retention_days=30)
    req = make_request(make_invoice(50))
    receipt = conn.deliver(req)

    with pytest.raises(PermanentError, match="retained until") as info:
        conn.delete(receipt.remote_ref)
    assert backend.raw_get(receipt.remote_ref)
    until = datetime.fromisoformat(info.value.context["retain_until"])
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)


def test_deletion_after_retention_removes_record_and_unshared_originals(fs_backend: FsBackend) -> None:
    conn = fs_backend.connector(retention_days=1)
    shared = Document(content=b"<a/>", media_type="application/xml", filename="shared.xml")
    own = Document(content=b"<b/>", media_type="application/xml", filename="own.xml")
    r1 = conn.deliver(make_request(make_invoice(51), [own, shared]))
    conn.deliver(make_request(make_invoice(52), [shared]))

    deleted = conn.delete(r1.remote_ref, now=datetime.now(UTC) + timedelta(days=2))

    assert set(deleted) == {r1.remote_ref, obj_key(own.sha256)}
    keys = fs_backend.stored_keys()
    assert obj_key(shared.sha256) in keys and obj_key(own.sha256) not in keys
    assert [i.number for i in conn.inventory()] == ["26112000000000000052"]


# ---------------------------------------------------------------------------------------------------
# S3 specifics: object lock, multipart, error translation
# ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_s3_objects_are_locked_in_compliance_mode_until_retention_ends(s3_backend: S3Backend) -> None:
    from botocore.exceptions import ClientError

    conn = s3_backend.connector(retention_days=10)
    req = make_request(make_invoice(60))
    receipt = conn.deliver(req)
    try:
        for key in (receipt.remote_ref, obj_key(req.documents[0].sha256)):
            full = s3_backend.prefix + key
            head = s3_backend.client.head_object(Bucket=s3_backend.bucket, Key=full)
            assert head["ObjectLockMode"] == "COMPLIANCE"
            left = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
            assert timedelta(days=9) < left <= timedelta(days=10)
            version = head["VersionId"]
            # The store itself refuses, whoever asks: not only the archive's own check.
            with pytest.raises(ClientError, match="AccessDenied"):
                s3_backend.client.delete_object(Bucket=s3_backend.bucket, Key=full, VersionId=version)
        # Even past the archive's own date, the bucket's lock still refuses.
        with pytest.raises(PermanentError, match="retained until"):
            conn.delete(receipt.remote_ref, now=datetime.now(UTC) + timedelta(days=11))
        assert s3_backend.raw_get(receipt.remote_ref)
    finally:
        conn.close()


@pytest.mark.integration
def test_s3_large_original_goes_up_in_parts_with_sha256_checksums(s3_backend: S3Backend) -> None:
    conn = s3_backend.connector(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    big = Document(content=os.urandom(11 * 1024 * 1024), media_type="application/pdf", filename="scan.pdf")
    try:
        conn.deliver(make_request(make_invoice(61), [big]))
        full = s3_backend.prefix + obj_key(big.sha256)
        head = s3_backend.client.head_object(Bucket=s3_backend.bucket, Key=full, ChecksumMode="ENABLED")
        assert head["ETag"].strip('"').endswith("-3")  # three parts
        assert head["ContentLength"] == len(big.content)
        assert "ChecksumSHA256" in head
        assert s3_backend.raw_get(obj_key(big.sha256)) == big.content
        # Delivering it again is a no-op, not a second upload.
        assert conn.deliver(make_request(make_invoice(62), [big])).remote_ref
        versions = s3_backend.client.list_object_versions(Bucket=s3_backend.bucket, Prefix=full)["Versions"]
        assert len(versions) == 1
    finally:
        conn.close()


@pytest.mark.integration
def test_s3_missing_bucket_is_permanent_and_named(s3_backend: S3Backend) -> None:
    conn = s3_backend.connector(bucket="no-such-bucket-here")
    try:
        health = conn.health()
        assert not health.ok and "no-such-bucket-here" in health.detail
        with pytest.raises(PermanentError, match="NoSuchBucket") as info:
            conn.deliver(make_request(make_invoice(63)))
        assert info.value.code == "NoSuchBucket"
    finally:
        conn.close()


def test_s3_unreachable_endpoint_is_transient(tmp_path: Path) -> None:
    from invoice_hub_plugins.archive_s3 import ArchiveS3

    settings = ArchiveS3.Settings(
        bucket="archive",
        endpoint_url=f"http://127.0.0.1:{_free_port()}",
        region="us-east-1",
        access_key_id="x",
        secret_access_key="y",
        object_lock=False,
        connect_timeout=1,
    )
    with ArchiveS3(settings, ConnectorContext("archive", tmp_path)) as conn:
        with pytest.raises(TransientError, match=r"127\.0\.0\.1"):
            conn.deliver(make_request(make_invoice(64)))
        assert not conn.health().ok


@pytest.mark.integration
def test_s3_object_lock_required_but_missing_is_refused(s3_backend: S3Backend) -> None:
    s3_backend.client.create_bucket(Bucket=s3_backend.bucket + "-nolock")
    conn = s3_backend.connector(bucket=s3_backend.bucket + "-nolock", object_lock=True, retention_days=5)
    try:
        with pytest.raises(PermanentError, match="no object lock enabled"):
            conn.deliver(make_request(make_invoice(65)))
    finally:
        conn.close()


def test_s3_secrets_are_not_shown(tmp_path: Path) -> None:
    from invoice_hub_plugins.archive_s3 import ArchiveS3

    settings = ArchiveS3.Settings(
        bucket="archive", access_key_id="AKIDSECRET", secret_access_key="verysecret"
    )
    assert "verysecret" not in repr(settings) and "AKIDSECRET" not in str(settings.model_dump())


# ---------------------------------------------------------------------------------------------------
# Batches: two flushes for many invoices
# ---------------------------------------------------------------------------------------------------
def test_deliver_batch_gives_each_request_its_own_outcome(backend: Any) -> None:
    conn = backend.connector()
    earlier = make_request(make_invoice(70))
    earlier_receipt = conn.deliver(earlier)
    tampered = make_request(make_invoice(71))
    backend.raw_put(obj_key(tampered.documents[0].sha256), b"not what was sent")
    fresh = [make_request(make_invoice(n)) for n in range(72, 82)]
    status = make_request(make_invoice(70, status="void"), event_type="invoice.status_changed")
    batch = [fresh[0], earlier, tampered, *fresh[1:], make_request(make_invoice(72)), status]

    results = conn.deliver_batch(batch)

    assert len(results) == len(batch)
    assert results[1] == earlier_receipt
    assert isinstance(results[2], PermanentError) and obj_key(tampered.documents[0].sha256) in str(results[2])
    assert results[-2] == results[0]  # the same version twice in one batch: one record, one receipt
    assert results[-1].remote_ref.startswith("status/")
    # Every receipt is the one a single delivery now returns, and nothing more gets written.
    before = backend.stored_keys()
    for request, result in zip(batch, results, strict=True):
        if request is not tampered:
            assert conn.deliver(request) == result
    assert backend.stored_keys() == before
    numbers = sorted(i.number for i in conn.inventory())
    assert numbers == [f"261120000000000000{n}" for n in (70, *range(72, 82))]


def test_deliver_batch_on_a_folder_leaves_no_temp_files(fs_backend: FsBackend) -> None:
    conn = fs_backend.connector()
    results = conn.deliver_batch([make_request(make_invoice(n)) for n in range(90, 140)])
    assert all(r.remote_ref for r in results)
    assert list(fs_backend.root.rglob(".*")) == []
    assert len([k for k in fs_backend.stored_keys() if k.startswith("objects/")]) == 50


def test_a_version_whose_second_original_cannot_be_written_leaves_nothing_behind(
    fs_backend: FsBackend,
) -> None:
    """Its first original, already staged, is discarded with it; the other versions of the batch go in."""
    conn = fs_backend.connector()
    invoice = make_invoice(150)
    first = xml_document(invoice)
    second = Document(content=b"%PDF-1.7 the same invoice as a PDF", filename="150.pdf", source="inbox")
    assert obj_key(first.sha256).split("/")[1] != obj_key(second.sha256).split("/")[1]
    blocked = fs_backend.root / obj_key(second.sha256).rpartition("/")[0]  # its shard folder
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"a file where the shard folder goes")
    others = [make_request(make_invoice(n)) for n in (151, 152)]

    results = conn.deliver_batch([others[0], make_request(invoice, [first, second]), others[1]])

    assert isinstance(results[1], HubError) and str(blocked) in str(results[1])
    assert results[0].remote_ref and results[2].remote_ref
    assert list(fs_backend.root.rglob(".*")) == []  # no temp file of the first original is left
    assert not (fs_backend.root / obj_key(first.sha256)).exists()


# ---------------------------------------------------------------------------------------------------
# kill -9 in the middle of archiving
# ---------------------------------------------------------------------------------------------------
_WRITER = """
import sys
from pathlib import Path
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
from hub import ConnectorContext
from tests.test_archive_store import make_invoice, make_request
from invoice_hub_plugins.archive_fs import ArchiveFs

root = Path(sys.argv[1])
conn = ArchiveFs(ArchiveFs.Settings(path=root / "archive"), ConnectorContext("archive", root / "data"))
batch = sys.argv[2] == "batch"
for start in range(0, 100000, 50):
    requests = [make_request(make_invoice(n)) for n in range(start, start + 50)]
    if batch:
        conn.deliver_batch(requests)
    else:
        for request in requests:
            conn.deliver(request)
    print(start + 50, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single", "batch"])
def test_kill_9_while_archiving_leaves_no_record_without_its_original(tmp_path: Path, mode: str) -> None:
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), mode],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(4):  # let it archive a few hundred, then kill it mid-write
        assert proc.stdout.readline().strip().isdigit(), "the writer died on its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ledger": f"sqlite:///{tmp_path}/ledger.db",
                "connectors": {
                    "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}}
                },
            }
        )
    )

    def verify() -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "hub", "-c", str(config), "archive", "verify", "--no-ledger", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        report: dict[str, Any] = orjson.loads(result.stdout)
        return report

    report = verify()
    archived = report["counts"]["records"]
    assert archived >= 200
    # Every record that exists is whole: nothing missing or corrupt. At most the originals of the
    # invoices in flight are there without their record yet.
    assert report["missing"] == [] and report["corrupt"] == []
    assert len(report["orphaned"]) <= 50

    # Delivering again (what the worker does for a delivery whose outcome was not recorded) completes.
    conn = FsBackend(tmp_path).connector()
    results = conn.deliver_batch([make_request(make_invoice(n)) for n in range(archived + 60)])
    assert all(r.remote_ref for r in results)
    report = verify()
    assert report["ok"], report
    assert report["counts"]["records"] == archived + 60
