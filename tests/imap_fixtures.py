"""Pytest fixtures for a real Dovecot IMAP server, and builders for the mails tests put in it.

Use them by importing the fixtures into a test module (``tests/conftest.py`` belongs to the core)::

    from tests.imap_fixtures import dovecot, dovecot_server  # noqa: F401

* ``dovecot_server`` (session): one Dovecot on a free loopback port (scripts/install-dovecot.sh runs
  first when it is not installed). In CI (``CI=true``) a server that cannot start fails the test;
  locally the test is skipped with how to install it.
* ``dovecot`` (function): a fresh user with an empty mailbox on that server (``tests.dovecot.Mailbox``:
  ``append()``, ``counts()``, ``messages()``).
* ``dovecot_tls_server`` / ``dovecot_tls``: the same with IMAPS and STARTTLS (a self-signed
  certificate; ``Mailbox.ca_file`` is the certificate to trust).

The builders make mails as real clients send them: ``mail()`` takes ``Attachment`` objects whose names
are encoded the way ``Attachment.encoding`` says (RFC 2231 UTF-8, RFC 2047 GBK/GB2312/Big5, raw 8-bit).
``json_invoice(n)``, ``ubl_invoice(n)`` and ``cii_invoice(n)`` give distinct valid invoices.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tempfile
import urllib.parse
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.dovecot import DovecotServer, DovecotUnavailable, Mailbox

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference" / "invoices"
FACTURX_PDF = REFERENCE / "facturx-invoice_EN16931.pdf"
HOW = "run scripts/install-dovecot.sh (as root) to install Dovecot"


def _unavailable(reason: str) -> None:
    message = f"Dovecot IMAP server unavailable: {reason}; {HOW}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def running_dovecot(tls: bool = False) -> Iterator[DovecotServer]:
    """A Dovecot in a fresh temporary folder (pytest's own are mode 0700, which the ``dovecot`` user
    cannot enter), stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="hub-dovecot-"))
    try:
        try:
            server = DovecotServer.start(root, tls=tls, install=os.geteuid() == 0)
        except (DovecotUnavailable, OSError) as exc:
            _unavailable(str(exc))
            raise  # unreachable: _unavailable fails or skips
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[DovecotServer]:
    with running_dovecot(tls=False) as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_tls_server() -> Iterator[DovecotServer]:
    with running_dovecot(tls=True) as server:
        yield server


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> Mailbox:
    """A fresh, empty mailbox (its own user) on the session's Dovecot."""
    return dovecot_server.add_user()


@pytest.fixture
def dovecot_tls(dovecot_tls_server: DovecotServer) -> Mailbox:
    return dovecot_tls_server.add_user()


# ---------------------------------------------------------------------------------------------------
# Invoices
# ---------------------------------------------------------------------------------------------------
_JSON_TEMPLATE = REPO / "examples" / "inbox" / "01-25322000000000000001.json"


def json_invoice(n: int) -> dict[str, Any]:
    """A valid 数电 special invoice (the hub's JSON form) with number 2532200000000 + n (20 digits)."""
    data: dict[str, Any] = json.loads(_JSON_TEMPLATE.read_text(encoding="utf-8"))
    data["number"] = f"2532{n:016d}"
    return data


def json_bytes(n: int) -> bytes:
    return json.dumps(json_invoice(n), ensure_ascii=False, indent=2).encode("utf-8")


def ubl_invoice(n: int) -> bytes:
    """The PEPPOL BIS base example with its own invoice number ``UBL-<n>``."""
    text = (REFERENCE / "peppol-base-example.xml").read_text(encoding="utf-8")
    return text.replace("<cbc:ID>Snippet1</cbc:ID>", f"<cbc:ID>UBL-{n}</cbc:ID>", 1).encode("utf-8")


def cii_invoice(n: int) -> bytes:
    """The ZUGFeRD 2.1 EN 16931 example with its own invoice number ``CII-<n>``."""
    text = (REFERENCE / "zugferd-2p1-EN16931-Einfach.xml").read_text(encoding="utf-8")
    return text.replace("<ram:ID>471102</ram:ID>", f"<ram:ID>CII-{n}</ram:ID>", 1).encode("utf-8")


def wrong_totals_json(n: int) -> bytes:
    """A JSON invoice whose totals do not add up (a dead letter with the reason)."""
    data = json_invoice(n)
    data["totals"]["gross"] = "99999.00"
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------------
# Mails
# ---------------------------------------------------------------------------------------------------
Encoding = Literal[
    "ascii", "rfc2231-utf8", "rfc2047-utf8", "rfc2047-gbk", "rfc2047-gb2312", "rfc2047-big5", "raw-gbk"
]


@dataclass
class Attachment:
    filename: str
    content: bytes
    media_type: str = "application/octet-stream"
    encoding: Encoding = "rfc2231-utf8"
    disposition: str = "attachment"
    content_id: str | None = None

    def name_params(self) -> tuple[bytes, bytes]:
        """(Content-Type name parameter, Content-Disposition filename parameter) as header bytes."""
        name = self.filename
        if self.encoding == "ascii":
            return f'; name="{name}"'.encode(), f'; filename="{name}"'.encode()
        if self.encoding == "rfc2231-utf8":
            quoted = urllib.parse.quote(name.encode("utf-8"), safe="")
            return f"; name*=utf-8''{quoted}".encode(), f"; filename*=utf-8''{quoted}".encode()
        if self.encoding == "raw-gbk":
            raw = name.encode("gbk")
            return b'; name="' + raw + b'"', b'; filename="' + raw + b'"'
        charset = self.encoding.split("-", 1)[1]
        # "gb2312" as Chinese clients write it: the label says GB2312, the bytes are GBK (GB18030).
        data = name.encode({"gb2312": "gb18030", "gbk": "gbk", "big5": "big5", "utf8": "utf-8"}[charset])
        word = f"=?{charset if charset != 'utf8' else 'utf-8'}?B?{base64.b64encode(data).decode()}?="
        return f'; name="{word}"'.encode(), f'; filename="{word}"'.encode()


def mail(
    attachments: list[Attachment],
    *,
    subject: str = "Invoice",
    message_id: str | None = None,
    sender: str = "billing@supplier.example",
    text: str = "Please find our invoice attached.",
    html: bool = False,
) -> bytes:
    """A multipart/mixed mail with a text body and the attachments, as raw CRLF bytes."""
    boundary = f"=_b{uuid.uuid4().hex}"
    message_id = message_id or f"<{uuid.uuid4().hex}@supplier.example>"
    subject_word = f"=?utf-8?B?{base64.b64encode(subject.encode()).decode()}?="
    out = [
        f"From: {sender}".encode(),
        b"To: invoices@company.example",
        f"Subject: {subject_word}".encode(),
        f"Message-ID: {message_id}".encode(),
        b"Date: Mon, 23 Nov 2026 09:00:00 +0800",
        b"MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode(),
        b"",
        b"This is a multi-part message in MIME format.",
        f"--{boundary}".encode(),
        b'Content-Type: text/plain; charset="utf-8"',
        b"Content-Transfer-Encoding: base64",
        b"",
        *_b64_lines(text.encode()),
    ]
    if html:
        out += [
            f"--{boundary}".encode(),
            b'Content-Type: text/html; charset="utf-8"',
            b"",
            f"<p>{text}</p>".encode(),
        ]
    for att in attachments:
        name_param, filename_param = att.name_params()
        out += [
            f"--{boundary}".encode(),
            f"Content-Type: {att.media_type}".encode() + name_param,
            f"Content-Disposition: {att.disposition}".encode() + filename_param,
            b"Content-Transfer-Encoding: base64",
        ]
        if att.content_id:
            out.append(f"Content-ID: <{att.content_id}>".encode())
        out += [b"", *_b64_lines(att.content)]
    out += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(out)


def _b64_lines(data: bytes) -> list[bytes]:
    encoded = base64.b64encode(data)
    return [encoded[i : i + 76] for i in range(0, len(encoded), 76)] or [b""]


def malformed_mail() -> bytes:
    """A multipart mail whose boundary never occurs: its parts cannot be found."""
    return (
        b"From: broken@supplier.example\r\nSubject: broken\r\nMessage-ID: <"
        + uuid.uuid4().hex.encode()
        + b'@broken>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="NEVER-THERE"\r\n\r\n'
        b"--SOMETHING-ELSE\r\nContent-Type: application/json\r\n\r\n{}\r\n--SOMETHING-ELSE--\r\n"
    )


def text_only_mail(subject: str = "Question about your invoice") -> bytes:
    return mail([], subject=subject, text="Could you send the invoice again? Thanks.", html=True)


# ---------------------------------------------------------------------------------------------------
# A mixed mailbox (the "200 mails, a mix of every format, duplicates, broken and hostile")
# ---------------------------------------------------------------------------------------------------
FIXTURES = REPO / "tests" / "fixtures"
_CN_XML = FIXTURES / "cn" / "special-goods-2025.xml"
_CN_NUMBER = "25322000000045671234"
OFD_WITH_DATA = FIXTURES / "ofd" / "digital-attachment.ofd"
OFD_NUMBER = "26322000000012345678"  # the invoice embedded in digital-attachment.ofd
OFD_WITHOUT_DATA = FIXTURES / "ofd" / "no-invoice-data.ofd"
FACTURX_NUMBER = "F20260023"

XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE Invoice [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"><ID>&xxe;</ID></Invoice>\n'
)
NOT_AN_INVOICE_XML = b'<?xml version="1.0"?>\n<note><to>Finance</to><body>Lunch on Friday</body></note>\n'


def cn_xml(n: int) -> tuple[bytes, str]:
    """The 数电 special-invoice XML fixture with its own 20-digit number."""
    number = f"2532200{n:013d}"
    return _CN_XML.read_bytes().replace(_CN_NUMBER.encode(), number.encode()), number


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb() -> bytes:
    """200 MB of zeros in one member, about 200 kB compressed (ratio ~1000:1)."""
    buffer = io.BytesIO()
    chunk = b"\0" * (1 << 20)
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("invoice.xml", "w", force_zip64=True) as member,
    ):
        for _ in range(200):
            member.write(chunk)
    return buffer.getvalue()


def blank_pdf() -> bytes:
    """A valid PDF with one empty page and no invoice data in it."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@dataclass
class MailMix:
    mails: list[bytes]
    #: invoice numbers that must reach every sink exactly once
    numbers: set[str]
    #: mails that must end in ``processed`` (at least one invoice) and in ``failed``
    processed: int
    failed: int
    #: dead letters a single clean run makes (one per broken mail or attachment)
    dead_letters: int
    #: sha256 of every document that must be in the dead-letter queue (the mail or the attachment)
    dead_documents: set[str]


def mixed_mails(n: int = 200, *, oversized_limit: int = 2_000_000) -> MailMix:
    """``n`` mails cycling through 20 kinds: JSON, UBL, CII, 数电 XML, OFD, ZIP, Factur-X PDF, GBK and
    Big5 names, inline images, duplicates; and broken or hostile ones (no attachment, malformed MIME,
    totals that do not add up, XXE, zip bomb, PDF without data, XML that is no invoice, truncated PDF,
    an oversized mail). Mails larger than ``oversized_limit`` must be dead-lettered as too large."""
    facturx = FACTURX_PDF.read_bytes()
    bomb = zip_bomb()
    blank = blank_pdf()
    mails: list[bytes] = []
    numbers: set[str] = set()
    processed = failed = dead = 0
    dead_documents: set[str] = set()
    counter = iter(range(1000, 10**6))

    def invoice_json() -> tuple[bytes, str]:
        k = next(counter)
        return json_bytes(k), f"2532{k:016d}"

    for i in range(n):
        kind = i % 20
        ok = True
        if kind == 0:
            data, number = invoice_json()
            raw = mail([Attachment(f"invoice-{number}.json", data, "application/json")])
            numbers.add(number)
        elif kind == 1:
            (a, na), (b, nb) = invoice_json(), invoice_json()
            raw = mail([Attachment("a.json", a, "application/json"), Attachment("b.json", b)])
            numbers |= {na, nb}
        elif kind == 2:
            k = next(counter)
            raw = mail([Attachment(f"ubl-{k}.xml", ubl_invoice(k), "application/xml")], subject="UBL")
            numbers.add(f"UBL-{k}")
        elif kind == 3:
            k = next(counter)
            raw = mail([Attachment(f"cii-{k}.xml", cii_invoice(k), "text/xml")], subject="ZUGFeRD")
            numbers.add(f"CII-{k}")
        elif kind == 4:
            if i < 20:
                raw = mail([Attachment("电子发票.ofd", OFD_WITH_DATA.read_bytes(), encoding="rfc2047-gbk")])
                numbers.add(OFD_NUMBER)
            else:
                data, number = cn_xml(next(counter))
                raw = mail([Attachment(f"{number}.xml", data, "text/xml", encoding="rfc2047-gb2312")])
                numbers.add(number)
        elif kind == 5:
            (a, na) = invoice_json()
            b, nb = cn_xml(next(counter))
            raw = mail([Attachment("发票.zip", zip_of({"发票/a.json": a, "b.xml": b}), "application/zip")])
            numbers |= {na, nb}
        elif kind == 6:
            raw = mails[-1]  # the same mail again
        elif kind == 7:
            data, number = invoice_json()
            raw = mail([Attachment(f"发票镕-{number}.json", data, encoding="rfc2047-gb2312")], subject="发票")
            numbers.add(number)
        elif kind == 8:
            data, number = invoice_json()
            raw = mail([Attachment(f"電子發票-{number}.json", data, encoding="rfc2047-big5")], subject="發票")
            numbers.add(number)
        elif kind == 9:
            data, number = invoice_json()
            logo = Attachment(
                "logo.png", b"\x89PNG\r\n\x1a\n", "image/png", disposition="inline", content_id="l"
            )
            raw = mail([logo, Attachment("inv.json", data, "application/json")], html=True)
            numbers.add(number)
        elif kind == 18:
            data, number = invoice_json()
            broken = Attachment("scan.pdf", facturx[:20_000], "application/pdf")
            raw = mail([Attachment("inv.json", data, "application/json"), broken])
            numbers.add(number)
            dead += 1
            dead_documents.add(sha256(broken.content).hexdigest())
        elif kind == 19:
            raw = mail([Attachment("facturx.pdf", facturx, "application/pdf")], subject="Factur-X")
            numbers.add(FACTURX_NUMBER)
        else:
            ok = False
            dead += 1
            bad: bytes | None = None  # the broken attachment (None: the mail itself is the dead letter)
            if kind == 10:
                raw = text_only_mail(f"question {i}")
            elif kind == 11:
                raw = malformed_mail()
            elif kind == 12:
                bad = wrong_totals_json(next(counter))
                raw = mail([Attachment("totals.json", bad, "application/json")])
            elif kind == 13:
                bad = XXE
                raw = mail([Attachment("xxe.xml", bad, "application/xml")], subject="hostile XML")
            elif kind == 14:
                bad = bomb
                raw = mail([Attachment("invoices.zip", bad, "application/zip")], subject="zip bomb")
            elif kind == 15:
                attachment = (
                    Attachment("scan.pdf", blank, "application/pdf")
                    if i % 40 < 20
                    else Attachment("scan.ofd", OFD_WITHOUT_DATA.read_bytes(), "application/ofd")
                )
                bad = attachment.content
                raw = mail([attachment], subject="scanned invoice")
            elif kind == 16:
                bad = NOT_AN_INVOICE_XML
                raw = mail([Attachment("note.xml", bad, "application/xml")])
            elif i < 20:  # 17, first round
                filler = Attachment("huge.json", json_bytes(next(counter)) + b" " * oversized_limit)
                raw = mail([filler], subject="too large")
            else:
                bad = facturx[: len(facturx) // 2]
                raw = mail([Attachment("cut.pdf", bad, "application/pdf")])
            dead_documents.add(sha256(bad if bad is not None else raw).hexdigest())
        mails.append(raw)
        if ok:
            processed += 1
        else:
            failed += 1
    return MailMix(mails, numbers, processed, failed, dead, dead_documents)
