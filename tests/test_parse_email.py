"""The e-mail parser: a mail in, its attachments out as child documents; broken mail → ParseError.

Tests go through the parser hook (what the hub registers). ``tests/fixtures/mail`` holds mails as
Chinese and Taiwanese clients write them (Foxmail: ``gb2312`` label on GBK bytes and a raw GBK body;
Big5 names in RFC 2231 continuations, an inline logo in multipart/related and an S/MIME signature),
and a truncated one. The end-to-end path through Dovecot is in ``test_email_imap.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invoice_hub_plugins import parse_email

from hub import Document, ParseError
from tests.imap_fixtures import FACTURX_PDF, Attachment, json_bytes, mail, malformed_mail, text_only_mail

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mail"


@pytest.fixture
def parser():  # type: ignore[no-untyped-def]
    (found,) = [p for p in parse_email.hub_register_parsers() if p.name == "email"]
    return found


def eml(content: bytes, name: str = "m.eml", media_type: str = "message/rfc822") -> Document:
    return Document(
        content=content, media_type=media_type, filename=name, source="mailbox", origin="imap:INBOX:7:x"
    )


def test_claims_mail_by_type_or_name(parser) -> None:  # type: ignore[no-untyped-def]
    assert parser.claims(eml(b"From: a\r\n\r\nx"))
    assert parser.claims(Document(content=b"From: a\r\n\r\nx", filename="saved.EML"))
    assert not parser.claims(Document(content=b"{}", media_type="application/json", filename="a.json"))


@pytest.mark.parametrize(
    ("filename", "encoding"),
    [
        ("发票镕-2025.json", "rfc2047-gb2312"),  # labelled gb2312, GBK-only character 镕
        ("增值税电子普通发票.json", "rfc2047-gbk"),
        ("電子發票.json", "rfc2047-big5"),
        ("增值税发票.json", "raw-gbk"),
        ("Rechnung März № 7.json", "rfc2231-utf8"),
        ("インボイス.json", "rfc2047-utf8"),
        ("invoice.json", "ascii"),
    ],
)
def test_attachment_names_are_decoded(parser, filename: str, encoding: str) -> None:  # type: ignore[no-untyped-def]
    content = json_bytes(1)
    doc = eml(mail([Attachment(filename, content, encoding=encoding)]))
    result = parser.parse(doc)
    assert result.invoices == []
    (child,) = result.children
    assert child.filename == filename
    assert child.content == content
    assert child.media_type == "application/json"  # octet-stream on the part, .json in the name
    assert child.parent_sha256 == doc.sha256
    assert child.source == "mailbox" and child.received_at == doc.received_at
    assert child.origin == f"imap:INBOX:7:x!{filename}"


def test_foxmail_gbk_mail(parser) -> None:  # type: ignore[no-untyped-def]
    result = parser.parse(eml((FIXTURES / "foxmail-gbk.eml").read_bytes()))
    (child,) = result.children
    assert child.filename == "浙江镕达发票25320000000000090001.json"
    assert json.loads(child.content)["number"] == "25320000000000090001"


def test_big5_rfc2231_names_skip_inline_logo_and_signature(parser) -> None:  # type: ignore[no-untyped-def]
    result = parser.parse(eml((FIXTURES / "big5-rfc2231-related.eml").read_bytes()))
    assert [c.filename for c in result.children] == ["電子發票二月份.json"]


def test_several_attachments_keep_their_order_and_types(parser) -> None:  # type: ignore[no-untyped-def]
    pdf = FACTURX_PDF.read_bytes()
    result = parser.parse(
        eml(
            mail(
                [
                    Attachment("a.pdf", pdf, "application/pdf"),
                    Attachment("b.xml", b"<Invoice/>", "application/octet-stream"),
                    Attachment("c.zip", b"PK\x03\x04", "application/zip"),
                ]
            )
        )
    )
    assert [(c.filename, c.media_type) for c in result.children] == [
        ("a.pdf", "application/pdf"),
        ("b.xml", "application/xml"),
        ("c.zip", "application/zip"),
    ]
    assert result.children[0].content == pdf


def test_forwarded_mail_is_a_child_mail(parser) -> None:  # type: ignore[no-untyped-def]
    inner = mail([Attachment("inner.json", json_bytes(2))], subject="original")
    outer = (
        b"From: colleague@company.example\r\nSubject: Fwd: original\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="F"\r\n\r\n--F\r\nContent-Type: text/plain\r\n\r\nFYI\r\n'
        b"--F\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--F--\r\n"
    )
    (child,) = parser.parse(eml(outer)).children
    assert child.media_type == "message/rfc822"
    (grandchild,) = parser.parse(child).children
    assert grandchild.filename == "inner.json"
    assert grandchild.content == json_bytes(2)


def test_single_part_mail_is_its_own_attachment(parser) -> None:  # type: ignore[no-untyped-def]
    content = json_bytes(3)
    raw = (
        b"From: a@b\r\nSubject: bare\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/json; name="bare.json"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(content)
    )
    (child,) = parser.parse(eml(raw)).children
    assert (child.filename, child.content) == ("bare.json", content)


def test_mail_without_attachment_is_refused_with_subject_and_sender(parser) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError) as info:
        parser.parse(eml(text_only_mail("Rückfrage 发票")))
    message = str(info.value)
    assert message.startswith("mail has no invoice attachment")
    assert "Rückfrage 发票" in message and "billing@supplier.example" in message
    assert "text/plain (body)" in message


def test_inline_images_alone_are_no_invoice(parser) -> None:  # type: ignore[no-untyped-def]
    raw = mail([Attachment("logo.png", b"\x89PNG", "image/png", disposition="inline", content_id="l")])
    with pytest.raises(ParseError, match=r"no invoice attachment.*inline image"):
        parser.parse(eml(raw))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (malformed_mail(), r"malformed MIME .*boundary never occurs"),
        ((FIXTURES / "truncated.eml").read_bytes(), r"malformed MIME .*closing boundary is missing"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "is not an e-mail"),
        (b"", "is not an e-mail"),
        (
            b"From: a@b\r\nSubject: bad base64\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=Q\r\n\r\n--Q\r\nContent-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename=x.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjcK!!!!@@@\r\nA\r\n--Q--\r\n",
            "base64 of attachment 'x.pdf' cannot be decoded",
        ),
    ],
)
def test_malformed_mail_is_a_parse_error(parser, content: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError, match=reason):
        parser.parse(eml(content))


def test_oversized_mail_marked_by_the_source(parser) -> None:  # type: ignore[no-untyped-def]
    doc = eml(
        mail([Attachment("a.json", json_bytes(4))]),
        media_type='message/rfc822; x-hub-oversized="52428800/26214400"',
    )
    with pytest.raises(
        ParseError, match="52428800 bytes, more than the source's max_message_size of 26214400"
    ):
        parser.parse(doc)


_SEEDS = [
    (FIXTURES / "foxmail-gbk.eml").read_bytes(),
    (FIXTURES / "big5-rfc2231-related.eml").read_bytes(),
    mail([Attachment("发票.json", json_bytes(5), encoding="rfc2047-gb2312"), Attachment("b.xml", b"<x/>")]),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 200), st.binary(max_size=40)), max_size=6),
)
def test_damaged_mail_is_a_parse_error_or_attachments_never_a_crash(
    seed: bytes, cuts: list[tuple[int, int, bytes]]
) -> None:
    """Any damage (bytes cut out, replaced, inserted) gives attachments or ParseError, never another error."""
    (parser,) = [p for p in parse_email.hub_register_parsers() if p.name == "email"]
    data = bytearray(seed)
    for at, length, insert in cuts:
        at %= len(data) + 1
        data[at : at + length] = insert
    try:
        result = parser.parse(eml(bytes(data)))
    except ParseError as exc:
        assert str(exc)
    else:
        assert result.children and all(isinstance(c.content, bytes) for c in result.children)
