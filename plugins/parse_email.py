"""E-mail (``.eml``, ``message/rfc822``): every attachment becomes a child ``Document``.

The mail itself carries no invoice data; its attachments do, and each one is parsed by its own
parser (UBL, CII/Factur-X, 数电 XML, OFD, ZIP, JSON...). The parser skips what is part of the mail
rather than attached to it: the text and HTML bodies, inline images (``Content-Disposition: inline``
or referenced by ``Content-ID``) and S/MIME or PGP signatures. A mail with nothing else in it raises
``ParseError`` ("mail has no invoice attachment"), so the raw mail becomes a dead letter that a
person can look at. A forwarded mail (``message/rfc822`` part) is handed back as a child ``.eml`` and
read the same way.

Attachment names arrive in every encoding mail clients use: RFC 2047 encoded words, RFC 2231
parameters (with continuations), and raw 8-bit bytes. The standard library's ``email`` package
(``policy=email.policy.default``) reads the structure and bodies, but it decodes a name with the
charset the header declares and replaces what does not fit, and Chinese clients routinely declare
``gb2312`` while writing GBK or GB18030 characters (镕, 堃, 喆...). Names are therefore decoded here
from the raw header: the GB family (gb2312, gbk, cp936, euc-cn) as GB18030, its superset; Big5 as
Big5-HKSCS, then CP950; undeclared 8-bit bytes as UTF-8, then GB18030, then Big5.

Malformed MIME (a multipart without its boundary, a truncated mail whose closing boundary is
missing, an attachment whose base64 cannot be decoded, bytes that are not a mail at all) raises
``ParseError`` with the reason, never a crash: the raw mail is kept as a dead letter.

A source that refuses to read a mail it got (the ``email.imap`` source's ``max_message_size``) still
hands the raw mail in, with the media type parameter ``x-hub-oversized="<size>/<limit>"``; this
parser turns that into a dead letter with a reason a person understands.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.message
import email.policy
import email.utils
import mimetypes
import posixpath
import re
from collections.abc import Iterator
from typing import ClassVar

import structlog

from hub import hookimpl
from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document

log = structlog.get_logger()

MEDIA_TYPE = "message/rfc822"
#: Media type parameter a source sets on a mail it did not read (``"<size>/<limit>"`` in bytes).
OVERSIZED_PARAM = "x-hub-oversized"

_MEDIA_TYPES = {
    ".xml": "application/xml",
    ".json": "application/json",
    ".pdf": "application/pdf",
    ".ofd": "application/ofd",
    ".zip": "application/zip",
    ".eml": MEDIA_TYPE,
}
#: Part types that say nothing about the content: the file name's extension decides instead.
_GENERIC_TYPES = {
    "application/octet-stream",
    "application/x-download",
    "application/force-download",
    "application/download",
    "application/unknown",
    "binary/octet-stream",
    "application/x-octet-stream",
    "text/plain",
}
_SIGNATURE_TYPES = {
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "application/pgp-signature",
    "application/pgp-keys",
}
_BODY_TYPES = {"text/plain", "text/html", "text/enriched", "text/rtf"}
_REPORT_TYPES = {"message/delivery-status", "message/disposition-notification", "text/rfc822-headers"}
#: Structural defects after which the parts of a mail cannot be trusted.
_FATAL_DEFECTS = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
)
_GB_FAMILY = {
    "gb2312",
    "gbk",
    "cp936",
    "ms936",
    "euc-cn",
    "euccn",
    "x-gbk",
    "gb18030",
    "csgb2312",
    "x-euc-cn",
}
_BIG5_FAMILY = {"big5", "big5-hkscs", "big5hkscs", "cp950", "ms950", "x-big5", "csbig5"}
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:", re.M)


# ---------------------------------------------------------------------------------------------------
# Decoding names and header text
# ---------------------------------------------------------------------------------------------------
def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _gb2312_only(text: str) -> bool:
    try:
        text.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Text from ``data`` in the declared ``charset``, tolerating what mail clients really send."""
    declared = (charset or "").strip().strip('"').lower().replace("_", "-")
    if declared in _GB_FAMILY:
        text = _strict(data, "gb18030")
    elif declared in _BIG5_FAMILY:
        text = _strict(data, "big5hkscs") or _strict(data, "cp950")
    elif declared and declared not in ("us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        text = _strict(data, declared)
    else:
        text = None
    if text is not None:
        return text
    # Undeclared (or wrongly declared) 8-bit: UTF-8; GBK when every character is a common
    # simplified one (GB2312); Big5 (Taiwan, Hong Kong); GB18030; else replacement characters.
    text = _strict(data, "utf-8")
    if text is None:
        gbk = _strict(data, "gbk")
        text = gbk if gbk is not None and _gb2312_only(gbk) else None
    return text or _strict(data, "big5hkscs") or _strict(data, "gb18030") or data.decode("utf-8", "replace")


def _latin(raw: str) -> str:
    """A raw header value as the parser stored it (8-bit bytes as surrogate escapes) as latin-1 text,
    one character per byte, so the compat32 helpers pass the bytes through untouched."""
    return raw.encode("utf-8", "surrogateescape").decode("latin-1")


def decode_header_text(latin: str) -> str:
    """A raw header value in ``_latin`` form (encoded words, 8-bit bytes or ASCII) as text."""
    try:
        chunks = email.header.decode_header(latin)
    except (email.errors.HeaderParseError, ValueError, UnicodeError):
        return decode_bytes(latin.encode("latin-1", "replace"), None)
    out: list[str] = []
    for value, charset in chunks:
        data = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
        out.append(decode_bytes(data, charset))
    return re.sub(r"\s+", " ", "".join(out)).strip()


def _legacy_headers(part: email.message.Message) -> email.message.Message:
    """The part's headers, undecoded, in a compat32 message (its ``get_param`` keeps RFC 2231 raw)."""
    legacy = email.message.Message()
    for name, value in part.raw_items():
        legacy[name] = _latin(value)
    return legacy


def attachment_filename(part: email.message.Message) -> str | None:
    """The part's file name (``Content-Disposition`` filename, else ``Content-Type`` name), decoded."""
    legacy = _legacy_headers(part)
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        value = legacy.get_param(param, header=header)
        if value is None or value == "":
            continue
        if isinstance(value, tuple):  # RFC 2231: (charset, language, percent-decoded latin-1 text)
            charset, _language, text = value
            name = decode_bytes(text.encode("latin-1", "replace"), charset)
        else:
            name = decode_header_text(email.utils.unquote(value))
        name = name.replace("\\", "/").strip()
        name = posixpath.basename(name) or name
        name = "".join(ch for ch in name if ch >= " " and ch != "\x7f").strip()
        if name:
            return name
    return None


# ---------------------------------------------------------------------------------------------------
# Walking the mail
# ---------------------------------------------------------------------------------------------------
def _disposition(part: email.message.Message) -> str:
    value = part.get("content-disposition")
    if value is None:
        return ""
    return str(value).split(";", 1)[0].strip().lower()


def _leaves(part: email.message.Message) -> Iterator[email.message.Message]:
    """Every non-container part, depth first; an attached or forwarded mail counts as one part."""
    if part.get_content_type() == MEDIA_TYPE:
        yield part
        return
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list):
            for child in payload:
                yield from _leaves(child)
        return
    yield part


def _media_type(part: email.message.Message, filename: str | None) -> str:
    declared = part.get_content_type()
    ext = posixpath.splitext(filename or "")[1].lower()
    if declared in _GENERIC_TYPES and ext:
        return _MEDIA_TYPES.get(ext) or mimetypes.guess_type(filename or "")[0] or declared
    return declared


def _skip_reason(part: email.message.Message, filename: str | None) -> str | None:
    """Why a part belongs to the mail rather than being attached to it (None: it is an attachment)."""
    ctype = part.get_content_type()
    disposition = _disposition(part)
    if ctype in _SIGNATURE_TYPES:
        return "signature"
    if ctype in _REPORT_TYPES:
        return "delivery report"
    if (
        ctype.startswith("image/")
        and disposition != "attachment"
        and (disposition == "inline" or part.get("content-id") is not None or filename is None)
    ):
        return "inline image"
    if ctype in _BODY_TYPES and filename is None and disposition != "attachment":
        return "body"
    if ctype.startswith("multipart/"):
        return "empty container"
    return None


def _payload(part: email.message.Message, label: str) -> bytes:
    if part.get_content_type() == MEDIA_TYPE:
        inner = part.get_payload()
        if isinstance(inner, list) and inner:
            return inner[0].as_bytes(policy=email.policy.default.clone(linesep="\r\n"))
        raise ParseError(f"malformed MIME: the attached mail {label} is empty")
    before = len(part.defects)
    data = part.get_payload(decode=True)
    bad = [
        d
        for d in part.defects[before:]
        if isinstance(d, email.errors.InvalidBase64LengthDefect | email.errors.InvalidBase64CharactersDefect)
    ]
    if bad:
        raise ParseError(
            f"malformed MIME: the base64 of attachment {label} cannot be decoded ({type(bad[0]).__name__})"
        )
    if not isinstance(data, bytes):
        raise ParseError(f"malformed MIME: attachment {label} has no content")
    return data


def _summary(msg: email.message.Message) -> str:
    fields = []
    for name in ("subject", "from"):
        raw = next((v for k, v in msg.raw_items() if k.lower() == name), None)
        fields.append(f"{name} {decode_header_text(_latin(raw))!r}" if raw is not None else f"no {name}")
    return ", ".join(fields)


def _oversized(document: Document) -> str | None:
    for param in document.media_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == OVERSIZED_PARAM:
            return value.strip().strip('"')
    return None


class EmailParser(Parser):
    """An e-mail: hands back its attachments as child documents."""

    name: ClassVar[str] = "email"
    priority: ClassVar[int] = 70

    def claims(self, document: Document) -> bool:
        media = document.media_type.split(";")[0].strip().lower()
        return media == MEDIA_TYPE or (document.filename or "").lower().endswith(".eml")

    def parse(self, document: Document) -> ParseResult:
        label = document.filename or f"mail {document.sha256[:12]}"
        oversized = _oversized(document)
        if oversized is not None:
            size, _, limit = oversized.partition("/")
            raise ParseError(
                f"mail {label} is {size} bytes, more than the source's max_message_size of {limit} bytes; "
                "it was not read (the raw mail is kept with this dead letter)",
                filename=document.filename,
                size=size,
                limit=limit,
            )
        content = document.content
        head = content[:4096].lstrip(b"\r\n\t ")
        if not _HEADER_LINE.match(head):
            raise ParseError(
                f"{label} is not an e-mail: it does not start with a header line "
                f"(first bytes {content[:16]!r})",
                filename=document.filename,
            )
        try:
            msg = email.message_from_bytes(content, policy=email.policy.default)
            return self._read(document, msg, label)
        except ParseError:
            raise
        except (email.errors.MessageError, LookupError, ValueError, TypeError, IndexError) as exc:
            raise ParseError(
                f"malformed MIME in {label}: {type(exc).__name__}: {exc}", filename=document.filename
            ) from exc

    def _read(self, document: Document, msg: email.message.EmailMessage, label: str) -> ParseResult:
        fatal = [
            (where, d)
            for where, part in [("mail", msg), *[(p.get_content_type(), p) for p in msg.walk()]]
            for d in part.defects
            if isinstance(d, _FATAL_DEFECTS)
        ]
        if fatal:
            where, defect = fatal[0]
            reason = {
                email.errors.NoBoundaryInMultipartDefect: "a multipart part declares no boundary",
                email.errors.StartBoundaryNotFoundDefect: "the multipart boundary never occurs in the body",
                email.errors.CloseBoundaryNotFoundDefect: "the closing boundary is missing (truncated mail?)",
                email.errors.MultipartInvariantViolationDefect: "a multipart part has no sub-parts",
            }[type(defect)]
            raise ParseError(
                f"malformed MIME in {label} ({_summary(msg)}): {reason} ({where})",
                filename=document.filename,
                defect=type(defect).__name__,
            )
        children: list[Document] = []
        skipped: list[str] = []
        prefix = document.origin or label
        for index, part in enumerate(_leaves(msg), start=1):
            filename = attachment_filename(part)
            reason = _skip_reason(part, filename)
            if reason is not None:
                skipped.append(f"{part.get_content_type()} ({reason})")
                continue
            media_type = _media_type(part, filename)
            if filename is None:
                ext = {v: k for k, v in _MEDIA_TYPES.items()}.get(media_type) or mimetypes.guess_extension(
                    media_type
                )
                filename = f"part-{index}{ext or '.bin'}"
            data = _payload(part, repr(filename))
            children.append(
                Document(
                    content=data,
                    media_type=media_type,
                    filename=filename,
                    source=document.source,
                    received_at=document.received_at,
                    origin=f"{prefix}!{filename}",
                    parent_sha256=document.sha256,
                )
            )
        if not children:
            raise ParseError(
                f"mail has no invoice attachment ({_summary(msg)}; parts: {', '.join(skipped) or 'none'})",
                filename=document.filename,
            )
        log.debug("email_parsed", mail=label, attachments=len(children), skipped=len(skipped))
        return ParseResult(children=children)


@hookimpl
def hub_register_parsers() -> list[Parser]:
    return [EmailParser()]
