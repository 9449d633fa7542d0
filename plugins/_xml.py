"""Shared XML reading for the document parsers: hardened parsing, namespace-agnostic lookups, numbers.

Every invoice XML the hub reads goes through :func:`parse_xml`. It parses with ``defusedxml`` (expat
underneath) so that entity declarations of any kind — external entities (XXE) and the nested
internal entities of an expansion ("billion laughs") bomb — are refused before they are expanded,
and a plain ``<!DOCTYPE>`` without entities is still accepted. Refusals and syntax errors become
``hub.errors.ParseError`` with a reason a person can act on.

The formats we read use namespaces inconsistently (UBL prefixes, CII ``ram:``, Chinese XML often
none at all, or a vendor's own), so lookups compare *local* names only: ``child(el, "A", "B")``
walks ``A/B`` whatever the namespaces. The tree is parsed once per document; each lookup walks
children of one element, never the whole document.

Also here: :func:`sniff_root` (the root element's local name and namespace from the first bytes,
for cheap ``claims()``), and :class:`UnknownXmlParser`, the low-priority parser that takes any XML
no specific parser claimed and says why it is not an invoice.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import ClassVar

import defusedxml.ElementTree as SafeET
from defusedxml.common import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden

from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document, nfkc

Element = ET.Element

#: Encodings expat decodes itself; anything else is decoded by Python first.
_EXPAT_ENCODINGS = {
    "utf-8",
    "utf8",
    "utf-16",
    "utf16",
    "us-ascii",
    "ascii",
    "iso-8859-1",
    "latin-1",
    "latin1",
}
_DECLARATION = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._\-]+)["']""")
_XML_MEDIA_TYPES = ("application/xml", "text/xml")
#: No invoice XML comes near this; anything larger is refused before parsing.
MAX_XML_BYTES = 50 * 1024 * 1024
#: Amounts as invoices write them: no exponents (``1E+999999`` would expand to a million digits).
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,30}(?:\.\d{0,20})?|\.\d{1,20})")


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------
def _where(name: str | None) -> str:
    return f" in {name}" if name else ""


def parse_xml(data: bytes, *, name: str | None = None) -> Element:
    """Parse ``data`` safely and return the root element, or raise ``ParseError`` saying why not.

    ``name`` (a filename or a path inside a container) is used in error messages.
    """
    if not data.strip():
        raise ParseError(f"empty XML document{_where(name)}", filename=name)
    if len(data) > MAX_XML_BYTES:
        raise ParseError(
            f"XML document{_where(name)} is {len(data)} bytes; an invoice XML may have {MAX_XML_BYTES}",
            filename=name,
        )
    data = _expat_compatible(data, name)
    try:
        return SafeET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except EntitiesForbidden as exc:
        target = f" referring to {exc.sysid!r}" if exc.sysid else ""
        raise ParseError(
            f"forbidden XML construct (entity {exc.name!r} declared{target}){_where(name)}: "
            "entity declarations are refused to defend against external-entity and expansion attacks",
            filename=name,
        ) from exc
    except ExternalReferenceForbidden as exc:
        raise ParseError(
            f"forbidden XML construct (entity reference to external {exc.sysid!r}){_where(name)}",
            filename=name,
        ) from exc
    except DefusedXmlException as exc:
        raise ParseError(f"forbidden XML construct ({exc}){_where(name)}", filename=name) from exc
    except ET.ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise ParseError(
            f"not well-formed XML{_where(name)}: {exc.msg if hasattr(exc, 'msg') else exc} "
            f"(line {line}, column {column})",
            filename=name,
        ) from exc


def _expat_compatible(data: bytes, name: str | None) -> bytes:
    """Chinese XML is sometimes declared GBK/GB18030/Big5, which expat cannot decode: re-encode it."""
    match = _DECLARATION.match(data[:200])
    if not match:
        return data
    encoding = match.group(1).decode("ascii").lower()
    if encoding in _EXPAT_ENCODINGS:
        return data
    try:
        text = data.decode(encoding)
    except LookupError as exc:
        raise ParseError(
            f"XML{_where(name)} declares an unknown encoding {encoding!r}", filename=name
        ) from exc
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"XML{_where(name)} is not valid {encoding} (byte {exc.start}): {exc.reason}", filename=name
        ) from exc
    start, end = match.span(1)
    return (text[:start] + "UTF-8" + text[end:]).encode("utf-8")


# ---------------------------------------------------------------------------------------------------
# Namespace-agnostic lookups
# ---------------------------------------------------------------------------------------------------
def local(tag: object) -> str:
    """``{urn:x}Invoice`` → ``Invoice``; comments and processing instructions → ``""``."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1].split(":")[-1]


def namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def children(element: Element | None, name: str) -> Iterator[Element]:
    """Direct children of ``element`` whose local name is ``name``."""
    if element is None:
        return
    for item in element:
        if local(item.tag) == name:
            yield item


def child(element: Element | None, *path: str) -> Element | None:
    """The first element at ``path`` (local names) below ``element``, or None."""
    for name in path:
        if element is None:
            return None
        element = next(children(element, name), None)
    return element


def descendants(element: Element | None, name: str) -> Iterator[Element]:
    """Every element below ``element`` (any depth, document order) whose local name is ``name``."""
    if element is None:
        return
    for item in element.iter():
        if item is not element and local(item.tag) == name:
            yield item


def clean(value: str | None) -> str | None:
    """Trimmed text, or None when empty."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def text(element: Element | None, *path: str) -> str | None:
    """Trimmed text at ``path`` below ``element``, or None when missing or empty."""
    found = child(element, *path) if path else element
    return None if found is None else clean("".join(found.itertext()))


def split_allowance_charges(items: list[dict[str, str | None]]) -> tuple[Decimal, Decimal]:
    """(allowances, charges) of a line's EN 16931 allowance/charge list (ChargeIndicator true = charge)."""
    allowances = charges = Decimal(0)
    for item in items:
        amount = to_decimal(item.get("amount"), "line allowance/charge amount") or Decimal(0)
        if (item.get("charge") or "").strip().lower() == "true":
            charges += amount
        else:
            allowances += amount
    return allowances, charges


def to_decimal(value: str | None, where: str) -> Decimal | None:
    """A Decimal from document text (``1,234.50``, full-width digits, ``¥``); ParseError naming ``where``."""
    if value is None:
        return None
    cleaned = nfkc(value).strip().replace(",", "").replace("¥", "").replace(" ", "")
    if not cleaned:
        return None
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        raise ParseError(f"{where} is {value!r}, which is not a number")
    try:
        return Decimal(cleaned)
    except InvalidOperation:  # the pattern above should have caught it; keep the reason the same
        raise ParseError(f"{where} is {value!r}, which is not a number") from None


def decimal(element: Element | None, *path: str, where: str | None = None) -> Decimal | None:
    """The Decimal at ``path`` below ``element`` (None when missing); ParseError when not a number."""
    return to_decimal(text(element, *path), where or "/".join(path))


def require(value: str | Decimal | None, what: str, fmt: str) -> str | Decimal:
    """``value`` or a ParseError saying the ``fmt`` document lacks ``what``."""
    if value is None:
        raise ParseError(f"{fmt} has no {what}")
    return value


# ---------------------------------------------------------------------------------------------------
# Sniffing (for claims(): cheap, from the first bytes)
# ---------------------------------------------------------------------------------------------------
_PROLOGUE = re.compile(rb"<\?.*?\?>|<!--.*?-->|<!DOCTYPE(?:[^\[>]|\[.*?\])*>", re.S)
_START_TAG = re.compile(rb"<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)([^>]*)>?", re.S)
_XMLNS = re.compile(rb"""xmlns(?::([\w.\-]+))?\s*=\s*["']([^"']*)["']""")
SNIFF_BYTES = 65536


def looks_like_xml(document: Document) -> bool:
    head = document.content[:512]
    if head.startswith((b"\xff\xfe<\x00", b"\xfe\xff\x00<")):  # UTF-16 with a byte order mark
        return True
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return True
    media = document.media_type.split(";")[0].strip().lower()
    return media in _XML_MEDIA_TYPES or media.endswith("+xml")


def sniff_root(content: bytes) -> tuple[str, str] | None:
    """``(local name, namespace)`` of the root element, read from the first bytes, or None.

    Skips the BOM, XML declaration, comments (ZUGFeRD samples open with a 5 kB licence comment),
    processing instructions and the DOCTYPE. UTF-16 documents are decoded first.
    """
    head = content[:SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        head = head.decode("utf-16", errors="ignore").encode("utf-8", errors="ignore")
    head = head.lstrip(b"\xef\xbb\xbf")
    position = 0
    while True:
        while position < len(head) and head[position : position + 1].isspace():
            position += 1
        prologue = _PROLOGUE.match(head, position)
        if prologue is None:
            break
        position = prologue.end()
    match = _START_TAG.match(head, position)
    if match is None:
        return None
    prefix = (match.group(1) or b"")[:-1]
    name = match.group(2).decode("ascii", errors="replace")
    ns = ""
    for declared, uri in _XMLNS.findall(match.group(3) or b""):
        if declared == prefix:
            ns = uri.decode("utf-8", errors="replace")
    return name, ns


# ---------------------------------------------------------------------------------------------------
# The fallback for XML nobody claimed
# ---------------------------------------------------------------------------------------------------
class UnknownXmlParser(Parser):
    """Takes any XML that no invoice parser claimed, so the dead letter says what it was.

    It still parses with the hardened parser: an XXE or entity bomb whose root element a specific
    parser did not recognise is reported as the attack it is, not as "not an invoice".
    """

    name: ClassVar[str] = "xml.unknown"
    priority: ClassVar[int] = -100

    def claims(self, document: Document) -> bool:
        """XML by media type, by name or by its declaration; never HTML (an e-mail body is not a dead
        letter "not well-formed XML")."""
        media = document.media_type.split(";")[0].strip().lower()
        name = (document.filename or "").lower()
        if media in ("text/html", "application/xhtml+xml") or name.endswith((".html", ".htm")):
            return False
        if media in _XML_MEDIA_TYPES or media.endswith("+xml") or name.endswith(".xml"):
            return True
        head = document.content[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
        return head.startswith(b"<?xml") or document.content.startswith((b"\xff\xfe<\x00", b"\xfe\xff\x00<"))

    def parse(self, document: Document) -> ParseResult:
        root = parse_xml(document.content, name=document.filename)
        ns = namespace(root.tag)
        described = f"{local(root.tag)}" + (f" in namespace {ns}" if ns else "")
        raise ParseError(
            f"XML is not an invoice (root element {described}); the hub reads UBL 2.1 Invoice/CreditNote, "
            "UN/CEFACT CII (Factur-X, ZUGFeRD) and Chinese 数电 EInvoice XML",
            filename=document.filename,
        )
