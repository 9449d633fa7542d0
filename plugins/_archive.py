"""One archive implementation over two object stores (a folder, S3-compatible storage).

``archive.fs`` and ``archive.s3`` are the same archive: this module holds the layout, the write-once
rules, encryption at rest, retention and the metadata records; each backend only supplies an
``ObjectStore`` (``put_once``/``get``/``exists``/``list``/``children``/``delete``).

Layout (keys are ``/``-separated, the same on disk and in a bucket)::

    objects/ab/<sha256>                             an original document, content-addressed, write-once
    invoices/<YYYY-MM>/<identity>.<content_hash>.json  the metadata record of one invoice version
    status/<YYYY-MM>/<identity>.<content_hash>.<status>.json  one record per status change

``<YYYY-MM>`` is the issue month, so an inventory or an auditor's export of a period lists only that
period's records; ``<identity>`` is the identity key escaped (``CN~3A2411...``, see
``identity_segment``), which is reversible and safe in file names and object keys. A record is
written after the originals it names, so a record that exists is a complete delivery: a second
delivery of the same idempotency key finds it and returns the same receipt without writing anything.

Write-once: a key is written once. The same bytes under an existing key are a no-op; other bytes are
refused with ``WriteOnceViolation`` naming the key. For content-addressed originals that can only
happen if the stored object was altered (or SHA-256 broke), and the error says so.

Encryption at rest (optional): objects are sealed with AES-256-GCM; the envelope carries the key id,
so keys can rotate (old ids stay readable through ``previous_keys``), and the object key is bound in as
associated data, so an object copied to another key fails to open. Hashes (SHA-256, SM3) are always of
the plaintext original, so they match the file the sender sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import sys
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import structlog
from pydantic import Field, SecretStr, model_validator

from hub.canonical import CANONICAL_VERSION, canonical_dict
from hub.connectors import ConnectorSettings, DeliveryRequest, Health, InventoryItem, Receipt
from hub.errors import HubError, PermanentError
from hub.models import Document, Invoice

log = structlog.get_logger()

RECORD_FORMAT = "invoice-hub.archive.record/1"
STATUS_FORMAT = "invoice-hub.archive.status/1"
_ENVELOPE_MAGIC = b"IHAE1"  # invoice-hub archive envelope, version 1
_NONCE_BYTES = 12


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------
class ObjectMissing(PermanentError):
    """A key the archive expected is not in the store."""

    def __init__(self, key: str, store: str) -> None:
        super().__init__(f"{store}: object {key} is missing", code="object_missing", key=key)
        self.key = key


class WriteOnceViolation(PermanentError):
    """Somebody tried to write other bytes under a key that already holds an object."""

    def __init__(self, key: str, store: str, *, content_addressed: bool) -> None:
        why = (
            "the key is the SHA-256 of the original, so the stored object was altered (tampering or "
            "disk corruption) — run `hub archive verify`"
            if content_addressed
            else "archived objects are write-once and are never overwritten"
        )
        super().__init__(
            f"{store}: refused to overwrite {key} with different bytes: {why}",
            code="write_once_violation",
            key=key,
        )
        self.key = key


class RetentionActive(PermanentError):
    """A deletion was asked before the retention period ended."""


# ---------------------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sm3_hex(data: bytes) -> str:
    """SM3 (GB/T 32905-2016), as Chinese archive standards record it; OpenSSL provides it."""
    return hashlib.new("sm3", data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# The storage seam
# ---------------------------------------------------------------------------------------------------
class ObjectStore(Protocol):
    """What a backend provides. Keys are ``/``-separated relative names; errors are ``hub.errors``."""

    #: Where the objects are, for messages (``/srv/archive``, ``s3://bucket/prefix``).
    location: str

    def put_once(
        self,
        key: str,
        data: bytes,
        *,
        same: Callable[[bytes], bool],
        retain_until: datetime | None,
        content_addressed: bool,
    ) -> bool:
        """Store ``data`` under ``key`` durably unless the key exists. Returns True when written, False
        when the key already held an object ``same`` accepts; raises ``WriteOnceViolation`` otherwise."""
        ...

    # Batches: stage (bytes written, not yet under their key) → barrier → commit (the key appears,
    # write-once as in put_once) → barrier. A key never names bytes that are not durable.
    def stage(self, key: str, data: bytes, *, retain_until: datetime | None) -> Any: ...

    def commit(self, staged: Any, *, same: Callable[[bytes], bool], content_addressed: bool) -> bool: ...

    def discard(self, staged: Any) -> None: ...

    def barrier(self) -> None:
        """Make everything staged or committed so far durable (one flush for a whole batch)."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``ObjectMissing`` when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (recursively), streamed."""
        ...

    def children(self, prefix: str) -> Iterator[str]:
        """The names one level below ``prefix`` (``invoices/`` → ``2026-10``, ...), sorted."""
        ...

    def delete(self, key: str) -> None: ...

    def retention_of(self, key: str) -> datetime | None:
        """The store's own lock on an object (S3 object lock); None when the store has none."""
        ...

    def locks(self) -> bool:
        """True when the store itself enforces retention (S3 object lock)."""
        ...

    def health(self) -> Health: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------
# Settings shared by both backends
# ---------------------------------------------------------------------------------------------------
class EncryptionSettings(ConnectorSettings):
    """AES-256-GCM at rest. The key is 32 bytes written as base64 or hex, given inline (normally
    ``"${HUB_ARCHIVE_KEY}"``) or in a file; ``previous_keys`` keeps retired keys readable."""

    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key: SecretStr | None = None
    key_file: Path | None = None
    previous_keys: dict[str, SecretStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_key(self) -> EncryptionSettings:
        if (self.key is None) == (self.key_file is None):
            raise ValueError("give exactly one of encryption.key and encryption.key_file")
        return self


class ArchiveSettings(ConnectorSettings):
    """Settings every archive backend has."""

    encryption: EncryptionSettings | None = None
    #: Days an archived object must be kept; deletion before then is refused (and, on S3 with object
    #: lock, the store refuses it too). Original vouchers are kept 30 years under 会计档案管理办法
    #: (10950 days). None: no retention.
    retention_days: int | None = Field(default=None, ge=1)
    #: Ed25519 private key (PEM) that signs export manifests; generated in the data dir when absent.
    signing_key_file: Path | None = None


def _decode_key(text: str, where: str) -> bytes:
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError(f"{where}: not base64 or hex", code="bad_key") from None
    if len(raw) != 32:
        raise PermanentError(f"{where}: an AES-256 key is 32 bytes, this one is {len(raw)}", code="bad_key")
    return raw


class Sealer:
    """AES-GCM envelopes: ``magic | len(key_id) | key_id | nonce | ciphertext+tag``."""

    def __init__(self, settings: EncryptionSettings | None) -> None:
        self.active: str | None = None
        self.keys: dict[str, bytes] = {}
        if settings is None:
            return
        if settings.key_file is not None:
            try:
                text = settings.key_file.read_text()
            except OSError as exc:
                raise PermanentError(
                    f"encryption.key_file {settings.key_file}: {exc.strerror}", code="bad_key"
                ) from exc
            where = f"encryption.key_file {settings.key_file}"
        else:
            assert settings.key is not None
            text, where = settings.key.get_secret_value(), "encryption.key"
        self.keys[settings.key_id] = _decode_key(text, where)
        for key_id, secret in settings.previous_keys.items():
            self.keys.setdefault(key_id, _decode_key(secret.get_secret_value(), f"previous_keys.{key_id}"))
        self.active = settings.key_id

    def seal(self, key: str, plaintext: bytes) -> bytes:
        if self.active is None:
            return plaintext
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kid = self.active.encode()
        nonce = os.urandom(_NONCE_BYTES)
        header = _ENVELOPE_MAGIC + bytes([len(kid)]) + kid
        sealed = AESGCM(self.keys[self.active]).encrypt(nonce, plaintext, header + key.encode())
        return header + nonce + sealed

    @staticmethod
    def key_id_of(stored: bytes) -> str | None:
        """The key id an object was sealed with; None for a plaintext object."""
        if not stored.startswith(_ENVELOPE_MAGIC) or len(stored) < len(_ENVELOPE_MAGIC) + 1:
            return None
        n = stored[len(_ENVELOPE_MAGIC)]
        return stored[len(_ENVELOPE_MAGIC) + 1 : len(_ENVELOPE_MAGIC) + 1 + n].decode("ascii", "replace")

    def open(self, key: str, stored: bytes) -> bytes:
        kid = self.key_id_of(stored)
        if kid is None:
            return stored
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if kid not in self.keys:
            raise PermanentError(
                f"{key} is encrypted with key id {kid!r}, which this archive is not configured with "
                "(add it under encryption.previous_keys)",
                code="unknown_key_id",
                key=key,
            )
        start = len(_ENVELOPE_MAGIC) + 1 + len(kid.encode())
        header, nonce, body = (
            stored[:start],
            stored[start : start + _NONCE_BYTES],
            stored[start + _NONCE_BYTES :],
        )
        try:
            return AESGCM(self.keys[kid]).decrypt(nonce, body, header + key.encode())
        except InvalidTag:
            raise PermanentError(
                f"{key}: AES-GCM authentication failed (the object was altered or moved)",
                code="decrypt_failed",
                key=key,
            ) from None


# ---------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------
def object_key(sha256: str) -> str:
    """One level of 256 shard folders, as git's: a second level (``objects/ab/cd/``, archives written
    before 2026-12) made a new folder, with its own flush, for nearly every original of the first
    hundred thousand, and end to end into archive.fs that cost about a tenth of the throughput.
    A folder of a 10-million-object archive then holds about 40,000 names, which ext4's and XFS's
    hashed directories look up as fast as 150."""
    return f"objects/{sha256[:2]}/{sha256}"


def object_key_of(entry: dict[str, Any]) -> str:
    """Where a record's original is: the key the record names when it is one of the two layouts for
    that hash (so archives written with ``objects/ab/cd/`` stay readable), else today's key."""
    sha = str(entry.get("sha256", ""))
    named = entry.get("object")
    if isinstance(named, str) and named in (object_key(sha), f"objects/{sha[:2]}/{sha[2:4]}/{sha}"):
        return named
    return object_key(sha)


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def identity_segment(identity: str) -> str:
    """The identity as one path segment: every byte outside ``[A-Za-z0-9_-]`` written ``~XX``
    (``CN:2611...`` → ``CN~3A2611...``). Reversible, and free of ``/``, ``.``, ``%`` and ``:``, which
    some file systems and S3-compatible stores treat specially."""
    plain = identity.replace(":", "")
    if plain.isascii() and plain.isalnum():  # the common case: "CN:2531...", "CN:1100...:1234..."
        return identity.replace(":", "~3A")
    return "".join(c if c in _SAFE else "".join(f"~{b:02X}" for b in c.encode()) for c in identity)


def period_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def record_key_for(period: str, identity: str, content_hash: str) -> str:
    """Records of one month sit in one folder (no folder per identity: every new folder is one more
    fsync per invoice); the versions of an identity are neighbours in the listing."""
    return f"invoices/{period}/{identity_segment(identity)}.{content_hash}.json"


def status_key_for(period: str, identity: str, content_hash: str, status: str) -> str:
    return f"status/{period}/{identity_segment(identity)}.{content_hash}.{identity_segment(status)}.json"


def record_key(invoice: Invoice, content_hash: str) -> str:
    return record_key_for(period_of(invoice.issue_date), invoice.identity, content_hash)


def status_key(invoice: Invoice, content_hash: str, status: str) -> str:
    return status_key_for(period_of(invoice.issue_date), invoice.identity, content_hash, status)


def status_prefix_of(ref: str) -> str:
    """``invoices/P/I.H.json`` → ``status/P/I.H.``: what every status record of that version starts with."""
    return "status/" + ref.removeprefix("invoices/").removesuffix(".json") + "."


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


# ---------------------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------------------
@dataclass
class Record:
    """A metadata record as read back from the store."""

    key: str
    data: dict[str, Any]

    @property
    def identity(self) -> str:
        return str(self.data["identity"])

    @property
    def content_hash(self) -> str:
        return str(self.data["content_hash"])

    @property
    def issue_date(self) -> date:
        return date.fromisoformat(self.data["issue_date"])

    def inventory_item(self) -> InventoryItem:
        d = self.data
        return InventoryItem(
            identity=d["identity"],
            content_hash=d["content_hash"],
            issue_date=date.fromisoformat(d["issue_date"]),
            gross=Decimal(d["gross"]) if d.get("gross") is not None else None,
            currency=d.get("currency"),
            seller_tax_id=d.get("seller_tax_id"),
            buyer_tax_id=d.get("buyer_tax_id"),
            number=d.get("number"),
            remote_ref=self.key,
        )


@dataclass
class _Staged:
    """An invoice version whose originals are written and whose record is not (yet)."""

    request: DeliveryRequest
    rkey: str
    entries: list[dict[str, Any]]
    now: datetime
    retain: datetime | None
    #: Originals planned and not yet written: (key, plaintext).
    originals: list[tuple[str, bytes]] = field(default_factory=list)
    #: Originals staged in a batch and not yet committed: (key, store handle, plaintext).
    objects: list[tuple[str, Any, bytes]] = field(default_factory=list)
    record: dict[str, Any] | None = None
    record_handle: Any = None


_T = TypeVar("_T")
_U = TypeVar("_U")


def _each(
    results: list[Any],
    items: list[tuple[int, _T]],
    do: Callable[[_T], _U],
    undo: Callable[[_T], object] | None = None,
) -> list[tuple[int, _U]]:
    """One step of a batch: ``do`` for each (request index, item), and the (index, result) of those it
    worked for. A ``HubError`` becomes request i's answer in ``results``, after ``undo(item)``."""
    out: list[tuple[int, _U]] = []
    for i, item in items:
        try:
            out.append((i, do(item)))
        except HubError as exc:
            if undo is not None:
                undo(item)
            results[i] = exc
    return out


@dataclass
class Archive:
    """The archive logic, over any ``ObjectStore``."""

    store: ObjectStore
    settings: ArchiveSettings
    name: str = "archive"
    sealer: Sealer = field(init=False)

    def __post_init__(self) -> None:
        self.sealer = Sealer(self.settings.encryption)

    # -- objects ---------------------------------------------------------------------------------
    def retain_until(self, now: datetime) -> datetime | None:
        days = self.settings.retention_days
        return None if days is None else now + timedelta(days=days)

    def _put(
        self,
        key: str,
        plaintext: bytes,
        *,
        retain_until: datetime | None,
        content_addressed: bool,
    ) -> bool:
        return self.store.put_once(
            key,
            self.sealer.seal(key, plaintext),
            same=self._same_plaintext(key, plaintext),
            retain_until=retain_until,
            content_addressed=content_addressed,
        )

    def _same_plaintext(self, key: str, plaintext: bytes) -> Callable[[bytes], bool]:
        def same(stored: bytes) -> bool:
            return self.sealer.open(key, stored) == plaintext

        return same

    def _same_version(self, key: str, record: dict[str, Any]) -> Callable[[bytes], bool]:
        def same(stored: bytes) -> bool:
            # A concurrent delivery of the same version wrote first: same identity and content is the
            # same archived version, whatever its archived_at says.
            other = orjson.loads(self.sealer.open(key, stored))
            return bool(
                other.get("identity") == record["identity"]
                and other.get("content_hash") == record["content_hash"]
            )

        return same

    def read(self, key: str) -> bytes:
        """The plaintext of the object at ``key`` (decrypted when sealed)."""
        return self.sealer.open(key, self.store.get(key))

    def read_record(self, key: str) -> Record:
        raw = self.read(key)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                f"{key}: metadata record is not JSON ({exc})", code="bad_record", key=key
            ) from exc
        if not isinstance(data, dict) or data.get("format") not in (RECORD_FORMAT, STATUS_FORMAT):
            raise PermanentError(f"{key}: not an archive record", code="bad_record", key=key)
        return Record(key, data)

    # -- delivery --------------------------------------------------------------------------------
    def _documents(
        self, request: DeliveryRequest, load: Callable[[str], Document | None] | None
    ) -> list[Document]:
        docs = list(request.documents)
        wanted = request.event.document_sha256
        if wanted and load is not None and all(d.sha256 != wanted for d in docs):
            found = load(wanted)
            if found is None:
                raise PermanentError(
                    f"document {wanted} of {request.event.identity} is not in the ledger, "
                    "so it cannot be archived",
                    code="document_missing",
                )
            docs.append(found)
        return docs

    def deliver(
        self, request: DeliveryRequest, *, load_document: Callable[[str], Document | None] | None = None
    ) -> Receipt:
        event = request.event
        invoice = event.invoice
        content_hash = event.content_hash
        rkey = record_key(invoice, content_hash)
        if event.type == "invoice.status_changed":
            return self._deliver_status(request, rkey, load_document)
        if self.store.exists(rkey):
            existing = self.read_record(rkey)
            log.info("archive_already_holds", connector=self.name, key=rkey, identity=event.identity)
            return self._receipt(existing)
        record = self._archive_version(request, rkey, load_document)
        return self._receipt(record)

    def deliver_batch(
        self,
        requests: list[DeliveryRequest],
        *,
        load_document: Callable[[str], Document | None] | None = None,
    ) -> list[Receipt | HubError]:
        """Deliver many requests with three flushes in all instead of about five per invoice:

        1. every original's bytes are staged (written, not yet under their key) — flush;
        2. every original is committed under its key and every record's bytes staged — flush;
        3. every record is committed under its key — flush.

        A key never names bytes that are not on disk, and a record appears only after its originals
        are durable, so "a record exists" keeps meaning "complete", after a crash too. Returns one
        receipt or error per request, in order; one failing request does not stop the others."""
        results: list[Receipt | HubError | None] = [None] * len(requests)
        # A step at a time across the batch, as intake does (docs/benchmarks.md, stop 21): every
        # request's invoice first (each validated from the ledger's JSON on first use), then the files.
        keyed = _each(
            results,
            list(enumerate(requests)),
            lambda r: (r, record_key(r.event.invoice, r.event.content_hash)),
        )
        todo: list[tuple[int, tuple[DeliveryRequest, str]]] = []
        for i, (request, rkey) in keyed:
            try:
                if request.event.type == "invoice.status_changed":
                    results[i] = self._deliver_status(request, rkey, load_document)
                elif self.store.exists(rkey):
                    results[i] = self._receipt(self.read_record(rkey))
                else:
                    todo.append((i, (request, rkey)))
            except HubError as exc:
                results[i] = exc
        planned = _each(results, todo, lambda t: self._plan_originals(*t, load_document))  # Python alone
        staged = _each(results, planned, self._stage_originals, undo=self._discard)  # then the files
        if staged:
            self.store.barrier()
            committed = _each(results, staged, self._commit_originals, undo=self._discard)
            bodies = [(i, (item, self._record_body(item))) for i, item in committed]
            ready = _each(
                results, bodies, lambda b: self._stage_record(*b), undo=lambda b: self._discard(b[0])
            )
            self.store.barrier()
            receipts = _each(
                results, ready, lambda item: self._receipt(self._commit_record(item)), undo=self._discard
            )
            for i, receipt in receipts:
                results[i] = receipt
            self.store.barrier()
        return [r for r in results if r is not None]

    def _commit_originals(self, staged: _Staged) -> _Staged:
        for key, handle, plaintext in staged.objects:
            self.store.commit(handle, same=self._same_plaintext(key, plaintext), content_addressed=True)
        staged.objects = []
        return staged

    def _commit_record(self, staged: _Staged) -> Record:
        assert staged.record is not None
        written = self.store.commit(
            staged.record_handle, same=self._same_version(staged.rkey, staged.record), content_addressed=False
        )
        staged.record_handle = None
        self._log_stored(staged, written)
        return Record(staged.rkey, staged.record) if written else self.read_record(staged.rkey)

    def _discard(self, staged: _Staged) -> None:
        for _key, handle, _plain in staged.objects:
            self.store.discard(handle)
        if staged.record_handle is not None:
            self.store.discard(staged.record_handle)

    def _archive_version(
        self, request: DeliveryRequest, rkey: str, load: Callable[[str], Document | None] | None
    ) -> Record:
        staged = self._put_originals(request, rkey, load)
        return self._put_record(staged)

    def _put_originals(
        self, request: DeliveryRequest, rkey: str, load: Callable[[str], Document | None] | None
    ) -> _Staged:
        """Write a version's originals durably, one by one (a single delivery)."""
        staged = self._plan_originals(request, rkey, load)
        for okey, content in staged.originals:
            self._put(okey, content, retain_until=staged.retain, content_addressed=True)
        staged.originals = []
        return staged

    def _plan_originals(
        self, request: DeliveryRequest, rkey: str, load: Callable[[str], Document | None] | None
    ) -> _Staged:
        """The version's entries (hashes and provenance of each original) and the originals to store
        under their keys (``originals``): no file touched yet."""
        now = _now()
        retain = self.retain_until(now)
        entries: list[dict[str, Any]] = []
        staged = _Staged(request, rkey, entries, now, retain)
        originals = staged.originals
        seen: set[str] = set()
        for doc in self._documents(request, load):
            digest = doc.sha256
            if digest in seen:
                continue
            seen.add(digest)
            okey = object_key(digest)
            originals.append((okey, doc.content))
            entries.append(
                {
                    "sha256": digest,
                    "sm3": sm3_hex(doc.content),
                    "size": len(doc.content),
                    "media_type": doc.media_type,
                    "filename": doc.filename,
                    "source": doc.source,
                    "origin": doc.origin,
                    "received_at": doc.received_at.isoformat(),
                    "parent_sha256": doc.parent_sha256,
                    "object": okey,
                    "key_id": self.sealer.active,
                }
            )
        return staged

    def _stage_originals(self, staged: _Staged) -> _Staged:
        for okey, content in staged.originals:
            handle = self.store.stage(okey, self.sealer.seal(okey, content), retain_until=staged.retain)
            staged.objects.append((okey, handle, content))
        staged.originals = []
        return staged

    def _put_record(self, staged: _Staged) -> Record:
        """Write a version's record durably (a single delivery; a batch stages its records)."""
        body = self._record_body(staged)
        assert staged.record is not None
        written = self.store.put_once(
            staged.rkey,
            self.sealer.seal(staged.rkey, body),
            same=self._same_version(staged.rkey, staged.record),
            retain_until=staged.retain,
            content_addressed=False,
        )
        self._log_stored(staged, written)
        return Record(staged.rkey, staged.record) if written else self.read_record(staged.rkey)

    def _stage_record(self, staged: _Staged, body: bytes) -> _Staged:
        staged.record_handle = self.store.stage(
            staged.rkey, self.sealer.seal(staged.rkey, body), retain_until=staged.retain
        )
        return staged

    def _record_body(self, staged: _Staged) -> bytes:
        """The record of a staged version (kept in ``staged.record``), as the bytes to write."""
        request, rkey, entries, now, retain = (
            staged.request,
            staged.rkey,
            staged.entries,
            staged.now,
            staged.retain,
        )
        event = request.event
        invoice = event.invoice
        canon = canonical_dict(invoice)
        record = {
            "format": RECORD_FORMAT,
            "ref": rkey,
            "archive": self.name,
            "identity": invoice.identity,
            "content_hash": event.content_hash,
            "canonical_version": CANONICAL_VERSION,
            "kind": invoice.kind.value,
            "number": invoice.number,
            "code": invoice.code,
            "status": invoice.status.value,
            "issue_date": invoice.issue_date.isoformat(),
            "currency": invoice.currency,
            "net": format(invoice.totals.net, "f"),
            "tax": format(invoice.totals.tax, "f"),
            "gross": format(invoice.totals.gross, "f"),
            "seller_tax_id": invoice.seller.tax_id,
            "seller_name": invoice.seller.name,
            "buyer_tax_id": invoice.buyer.tax_id,
            "buyer_name": invoice.buyer.name,
            "reverses": invoice.reverses,
            "amends": request.amends,
            "source": event.source,
            "received_at": event.received_at.isoformat(),
            "archived_at": now.isoformat(),
            "event_id": event.id,
            "trace_id": event.trace_id,
            "destination": request.destination,
            "idempotency_key": request.idempotency_key,
            "parser": invoice.extra.get("parser"),
            "documents": entries,
            "retain_until": retain.isoformat() if retain else None,
            "key_id": self.sealer.active,
            "canonical": canon,
            # The ledger's JSON of this invoice as is, when the request carries it (model_dump is 14 µs).
            "invoice": (
                orjson.Fragment(request.invoice_json)
                if request.invoice_json is not None
                else invoice.model_dump(mode="json")
            ),
        }
        staged.record = record
        return _dumps(record)

    def _log_stored(self, staged: _Staged, written: bool) -> None:
        event = staged.request.event
        log.info(
            "archive_stored",
            connector=self.name,
            key=staged.rkey,
            identity=event.identity,
            content_hash=event.content_hash,
            documents=len(staged.entries),
            written=written,
        )

    def _deliver_status(
        self, request: DeliveryRequest, rkey: str, load: Callable[[str], Document | None] | None
    ) -> Receipt:
        event = request.event
        invoice = event.invoice
        if not self.store.exists(rkey):
            # The archive learns of the invoice through its status change: keep the version too.
            self._archive_version(request, rkey, load)
        # The new status is what the idempotency key names (content hash + ":" + status); the invoice
        # in the event may be the stored version, still showing the status it was received with.
        key = request.idempotency_key
        status = key.rsplit(":", 1)[1] if ":" in key else invoice.status.value
        skey = status_key(invoice, event.content_hash, status)
        if self.store.exists(skey):
            return self._status_receipt(self.read_record(skey))
        now = _now()
        retain = self.retain_until(now)
        record = {
            "format": STATUS_FORMAT,
            "ref": skey,
            "record": rkey,
            "identity": invoice.identity,
            "content_hash": event.content_hash,
            "status": status,
            "reverses": invoice.reverses,
            "source": event.source,
            "event_id": event.id,
            "trace_id": event.trace_id,
            "received_at": event.received_at.isoformat(),
            "archived_at": now.isoformat(),
            "idempotency_key": request.idempotency_key,
            "retain_until": retain.isoformat() if retain else None,
        }

        def same_status(stored: bytes) -> bool:
            other = orjson.loads(self.sealer.open(skey, stored))
            return bool(other.get("idempotency_key") == request.idempotency_key)

        written = self.store.put_once(
            skey,
            self.sealer.seal(skey, _dumps(record)),
            same=same_status,
            retain_until=retain,
            content_addressed=False,
        )
        log.info("archive_status_stored", connector=self.name, key=skey, status=status)
        return self._status_receipt(Record(skey, record) if written else self.read_record(skey))

    @staticmethod
    def _receipt(record: Record) -> Receipt:
        d = record.data
        return Receipt(
            remote_ref=record.key,
            detail={
                "content_hash": d["content_hash"],
                "archived_at": d["archived_at"],
                "retain_until": d.get("retain_until"),
                "documents": [{"sha256": e["sha256"], "sm3": e["sm3"]} for e in d.get("documents", [])],
            },
        )

    @staticmethod
    def _status_receipt(record: Record) -> Receipt:
        d = record.data
        return Receipt(
            remote_ref=record.key,
            detail={"status": d["status"], "record": d["record"], "archived_at": d["archived_at"]},
        )

    # -- reading ---------------------------------------------------------------------------------
    def periods(self, since: date | None = None, until: date | None = None) -> Iterator[str]:
        low = period_of(since) if since else None
        high = period_of(until) if until else None
        for period in self.store.children("invoices/"):
            if (low and period < low) or (high and period > high):
                continue
            yield period

    def record_keys(self, since: date | None = None, until: date | None = None) -> Iterator[str]:
        for period in self.periods(since, until):
            for key in self.store.list(f"invoices/{period}/"):
                if key.endswith(".json"):
                    yield key

    def records(self, since: date | None = None, until: date | None = None) -> Iterator[Record]:
        """Every metadata record with an issue date in [since, until], one at a time."""
        for key in self.record_keys(since, until):
            record = self.read_record(key)
            day = record.issue_date
            if (since and day < since) or (until and day > until):
                continue
            yield record

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        for record in self.records(since, until):
            yield record.inventory_item()

    # -- deletion --------------------------------------------------------------------------------
    def delete(self, ref: str, *, now: datetime | None = None) -> list[str]:
        """Delete an invoice version's record, its status records and the originals no other record
        names. Refused with ``RetentionActive`` ("retained until ...") before its retention ends.
        Returns the keys deleted. Deletion is rare, so finding other references scans the records."""
        now = now or _now()
        record = self.read_record(ref)
        if record.data.get("format") != RECORD_FORMAT:
            raise PermanentError(f"{ref} is not an invoice record", code="bad_ref")
        until = _parse_time(record.data.get("retain_until"))
        if until is not None and now < until:
            raise RetentionActive(
                f"{ref} is retained until {until.isoformat()}; it cannot be deleted before then",
                code="retention_active",
                retain_until=until.isoformat(),
            )
        doomed_keys = {e["sha256"]: object_key_of(e) for e in record.data.get("documents", [])}
        doomed_docs = set(doomed_keys)
        for other in self.records():
            if other.key != ref:
                doomed_docs -= {e["sha256"] for e in other.data.get("documents", [])}
            if not doomed_docs:
                break
        status_prefix = status_prefix_of(ref)
        folder = status_prefix.rsplit("/", 1)[0] + "/"
        doomed = [k for k in self.store.list(folder) if k.startswith(status_prefix)]
        doomed += [ref, *(doomed_keys[d] for d in sorted(doomed_docs))]
        # Check every lock before deleting anything, so a refusal leaves the version whole.
        for key in doomed:
            locked = self.store.retention_of(key)
            if locked is not None and now < locked:
                raise RetentionActive(
                    f"{key} is retained until {locked.isoformat()} by the store's object lock",
                    code="retention_active",
                    retain_until=locked.isoformat(),
                )
        for key in doomed:
            self.store.delete(key)
        deleted = doomed
        log.warning("archive_deleted", connector=self.name, ref=ref, keys=len(deleted))
        return deleted

    def health(self) -> Health:
        return self.store.health()


# ---------------------------------------------------------------------------------------------------
# Can the original still be opened? (usability)
# ---------------------------------------------------------------------------------------------------
def open_check(data: bytes, media_type: str | None, filename: str | None) -> tuple[str, str]:
    """Try to open an original with the reader for its format.

    Returns ``("ok", what)``, ``("failed", why)`` or ``("unchecked", why)`` for formats without a reader.
    """
    mt = (media_type or "").lower()
    name = (filename or "").lower()
    try:
        if mt == "application/pdf" or name.endswith(".pdf") or data.startswith(b"%PDF"):
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(data), strict=False)
            pages = len(reader.pages)
            if pages < 1:
                return "failed", "PDF has no pages"
            return "ok", f"PDF, {pages} page(s)"
        if mt in ("application/ofd", "application/x-ofd") or name.endswith(".ofd"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                bad = zf.testzip()
                if bad is not None:
                    return "failed", f"OFD member {bad} is corrupt"
                names = zf.namelist()
                if "OFD.xml" not in names:
                    return "failed", "OFD package has no OFD.xml"
                from defusedxml.ElementTree import fromstring

                fromstring(zf.read("OFD.xml"))
            return "ok", f"OFD, {len(names)} member(s)"
        if "xml" in mt or name.endswith(".xml") or data.lstrip()[:5] == b"<?xml":
            from defusedxml.ElementTree import fromstring

            root = fromstring(data)
            return "ok", f"XML <{root.tag.rsplit('}', 1)[-1]}>"
        if "json" in mt or name.endswith(".json"):
            orjson.loads(data)
            return "ok", "JSON"
        if mt in ("application/zip", "application/x-zip-compressed") or name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                bad = zf.testzip()
                if bad is not None:
                    return "failed", f"ZIP member {bad} is corrupt"
            return "ok", "ZIP"
    except Exception as exc:  # any reader failure is the finding itself
        return "failed", f"{type(exc).__name__}: {exc}"
    return "unchecked", f"no reader for {media_type or 'unknown type'}"


# ---------------------------------------------------------------------------------------------------
# Verification: the four properties (authenticity, integrity, usability, security)
# ---------------------------------------------------------------------------------------------------
PROPERTIES = ("authenticity", "integrity", "usability", "security")

#: What each check means, as the report prints it (stable: scripts may match on the keys).
CHECKS: dict[str, tuple[str, str]] = {
    "canonical_hash": ("authenticity", "the canonical invoice in each record hashes to its content hash"),
    "record_fields": (
        "authenticity",
        "each record's identity, issue date, amounts, currency and tax ids agree with its invoice and key",
    ),
    "ledger_agreement": (
        "authenticity",
        "each record agrees with the ledger's invoice version and delivery (hash, date, amounts, "
        "tax ids, originals, archive reference)",
    ),
    "originals_present": ("integrity", "every original a record names is in the store"),
    "original_hashes": (
        "integrity",
        "every original's SHA-256 and SM3, recomputed, match its address and record",
    ),
    "ledger_complete": ("integrity", "every delivery the ledger marks delivered here has its record"),
    "no_orphans": ("integrity", "every stored object and status record belongs to a record"),
    "originals_open": (
        "usability",
        "every original opens with the reader for its format (XML, PDF, OFD, JSON, ZIP)",
    ),
    "records_readable": ("usability", "every metadata record is readable and has the fields inventory needs"),
    "encryption": ("security", "every object is encrypted with a key this archive is configured with"),
    "retention": ("security", "every record carries its retention, and the store's lock holds each object"),
    "store_health": ("security", "the store is reachable and writable"),
}


@dataclass
class Finding:
    check: str
    kind: str  # missing | corrupt | orphaned | mismatch | unreadable | insecure
    item: str
    problem: str

    @property
    def property(self) -> str:
        return CHECKS[self.check][0]

    def as_dict(self) -> dict[str, str]:
        return {
            "property": self.property,
            "check": self.check,
            "kind": self.kind,
            "item": self.item,
            "problem": self.problem,
        }


@dataclass
class VerifyReport:
    archive: str
    location: str
    since: date | None = None
    ledger: str | None = None
    started_at: datetime = field(default_factory=_now)
    finished_at: datetime | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "records",
                "originals",
                "status_records",
                "objects_listed",
                "ledger_versions",
                "ledger_deliveries",
            ),
            0,
        )
    )
    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    skipped: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def check(self, name: str, n: int = 1) -> None:
        self.checked[name] += n

    def fail(self, check: str, kind: str, item: str, problem: str) -> None:
        self.findings.append(Finding(check, kind, item, problem))

    @property
    def ok(self) -> bool:
        return not self.findings

    def by_kind(self, kind: str) -> list[dict[str, str]]:
        return [f.as_dict() for f in self.findings if f.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for prop in PROPERTIES:
            checks = {name: text for name, (p, text) in CHECKS.items() if p == prop}
            failures = [f.as_dict() for f in self.findings if f.property == prop]
            props[prop] = {
                "ok": not failures,
                "checked": [
                    {
                        "check": name,
                        "what": text,
                        "items": self.checked[name],
                        "skipped": self.skipped.get(name),
                    }
                    for name, text in checks.items()
                ],
                "failed": failures,
            }
        return {
            "ok": self.ok,
            "archive": self.archive,
            "location": self.location,
            "since": self.since.isoformat() if self.since else None,
            "ledger": self.ledger,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "counts": self.counts,
            "properties": props,
            "missing": self.by_kind("missing"),
            "corrupt": self.by_kind("corrupt"),
            "orphaned": self.by_kind("orphaned"),
        }

    def render(self) -> str:
        lines = [
            f"archive {self.archive!r} at {self.location}"
            + (f", issue dates from {self.since.isoformat()}" if self.since else ""),
            "  "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items())
            + (f"; ledger {self.ledger}" if self.ledger else "; no ledger cross-check"),
        ]
        for prop in PROPERTIES:
            failures = [f for f in self.findings if f.property == prop]
            lines.append(f"{prop:<13} {'OK' if not failures else f'FAILED ({len(failures)})'}")
            for name, (p, text) in CHECKS.items():
                if p != prop:
                    continue
                note = (
                    f"skipped: {self.skipped[name]}"
                    if name in self.skipped
                    else f"{self.checked[name]} checked"
                )
                bad = sum(1 for f in failures if f.check == name)
                lines.append(f"  {'✗' if bad else '✓'} {text} — {note}" + (f", {bad} failed" if bad else ""))
            for f in failures:
                lines.append(f"      {f.kind:<10} {f.item}: {f.problem}")
        counts = {k: len(self.by_kind(k)) for k in ("missing", "corrupt", "orphaned")}
        other = len(self.findings) - sum(counts.values())
        lines.append(
            "RESULT: OK — nothing missing, corrupt or orphaned"
            if self.ok
            else f"RESULT: FAILED — {len(self.findings)} problem(s): "
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + f", {other} other"
        )
        return "\n".join(lines)


def _canonical_hash(canonical: Any) -> str:
    return sha256_hex(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))


def _same_amount(a: Any, b: Any) -> bool:
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (ArithmeticError, ValueError):
        return str(a) == str(b)


class LedgerView:
    """The few ledger questions verify asks, in short read transactions (a long scan must not hold
    SQLite's write lock while a hub is running)."""

    BATCH = 500

    def __init__(self, ledger: Any, destination: str) -> None:
        self.ledger = ledger
        self.destination = destination

    def versions(self, hashes: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
        import sqlalchemy as sa

        from hub.ledger import schema as t

        v = t.invoice_versions
        out: dict[tuple[str, str], dict[str, Any]] = {}
        with self.ledger.read() as conn:
            rows = conn.execute(sa.select(v).where(v.c.content_hash.in_(hashes))).mappings()
            for row in rows:
                out[(row["identity"], row["content_hash"])] = dict(row)
        return out

    def deliveries(self, since: date | None) -> Iterator[dict[str, Any]]:
        """Deliveries to this archive in state delivered, with the version's issue date."""
        import sqlalchemy as sa

        from hub.ledger import schema as t

        d, v = t.deliveries, t.invoice_versions
        last = 0
        while True:
            query = (
                sa.select(
                    d.c.id,
                    d.c.identity,
                    d.c.content_hash,
                    d.c.idem_key,
                    d.c.remote_ref,
                    d.c.receipt,
                    v.c.issue_date,
                )
                .join(v, sa.and_(v.c.identity == d.c.identity, v.c.content_hash == d.c.content_hash))
                .where(d.c.destination == self.destination, d.c.state == "delivered", d.c.id > last)
                .order_by(d.c.id)
                .limit(self.BATCH)
            )
            if since is not None:
                query = query.where(v.c.issue_date >= since.isoformat())
            with self.ledger.read() as conn:
                rows = [dict(r) for r in conn.execute(query).mappings()]
            if not rows:
                return
            yield from rows
            last = rows[-1]["id"]


class Verifier:
    """Re-reads every object of an archive and checks the four properties; see ``CHECKS``."""

    def __init__(
        self, archive: Archive, *, ledger: LedgerView | None = None, since: date | None = None
    ) -> None:
        self.archive = archive
        self.store = archive.store
        self.ledger = ledger
        self.since = since
        self.report = VerifyReport(archive.name, self.store.location, since=since)
        if ledger is not None:
            self.report.ledger = getattr(ledger.ledger, "safe_url", "ledger")
        self.good: set[bytes] = set()  # originals verified once (shared originals are read once)
        self.bad: set[bytes] = set()
        self.referenced: set[bytes] = set()
        self.record_hashes: set[bytes] = set()
        self.encrypted = archive.sealer.active is not None
        self.locks = False

    def run(self) -> VerifyReport:
        r = self.report
        health = self.store.health()
        r.check("store_health")
        if not health.ok:
            r.fail("store_health", "insecure", self.store.location, health.detail)
        self.locks = self.store.locks()
        pending: list[Record] = []
        for key in self.archive.record_keys(self.since, None):
            record = self._read_record(key)
            if record is None:
                continue
            if self.since and record.issue_date < self.since:
                continue
            self._verify_record(record)
            pending.append(record)
            if len(pending) >= LedgerView.BATCH:
                self._cross_check(pending)
                pending = []
        self._cross_check(pending)
        self._verify_status_records()
        if self.since is None:
            self._scan_orphans()
        else:
            r.skipped["no_orphans"] = "only on a full run (without --since)"
        if self.ledger is not None:
            self._ledger_complete()
        else:
            for name in ("ledger_agreement", "ledger_complete"):
                r.skipped[name] = "no ledger given"
        if not self.encrypted:
            r.skipped["encryption"] = "encryption is not configured for this archive"
        r.finished_at = _now()
        return r

    # -- records ---------------------------------------------------------------------------------
    def _read_record(self, key: str) -> Record | None:
        r = self.report
        r.counts["records"] += 1
        r.check("records_readable")
        try:
            stored = self.store.get(key)
        except ObjectMissing:
            r.fail("records_readable", "missing", key, "listed but gone when read")
            return None
        self._check_sealed(key, stored)
        try:
            record = self.archive.read_record(key) if stored else None
        except PermanentError as exc:
            kind = "insecure" if exc.code == "unknown_key_id" else "corrupt"
            r.fail("records_readable", kind, key, str(exc))
            return None
        if record is None:
            r.fail("records_readable", "corrupt", key, "empty record")
            return None
        needed = ("identity", "content_hash", "issue_date", "documents", "canonical", "invoice", "gross")
        lacking = [f for f in needed if f not in record.data]
        if lacking:
            r.fail("records_readable", "corrupt", key, f"record lacks {', '.join(lacking)}")
            return None
        return record

    def _check_sealed(self, key: str, stored: bytes) -> None:
        if not self.encrypted:
            return
        r = self.report
        r.check("encryption")
        kid = Sealer.key_id_of(stored)
        if kid is None:
            r.fail("encryption", "insecure", key, "stored unencrypted although encryption is configured")
        elif kid not in self.archive.sealer.keys:
            r.fail("encryption", "insecure", key, f"encrypted with key id {kid!r}, which is not configured")

    def _verify_record(self, record: Record) -> None:
        r = self.report
        d = record.data
        key = record.key
        self.record_hashes.add(bytes.fromhex(record.content_hash) if len(record.content_hash) == 64 else b"")
        r.check("canonical_hash")
        actual = _canonical_hash(d["canonical"])
        if actual != record.content_hash:
            r.fail(
                "canonical_hash",
                "corrupt",
                key,
                f"its canonical invoice hashes to {actual}, not to its content hash {record.content_hash} "
                "(the record was altered)",
            )
        r.check("record_fields")
        try:
            invoice = Invoice.model_validate(d["invoice"])
        except ValueError as exc:
            r.fail("record_fields", "corrupt", key, f"its invoice does not validate: {exc}")
        else:
            ours = {
                "identity": invoice.identity,
                "issue_date": invoice.issue_date.isoformat(),
                "currency": invoice.currency,
                "seller_tax_id": invoice.seller.tax_id,
                "buyer_tax_id": invoice.buyer.tax_id,
                "number": invoice.number,
            }
            for name, value in ours.items():
                if d.get(name) != value:
                    r.fail(
                        "record_fields",
                        "mismatch",
                        key,
                        f"{name} is {d.get(name)!r}, its invoice says {value!r}",
                    )
            for name in ("gross", "net", "tax"):
                if name in d and not _same_amount(d[name], getattr(invoice.totals, name)):
                    r.fail(
                        "record_fields",
                        "mismatch",
                        key,
                        f"{name} is {d[name]}, its invoice says {format(getattr(invoice.totals, name), 'f')}",
                    )
            from hub.canonical import content_hash as compute_hash

            if compute_hash(invoice) != record.content_hash:
                r.fail("record_fields", "mismatch", key, "its invoice does not hash to its content hash")
            expected_key = record_key(invoice, record.content_hash)
            if expected_key != key:
                r.fail(
                    "record_fields", "mismatch", key, f"filed under the wrong key (expected {expected_key})"
                )
        r.check("retention")
        if self.archive.settings.retention_days and not d.get("retain_until"):
            r.fail("retention", "insecure", key, "no retain_until although retention is configured")
        self._check_lock(key, d.get("retain_until"))
        for entry in d.get("documents", []):
            self._verify_original(record, entry)

    def _check_lock(self, key: str, retain_until: str | None) -> None:
        if not (self.locks and retain_until):
            return
        until = self.store.retention_of(key)
        if until is None:
            self.report.fail("retention", "insecure", key, "the store holds no lock on it")

    # -- originals -------------------------------------------------------------------------------
    def _verify_original(self, record: Record, entry: dict[str, Any]) -> None:
        r = self.report
        sha = str(entry.get("sha256", ""))
        try:
            digest = bytes.fromhex(sha)
        except ValueError:
            r.fail("records_readable", "corrupt", record.key, f"original hash {sha!r} is not hex")
            return
        self.referenced.add(digest)
        if digest in self.good or digest in self.bad:
            return
        okey = object_key_of(entry)
        where = f"{okey} ({entry.get('filename') or entry.get('media_type')}, {record.identity})"
        r.counts["originals"] += 1
        r.check("originals_present")
        try:
            stored = self.store.get(okey)
        except ObjectMissing:
            self.bad.add(digest)
            r.fail("originals_present", "missing", where, f"named by {record.key} but not in the store")
            return
        self._check_sealed(okey, stored)
        r.check("original_hashes")
        try:
            plain = self.archive.sealer.open(okey, stored)
        except PermanentError as exc:
            self.bad.add(digest)
            kind = "insecure" if exc.code == "unknown_key_id" else "corrupt"
            r.fail("original_hashes" if kind == "corrupt" else "encryption", kind, where, str(exc))
            return
        actual = sha256_hex(plain)
        ok = True
        if actual != sha:
            ok = False
            r.fail(
                "original_hashes", "corrupt", where, f"SHA-256 is {actual}, its address and record say {sha}"
            )
        else:
            sm3 = sm3_hex(plain)
            if entry.get("sm3") != sm3:
                ok = False
                r.fail(
                    "original_hashes", "corrupt", where, f"SM3 is {sm3}, the record says {entry.get('sm3')}"
                )
        r.check("originals_open")
        status, detail = open_check(plain, entry.get("media_type"), entry.get("filename"))
        if status == "failed":
            ok = False
            r.fail("originals_open", "unreadable", where, detail)
        self._check_lock(okey, record.data.get("retain_until"))
        (self.good if ok else self.bad).add(digest)

    # -- status records, orphans -----------------------------------------------------------------
    def _verify_status_records(self) -> None:
        r = self.report
        low = period_of(self.since) if self.since else None
        for period in self.store.children("status/"):
            if low and period < low:
                continue
            for key in self.store.list(f"status/{period}/"):
                r.counts["status_records"] += 1
                r.check("records_readable")
                try:
                    stored = self.store.get(key)
                    self._check_sealed(key, stored)
                    record = self.archive.read_record(key)
                except PermanentError as exc:
                    r.fail("records_readable", "corrupt", key, str(exc))
                    continue
                r.check("no_orphans")
                chash = str(record.data.get("content_hash", ""))
                known = len(chash) == 64 and bytes.fromhex(chash) in self.record_hashes
                if not known and not self.store.exists(str(record.data.get("record", ""))):
                    r.fail(
                        "no_orphans",
                        "orphaned",
                        key,
                        f"status record of {record.data.get('record')}, which is not in the archive",
                    )

    def _scan_orphans(self) -> None:
        r = self.report
        for key in self.store.list("objects/"):
            r.counts["objects_listed"] += 1
            r.check("no_orphans")
            name = key.rsplit("/", 1)[-1]
            try:
                digest = bytes.fromhex(name)
            except ValueError:
                r.fail("no_orphans", "orphaned", key, "not a content address (a stray file in objects/)")
                continue
            if digest in self.referenced:
                continue
            r.fail("no_orphans", "orphaned", key, "no metadata record names this original")
            r.check("original_hashes")
            try:
                plain = self.archive.read(key)
            except PermanentError as exc:
                r.fail("original_hashes", "corrupt", key, str(exc))
                continue
            if sha256_hex(plain) != name:
                r.fail(
                    "original_hashes",
                    "corrupt",
                    key,
                    f"SHA-256 is {sha256_hex(plain)}, its address says {name}",
                )
        for key in self.store.list("invoices/"):
            if not key.endswith(".json"):
                r.fail("no_orphans", "orphaned", key, "a stray file among the records")

    # -- ledger ----------------------------------------------------------------------------------
    def _cross_check(self, records: list[Record]) -> None:
        if self.ledger is None or not records:
            return
        r = self.report
        versions = self.ledger.versions(sorted({rec.content_hash for rec in records}))
        r.counts["ledger_versions"] += len(versions)
        for rec in records:
            r.check("ledger_agreement")
            d = rec.data
            row = versions.get((rec.identity, rec.content_hash))
            if row is None:
                r.fail(
                    "ledger_agreement",
                    "mismatch",
                    rec.key,
                    f"the ledger has no invoice version {rec.identity} with content hash {rec.content_hash}",
                )
                continue
            for name in ("issue_date", "currency", "seller_tax_id", "buyer_tax_id", "number", "kind"):
                if name in d and (d.get(name) or None) != (row.get(name) or None):
                    r.fail(
                        "ledger_agreement",
                        "mismatch",
                        rec.key,
                        f"{name} is {d.get(name)!r}, the ledger says {row.get(name)!r}",
                    )
            if not _same_amount(d.get("gross"), row.get("gross")):
                r.fail(
                    "ledger_agreement",
                    "mismatch",
                    rec.key,
                    f"gross is {d.get('gross')}, the ledger says {row.get('gross')}",
                )
            doc = row.get("document_sha256")
            if doc and doc not in {e.get("sha256") for e in d.get("documents", [])}:
                r.fail(
                    "ledger_agreement",
                    "mismatch",
                    rec.key,
                    f"does not name the original {doc} the ledger received",
                )

    def _ledger_complete(self) -> None:
        assert self.ledger is not None
        r = self.report
        for row in self.ledger.deliveries(self.since):
            r.counts["ledger_deliveries"] += 1
            r.check("ledger_complete")
            identity, chash, idem = row["identity"], row["content_hash"], row["idem_key"]
            period = str(row["issue_date"])[:7]
            expected = record_key_for(period, identity, chash)
            if idem != chash and ":" in idem:
                expected = status_key_for(period, identity, chash, idem.rsplit(":", 1)[1])
                present = self.store.exists(expected)
            else:
                present = bytes.fromhex(chash) in self.record_hashes or self.store.exists(expected)
            if not present:
                r.fail(
                    "ledger_complete",
                    "missing",
                    expected,
                    f"the ledger says {identity} ({chash[:12]}…) was delivered here; the archive lacks it",
                )
                continue
            ref = row.get("remote_ref")
            r.check("ledger_agreement")
            if ref and ref != expected:
                r.fail("ledger_agreement", "mismatch", expected, f"the ledger's archive reference is {ref}")
            receipt = orjson.loads(row["receipt"]) if row.get("receipt") else None
            if receipt and idem == chash and present:
                try:
                    record = self.archive.read_record(expected)
                except PermanentError:
                    continue  # reported by the record pass
                ours = sorted(e.get("sha256") for e in record.data.get("documents", []))
                theirs = sorted(e.get("sha256") for e in receipt.get("documents", []))
                if ours != theirs:
                    r.fail(
                        "ledger_agreement",
                        "mismatch",
                        expected,
                        f"originals {ours} differ from the receipt the ledger recorded ({theirs})",
                    )


# ---------------------------------------------------------------------------------------------------
# Export for auditors: a period's originals and records, a manifest, an Ed25519 signature
# ---------------------------------------------------------------------------------------------------
EXPORT_FORMAT = "invoice-hub.archive.export/1"
MANIFEST, SIGNATURE, PUBLIC_KEY, README = "manifest.json", "manifest.sig", "signing-key.pub", "README.txt"
_BUNDLE_META = {MANIFEST, SIGNATURE, PUBLIC_KEY, README}
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

_BUNDLE_README = """\
Invoice archive export ({period}) from invoice-hub archive {archive!r}.

manifest.json   every invoice version of the period: identity, content hash, metadata, and each
                file of this bundle with its SHA-256 and SM3
manifest.sig    Ed25519 signature of manifest.json (base64)
signing-key.pub the public key (PEM); its fingerprint is {fingerprint}
records/        the archive's metadata record of each invoice version (and status changes)
originals/      the original documents, byte for byte as received

Check it with:  hub archive verify-export {name} --fingerprint "{fingerprint}"
Compare the fingerprint with the one the archive's owner gave you through another channel.
"""


def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def key_fingerprint(public_key: Any) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, in groups of four hex digits."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = sha256_hex(raw)
    return "SHA256:" + " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def load_signing_key(settings: ArchiveSettings, data_dir: Path) -> tuple[Any, Path, bool]:
    """The archive's Ed25519 signing key: ``signing_key_file`` if set (it must exist), else
    ``<data dir>/archive-signing-key.pem``, generated (mode 0600) on first use.
    Returns (private key, path, generated)."""
    from cryptography.hazmat.primitives import serialization

    path = settings.signing_key_file or data_dir / "archive-signing-key.pem"
    generated = False
    if not path.exists():
        if settings.signing_key_file is not None:
            raise PermanentError(f"signing_key_file {path} does not exist", code="no_signing_key")
        key = _ed25519().Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        generated = True
        log.warning(
            "archive_signing_key_generated", path=str(path), fingerprint=key_fingerprint(key.public_key())
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PermanentError(f"cannot read the signing key {path}: {exc}", code="bad_signing_key") from exc
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise PermanentError(f"{path} is not an Ed25519 private key", code="bad_signing_key")
    return key, path, generated


def _safe_name(name: str | None, media_type: str | None) -> str:
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^\w.\-]+", "_", base).strip("._")[:120]
    if base:
        return base
    ext = {
        "application/pdf": ".pdf",
        "application/xml": ".xml",
        "text/xml": ".xml",
        "application/json": ".json",
    }
    return "original" + ext.get((media_type or "").lower(), ".bin")


def _file_entry(data: bytes) -> dict[str, Any]:
    return {"sha256": sha256_hex(data), "sm3": sm3_hex(data), "size": len(data)}


@dataclass
class ExportResult:
    path: Path
    period: str
    invoices: int
    originals: int
    fingerprint: str
    key_path: Path
    key_generated: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "period": self.period,
            "invoices": self.invoices,
            "originals": self.originals,
            "fingerprint": self.fingerprint,
            "signing_key": str(self.key_path),
            "signing_key_generated": self.key_generated,
        }


def period_bounds(period: str) -> tuple[date, date]:
    match = _PERIOD.match(period)
    if not match:
        raise PermanentError(f"period {period!r} is not YYYY-MM", code="bad_period")
    year, month = int(match.group(1)), int(match.group(2))
    first = date(year, month, 1)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def export_period(archive: Archive, period: str, out: Path, *, data_dir: Path) -> ExportResult:
    """Write ``out`` (a zip): the period's records and originals, ``manifest.json``, its signature and
    the public key. Originals are re-hashed on the way out: a corrupt one stops the export (run
    ``hub archive verify``) rather than being handed to an auditor. Written to a temp file and
    renamed, so ``out`` is never half-written."""
    first, last = period_bounds(period)
    key, key_path, generated = load_signing_key(archive.settings, data_dir)
    public = key.public_key()
    fingerprint = key_fingerprint(public)
    from cryptography.hazmat.primitives import serialization

    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    statuses: dict[str, list[str]] = {}
    for skey in archive.store.list(f"status/{period}/"):
        statuses.setdefault(skey.rsplit("/", 1)[-1].split(".")[1], []).append(skey)
    files: dict[str, dict[str, Any]] = {}
    invoices: list[dict[str, Any]] = []
    written: dict[str, str] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:

            def add(path: str, data: bytes) -> None:
                zf.writestr(path, data)
                files[path] = _file_entry(data)

            for rkey in archive.record_keys(first, last):
                raw = archive.read(rkey)
                record = Record(rkey, orjson.loads(raw))
                if not first <= record.issue_date <= last:
                    continue
                rel = rkey.removeprefix("invoices/")
                add(f"records/{rel}", raw)
                originals = []
                for entry in record.data.get("documents", []):
                    sha = entry["sha256"]
                    if sha not in written:
                        data = archive.read(object_key_of(entry))
                        if sha256_hex(data) != sha:
                            raise PermanentError(
                                f"original {object_key_of(entry)} of {record.identity} is corrupt (SHA-256 "
                                f"{sha256_hex(data)}); run `hub archive verify` before exporting",
                                code="corrupt_original",
                            )
                        written[sha] = (
                            f"originals/{sha}/{_safe_name(entry.get('filename'), entry.get('media_type'))}"
                        )
                        add(written[sha], data)
                    originals.append(
                        {
                            "path": written[sha],
                            "sha256": sha,
                            "sm3": entry.get("sm3"),
                            "size": entry.get("size"),
                            "media_type": entry.get("media_type"),
                            "filename": entry.get("filename"),
                        }
                    )
                status_paths = []
                for skey in statuses.get(record.content_hash, []):
                    if skey.startswith(status_prefix_of(rkey)):
                        spath = "records/status/" + skey.removeprefix("status/")
                        add(spath, archive.read(skey))
                        status_paths.append(spath)
                d = record.data
                invoices.append(
                    {
                        "identity": d["identity"],
                        "content_hash": d["content_hash"],
                        "kind": d.get("kind"),
                        "number": d.get("number"),
                        "issue_date": d["issue_date"],
                        "gross": d.get("gross"),
                        "currency": d.get("currency"),
                        "seller_tax_id": d.get("seller_tax_id"),
                        "buyer_tax_id": d.get("buyer_tax_id"),
                        "status": d.get("status"),
                        "amends": d.get("amends"),
                        "received_at": d.get("received_at"),
                        "archived_at": d.get("archived_at"),
                        "record": f"records/{rel}",
                        "status_records": status_paths,
                        "originals": originals,
                    }
                )
            manifest = {
                "format": EXPORT_FORMAT,
                "archive": archive.name,
                "period": period,
                "created_at": _now().isoformat(),
                "signature": {
                    "algorithm": "Ed25519",
                    "file": SIGNATURE,
                    "public_key": PUBLIC_KEY,
                    "fingerprint": fingerprint,
                },
                "hashes": ["sha256", "sm3"],
                "invoices": invoices,
                "files": files,
            }
            body = _dumps(manifest)
            zf.writestr(MANIFEST, body)
            zf.writestr(SIGNATURE, base64.b64encode(key.sign(body)) + b"\n")
            zf.writestr(PUBLIC_KEY, public_pem)
            zf.writestr(
                README,
                _BUNDLE_README.format(
                    period=period, archive=archive.name, fingerprint=fingerprint, name=out.name
                ),
            )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("archive_exported", connector=archive.name, period=period, path=str(out), invoices=len(invoices))
    return ExportResult(out, period, len(invoices), len(written), fingerprint, key_path, generated)


@dataclass
class BundleReport:
    path: str
    fingerprint: str | None = None
    period: str | None = None
    invoices: int = 0
    files: int = 0
    findings: list[dict[str, str]] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def fail(self, item: str, problem: str) -> None:
        self.findings.append({"item": item, "problem": problem})

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "period": self.period,
            "fingerprint": self.fingerprint,
            "invoices": self.invoices,
            "files": self.files,
            "checked": self.checked,
            "failed": self.findings,
        }

    def render(self) -> str:
        lines = [
            f"bundle {self.path}: period {self.period}, {self.invoices} invoice(s), {self.files} file(s)"
        ]
        if self.fingerprint:
            lines.append(f"signing key fingerprint: {self.fingerprint}")
            lines.append("  compare it with the fingerprint the archive's owner gave you out of band")
        lines += [f"  checked: {c}" for c in self.checked]
        lines += [f"  FAILED {f['item']}: {f['problem']}" for f in self.findings]
        lines.append("RESULT: OK" if self.ok else f"RESULT: FAILED — {len(self.findings)} problem(s)")
        return "\n".join(lines)


def _normal_fingerprint(text: str) -> str:
    return re.sub(r"[^0-9a-f]", "", text.lower().removeprefix("sha256:"))


def verify_bundle(path: Path, *, expect_fingerprint: str | None = None) -> BundleReport:
    """Check an export on any machine with the hub installed: the signature over the manifest, every
    file's SHA-256, SM3 and size, no file missing or added, each record's content hash, and that each
    original opens."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    report = BundleReport(str(path))
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.fail(str(path), f"not a readable zip: {exc}")
        return report
    with zf:
        names = set(zf.namelist())
        for meta in (MANIFEST, SIGNATURE, PUBLIC_KEY):
            if meta not in names:
                report.fail(meta, "missing from the bundle")
        if not report.ok:
            return report

        def read(name: str) -> bytes | None:
            try:
                return zf.read(name)
            except (zipfile.BadZipFile, OSError, KeyError) as exc:
                report.fail(name, f"cannot be read from the zip: {exc}")
                return None

        body, sig, pem = read(MANIFEST), read(SIGNATURE), read(PUBLIC_KEY)
        if body is None or sig is None or pem is None:
            return report
        try:
            public = serialization.load_pem_public_key(pem)
            if not isinstance(public, _ed25519().Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            report.fingerprint = key_fingerprint(public)
            public.verify(base64.b64decode(sig.strip(), validate=True), body)
            report.checked.append("the Ed25519 signature over manifest.json verifies with the bundled key")
        except InvalidSignature:
            report.fail(
                MANIFEST, "the signature does not match: manifest.json was changed after it was signed"
            )
        except (ValueError, binascii.Error) as exc:
            report.fail(SIGNATURE, f"signature or public key unreadable: {exc}")
        if expect_fingerprint is not None:
            if report.fingerprint and _normal_fingerprint(expect_fingerprint) == _normal_fingerprint(
                report.fingerprint
            ):
                report.checked.append("the signing key is the one you expected (fingerprint matches)")
            else:
                report.fail(
                    PUBLIC_KEY, f"fingerprint {report.fingerprint} is not the expected {expect_fingerprint}"
                )
        try:
            manifest = orjson.loads(body)
            files: dict[str, dict[str, Any]] = manifest["files"]
            invoices: list[dict[str, Any]] = manifest["invoices"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            report.fail(MANIFEST, f"not an export manifest: {exc}")
            return report
        if manifest.get("format") != EXPORT_FORMAT:
            report.fail(MANIFEST, f"format {manifest.get('format')!r} is not {EXPORT_FORMAT}")
        report.period, report.invoices, report.files = manifest.get("period"), len(invoices), len(files)
        for extra in sorted(n for n in names - set(files) - _BUNDLE_META if not n.endswith("/")):
            report.fail(extra, "is in the zip but not in the manifest")
        contents: dict[str, bytes] = {}
        for name, expected in files.items():
            if name not in names:
                report.fail(name, "listed in the manifest but missing from the zip")
                continue
            data = read(name)
            if data is None:
                continue
            actual = _file_entry(data)
            for algo in ("size", "sha256", "sm3"):
                if actual[algo] != expected.get(algo):
                    report.fail(name, f"{algo} is {actual[algo]}, the manifest says {expected.get(algo)}")
                    break
            else:
                if name.startswith(("records/", "originals/")):
                    contents[name] = data
        report.checked.append(
            "every file's size, SHA-256 and SM3 match the manifest; none missing, none added"
        )
        for inv in invoices:
            rec_path = inv.get("record", "")
            raw = contents.get(rec_path)
            if raw is None:
                continue
            try:
                rec = orjson.loads(raw)
                if (
                    _canonical_hash(rec["canonical"]) != inv["content_hash"]
                    or rec["content_hash"] != inv["content_hash"]
                ):
                    report.fail(rec_path, "the record's canonical invoice does not hash to its content hash")
                if rec["identity"] != inv["identity"]:
                    report.fail(
                        rec_path, f"identity {rec['identity']} differs from the manifest's {inv['identity']}"
                    )
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                report.fail(rec_path, f"not a readable record: {exc}")
            for orig in inv.get("originals", []):
                data = contents.get(orig.get("path", ""))
                if data is None:
                    continue
                status, detail = open_check(data, orig.get("media_type"), orig.get("filename"))
                if status == "failed":
                    report.fail(orig["path"], f"does not open: {detail}")
        report.checked.append("each record's canonical invoice hashes to its content hash")
        report.checked.append("each original opens with the reader for its format")
    return report


# ---------------------------------------------------------------------------------------------------
# CLI: hub archive verify | export | verify-export
# ---------------------------------------------------------------------------------------------------
ARCHIVE_TYPES = ("archive.fs", "archive.s3")


def open_connector(state: Any, name: str | None) -> tuple[Any, Any]:
    """Build the archive connector ``name`` (or the only archive connector) from the hub's config,
    with the same data folder and document loader the hub gives it. Returns (connector, loaded config)."""
    import pydantic

    from hub.config import load_config
    from hub.connectors import ConnectorContext
    from hub.errors import ConfigError
    from hub.plugins import build_plugins

    if state is not None and hasattr(state, "loaded"):
        loaded, plugins = state.loaded, state.plugins
    else:
        loaded = load_config(os.environ.get("HUB_CONFIG", "hub.yaml"))
        plugins = build_plugins(blocked=loaded.config.plugins.disabled, allowed=loaded.config.plugins.allow)
    connectors = loaded.config.connectors
    archives = sorted(n for n, c in connectors.items() if c.type in ARCHIVE_TYPES and c.enabled)
    if name is None:
        if len(archives) != 1:
            found = ", ".join(archives) or "none"
            raise ConfigError(
                f"name the archive with --connector (archive connectors in {loaded.path}: {found})"
            )
        name = archives[0]
    if name not in connectors:
        raise ConfigError(
            f"no connector named {name!r} in {loaded.path} (archive connectors: {', '.join(archives)})"
        )
    conf = connectors[name]
    if conf.type not in ARCHIVE_TYPES:
        raise ConfigError(f"connector {name!r} is {conf.type}, not an archive ({', '.join(ARCHIVE_TYPES)})")
    cls = plugins.connector_type(conf.type)
    try:
        settings = cls.Settings.model_validate(conf.settings)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{loaded.where('connectors', name, 'settings', *(str(p) for p in e['loc']))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(problems) from None
    data_dir = Path(loaded.config.data_dir) / "connectors" / name
    context = ConnectorContext(name=name, data_dir=data_dir)
    return cls(settings, context), loaded


def register_commands(cli: Any) -> None:
    """Add ``hub archive ...``; both archive plugins call this, so it works with either one
    disabled, and the second call finds the group there and adds nothing."""
    import click

    if "archive" in getattr(cli, "commands", {}):
        return

    @cli.group("archive")
    def archive_group() -> None:
        """Check the archive (the four properties) and export a period for auditors."""

    @archive_group.command("verify")
    @click.option("--connector", "connector_name", help="The archive connector (default: the only one).")
    @click.option(
        "--since",
        type=click.DateTime(formats=["%Y-%m-%d"]),
        help="Only invoices issued on or after this date (no orphan scan).",
    )
    @click.option(
        "--no-ledger", is_flag=True, help="Check the archive alone, without the ledger cross-check."
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
    @click.pass_obj
    def verify_cmd(
        state: Any, connector_name: str | None, since: datetime | None, no_ledger: bool, as_json: bool
    ) -> None:
        """Re-read every archived object, recompute SHA-256 and SM3, check each record against the
        ledger and each original opens; report missing, corrupt and orphaned items per property
        (authenticity, integrity, usability, security). Exit status 1 when anything failed."""
        connector, loaded = open_connector(state, connector_name)
        ledger = None
        try:
            if not no_ledger:
                from hub.ledger import Ledger

                ledger = Ledger(loaded.config.ledger, migrate=False)
            view = LedgerView(ledger, connector.name) if ledger is not None else None
            report = Verifier(connector.archive, ledger=view, since=since.date() if since else None).run()
        finally:
            if ledger is not None:
                ledger.close()
            connector.close()
        if as_json:
            click.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(report.render())
        if not report.ok:
            sys.exit(1)

    @archive_group.command("export")
    @click.option("--period", required=True, help="The issue month to export, YYYY-MM.")
    @click.option("--connector", "connector_name", help="The archive connector (default: the only one).")
    @click.option("--json", "as_json", is_flag=True)
    @click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
    @click.pass_obj
    def export_cmd(state: Any, period: str, connector_name: str | None, as_json: bool, out: Path) -> None:
        """Write OUT (a zip) with the period's originals, records, a manifest of hashes (SHA-256 and
        SM3) and an Ed25519 signature of the manifest, and print the signing key's fingerprint."""
        connector, _ = open_connector(state, connector_name)
        try:
            result = export_period(connector.archive, period, out, data_dir=connector.context.data_dir)
        finally:
            connector.close()
        if as_json:
            click.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
            return
        click.echo(
            f"exported {result.invoices} invoice version(s) and {result.originals} original(s) of {period}"
            f" to {out}"
        )
        if result.key_generated:
            click.echo(f"generated a new signing key at {result.key_path} (keep it; back it up)")
        click.echo(f"signing key fingerprint: {result.fingerprint}")
        click.echo("give this fingerprint to the auditor through another channel than the bundle")

    @archive_group.command("verify-export")
    @click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--fingerprint", help="The signing key fingerprint you were given; fail when it differs.")
    @click.option("--json", "as_json", is_flag=True)
    def verify_export_cmd(bundle: Path, fingerprint: str | None, as_json: bool) -> None:
        """Check an export bundle (needs nothing but the hub): signature, every file's hashes, nothing
        missing or added, records hash to their content hash, originals open. Exit status 1 on failure."""
        report = verify_bundle(bundle, expect_fingerprint=fingerprint)
        if as_json:
            click.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(report.render())
        if not report.ok:
            sys.exit(1)
