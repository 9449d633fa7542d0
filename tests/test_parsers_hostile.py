"""Hostile and broken input to the document parsers: each is refused with a reason a person understands.

Documents go through the plugin system (``build_plugins().parsers``, first claimer reads), as in intake.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from invoice_hub_plugins.parse_zip import ZipParser
from pypdf import PdfWriter

from hub.errors import InvoiceInvalid, ParseError
from hub.models import Document
from hub.plugins import build_plugins
from hub.validation import ensure_valid

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent.parent / "shared" / "reference" / "invoices"
CN = HERE / "fixtures" / "cn"


@pytest.fixture(scope="module")
def parsers() -> list:
    return build_plugins().parsers


def claimer(parsers: list, document: Document):
    parser = next((p for p in parsers if p.claims(document)), None)
    assert parser is not None, f"no parser claims {document.filename}"
    return parser


def refused(
    parsers: list, content: bytes, filename: str, media_type: str = "application/octet-stream"
) -> str:
    """Parse through the first claiming parser and return the ParseError's reason."""
    document = Document(content=content, filename=filename, media_type=media_type)
    with pytest.raises(ParseError) as caught:
        claimer(parsers, document).parse(document)
    return str(caught.value)


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# XML attacks
# ---------------------------------------------------------------------------------------------------
UBL_OPEN = (
    '<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" '
    'xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">'
)
XXE = {
    "ubl": f'<?xml version="1.0"?><!DOCTYPE Invoice [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    f"{UBL_OPEN}<cbc:ID>&xxe;</cbc:ID></Invoice>",
    "cii": '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    '<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100">'
    "&xxe;</rsm:CrossIndustryInvoice>",
    "cn.digital.xml": '<?xml version="1.0"?><!DOCTYPE EInvoice [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/x">]>'
    "<EInvoice><Header><EIid>&xxe;</EIid></Header></EInvoice>",
    "xml.unknown": '<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/shadow">]><foo>&xxe;</foo>',
}
LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    + "]>"
)


@pytest.mark.parametrize("expected_parser", sorted(XXE))
def test_external_entity_is_refused(parsers: list, expected_parser: str) -> None:
    content = XXE[expected_parser].encode()
    document = Document(content=content, filename="attack.xml")
    assert claimer(parsers, document).name == expected_parser
    reason = refused(parsers, content, "attack.xml")
    assert "forbidden XML construct (entity 'xxe'" in reason
    assert "root:" not in reason  # nothing of /etc/passwd leaked into the reason


@pytest.mark.parametrize(
    "body",
    [
        f"{UBL_OPEN}<cbc:ID>&lol9;</cbc:ID></Invoice>",
        "<EInvoice><Header><EIid>&lol9;</EIid></Header></EInvoice>",
    ],
)
def test_entity_expansion_bomb_is_refused(parsers: list, body: str) -> None:
    reason = refused(parsers, (LAUGHS + body).encode(), "laughs.xml")
    assert reason.startswith("forbidden XML construct (entity 'lol'")


def test_a_plain_doctype_without_entities_is_allowed(parsers: list) -> None:
    content = (CN / "toll-2026.xml").read_bytes().replace(b"<EInvoice>", b"<!DOCTYPE EInvoice><EInvoice>", 1)
    document = Document(content=content, filename="toll.xml")
    assert claimer(parsers, document).parse(document).invoices[0].number == "26532000000055449123"


def test_valid_xml_that_is_not_an_invoice(parsers: list) -> None:
    content = b'<?xml version="1.0"?>\n<!-- settings --><config version="2"><db host="x"/></config>'
    document = Document(content=content, filename="config.xml", media_type="application/xml")
    assert claimer(parsers, document).name == "xml.unknown"
    assert refused(parsers, content, "config.xml").startswith("XML is not an invoice (root element config)")


def test_html_is_not_taken_for_xml(parsers: list) -> None:
    for document in (
        Document(
            content=b"<html><body>Invoice attached</body></html>",
            filename="body.html",
            media_type="text/html",
        ),
        Document(content=b"<!DOCTYPE html><html><p>hi</p></html>"),
    ):
        claimed = {p.name for p in parsers if p.claims(document)}
        assert not claimed & {"xml.unknown", "ubl", "cii", "cn.digital.xml"}


def test_malformed_xml_names_line_and_column(parsers: list) -> None:
    content = (CN / "toll-2026.xml").read_bytes().replace(b"</SellerName>", b"</SellerNam>", 1)
    reason = refused(parsers, content, "toll.xml")
    assert reason.startswith("not well-formed XML in toll.xml") and "line" in reason


def test_ubl_missing_totals_says_what_is_missing(parsers: list) -> None:
    content = f"{UBL_OPEN}<cbc:ID>A1</cbc:ID><cbc:IssueDate>2026-01-02</cbc:IssueDate></Invoice>".encode()
    assert "DocumentCurrencyCode" in refused(parsers, content, "thin.xml")


def test_amount_in_exponent_notation_is_refused(parsers: list) -> None:
    content = (REFERENCE / "peppol-base-example.xml").read_bytes()
    content = content.replace(
        b'"EUR">1656.25</cbc:TaxInclusiveAmount>', b'"EUR">1E+999999</cbc:TaxInclusiveAmount>'
    )
    reason = refused(parsers, content, "exp.xml")
    assert "TaxInclusiveAmount is '1E+999999', which is not a number" in reason


def test_oversized_xml_is_refused_before_parsing(parsers: list) -> None:
    content = b"<notes>" + b" " * (50 * 1024 * 1024) + b"</notes>"
    assert "an invoice XML may have" in refused(parsers, content, "huge.xml", "application/xml")


def test_utf16_xml_reads_the_same(parsers: list) -> None:
    utf8 = (CN / "toll-2026.xml").read_text(encoding="utf-8")
    utf16 = utf8.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    document = Document(content=utf16, filename="toll16.xml")
    assert claimer(parsers, document).name == "cn.digital.xml"
    assert claimer(parsers, document).parse(document).invoices[0].number == "26532000000055449123"


# ---------------------------------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------------------------------
def test_truncated_pdf_is_refused_as_damaged(parsers: list) -> None:
    pdf = (REFERENCE / "facturx-invoice_EN16931.pdf").read_bytes()
    reason = refused(parsers, pdf[: len(pdf) // 2], "cut.pdf", "application/pdf")
    assert "damaged or truncated" in reason and "cut.pdf" in reason


def _blank_pdf(attachment: tuple[str, bytes] | None = None) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    if attachment is not None:
        writer.add_attachment(*attachment)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_pdf_without_invoice_data(parsers: list) -> None:
    document = Document(content=_blank_pdf(), filename="scan.pdf", media_type="application/pdf")
    assert claimer(parsers, document).name == "facturx.pdf"
    with pytest.raises(ParseError) as caught:
        claimer(parsers, document).parse(document)
    assert "no structured invoice data" in str(caught.value)
    assert caught.value.code == "no_structured_data"


def test_pdf_with_other_attachments_but_no_invoice_xml_lists_them(parsers: list) -> None:
    reason = refused(parsers, _blank_pdf(("terms.txt", b"30 days net")), "offer.pdf", "application/pdf")
    assert reason.startswith("no structured invoice data") and "embedded files: terms.txt" in reason


def test_pdf_whose_embedded_xml_is_not_an_invoice(parsers: list) -> None:
    pdf = _blank_pdf(("notes.xml", b"<notes><n>hello</n></notes>"))
    reason = refused(parsers, pdf, "notes.pdf", "application/pdf")
    assert "no structured invoice data" in reason and "root element notes" in reason


def test_pdf_with_hostile_embedded_xml(parsers: list) -> None:
    pdf = _blank_pdf(("factur-x.xml", XXE["cii"].encode()))
    assert "forbidden XML construct (entity 'xxe'" in refused(parsers, pdf, "evil.pdf", "application/pdf")


def test_not_a_pdf_at_all(parsers: list) -> None:
    reason = refused(parsers, b"GIF89a....", "fake.pdf", "application/pdf")
    assert "does not start like one" in reason


# ---------------------------------------------------------------------------------------------------
# ZIP
# ---------------------------------------------------------------------------------------------------
def test_zip_bomb_by_compression_ratio(parsers: list) -> None:
    bomb = zip_of({"invoice.xml": b"\0" * (20 * 1024 * 1024)})
    assert len(bomb) < 100_000
    reason = refused(parsers, bomb, "bomb.zip", "application/zip")
    assert reason.startswith("zip limit max_ratio exceeded") and "bomb.zip!invoice.xml" in reason


def test_zip_total_size_limit_is_configurable() -> None:
    parser = ZipParser(max_total_bytes=10_000)
    archive = zip_of({f"{i}.xml": bytes(range(256)) * 20 for i in range(3)}, zipfile.ZIP_STORED)
    with pytest.raises(ParseError, match="zip limit max_total_bytes exceeded"):
        parser.parse(Document(content=archive, filename="big.zip"))
    assert len(ZipParser().parse(Document(content=archive, filename="big.zip")).children) == 3


def _nested(levels: int, payload: bytes) -> bytes:
    data = zip_of({"invoice.xml": payload})
    for level in range(2, levels + 1):
        data = zip_of({f"level{level - 1}.zip": data})
    return data


def test_nested_zips_up_to_the_depth_limit_are_read(parsers: list) -> None:
    payload = (REFERENCE / "peppol-base-example.xml").read_bytes()
    document = Document(content=_nested(3, payload), filename="outer.zip", source="mail")
    result = claimer(parsers, document).parse(document)
    (child,) = result.children
    assert child.filename == "level2.zip" and child.parent_sha256 == document.sha256
    assert child.source == "mail" and child.origin == "outer.zip!level2.zip"
    # The hub parses children in their own right, down to the invoice:
    while child.filename.endswith(".zip"):
        (child,) = claimer(parsers, child).parse(child).children
    assert child.filename == "invoice.xml" and child.content == payload
    assert child.origin == "outer.zip!level2.zip!level1.zip!invoice.xml"
    assert claimer(parsers, child).parse(child).invoices[0].number == "SNIPPET1"


def test_zips_nested_too_deep(parsers: list) -> None:
    reason = refused(parsers, _nested(4, b"<x/>"), "deep.zip", "application/zip")
    assert reason.startswith("zip limit max_depth exceeded") and "(limit 3)" in reason


def test_too_many_members(parsers: list) -> None:
    archive = zip_of({f"f{i}.txt": b"x" for i in range(1001)})
    reason = refused(parsers, archive, "many.zip", "application/zip")
    assert reason.startswith("zip limit max_members exceeded") and "1001" in reason


def test_corrupt_zip(parsers: list) -> None:
    archive = zip_of({"a.xml": b"<a/>" * 1000})
    reason = refused(parsers, archive[:-30], "broken.zip", "application/zip")
    assert "broken.zip is not a readable ZIP archive" in reason


def test_empty_zip(parsers: list) -> None:
    assert "empty ZIP archive" in refused(parsers, zip_of({}), "empty.zip", "application/zip")


def _raw_name_zip(raw_names: list[bytes]) -> bytes:
    """A ZIP whose member names are the given raw bytes, without the UTF-8 flag (as Windows tools write)."""
    placeholders = [f"N{i:0{len(raw) - 1}d}".encode() for i, raw in enumerate(raw_names)]
    assert all(len(p) == len(r) for p, r in zip(placeholders, raw_names, strict=True))
    data = zip_of({p.decode(): f"content {i}".encode() for i, p in enumerate(placeholders)})
    for placeholder, raw in zip(placeholders, raw_names, strict=True):
        assert data.count(placeholder) == 2  # local header and central directory
        data = data.replace(placeholder, raw)
    return data


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("发票-2026年3月.xml", "gbk"),
        ("增值税电子普通发票.pdf", "gb18030"),
        ("䶮氏商行发票.ofd", "gb18030"),  # U+4DAE is outside GBK: a 4-byte GB18030 sequence
        ("發票明細.xml", "big5"),
        ("電子發票（普通發票）.pdf", "big5"),
        ("发票.xml", "utf-8"),  # UTF-8 bytes, but the flag not set
    ],
)
def test_member_names_in_chinese_encodings_without_utf8_flag(parsers: list, name: str, encoding: str) -> None:
    archive = _raw_name_zip([name.encode(encoding)])
    document = Document(content=archive, filename="附件.zip", media_type="application/zip")
    (child,) = claimer(parsers, document).parse(document).children
    assert child.filename == name
    assert child.content == b"content 0"
    assert child.origin == f"附件.zip!{name}"


def test_info_zip_unicode_path_field_wins_over_raw_bytes(parsers: list) -> None:
    raw = "发票.xml".encode("gbk")
    utf8 = "發票（正本）.xml".encode()
    placeholder = b"N" * len(raw)
    info = zipfile.ZipInfo(placeholder.decode())
    info.extra = struct.pack("<HHBI", 0x7075, 5 + len(utf8), 1, zlib.crc32(raw)) + utf8
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, b"<a/>")
    archive_bytes = buffer.getvalue().replace(placeholder, raw)
    (child,) = (
        claimer(parsers, Document(content=archive_bytes)).parse(Document(content=archive_bytes)).children
    )
    assert child.filename == "發票（正本）.xml"


def test_utf8_flagged_names_and_folders_keep_the_base_name(parsers: list) -> None:
    archive = zip_of(
        {"2026/03/发票 A.xml": b"<a/>", "__MACOSX/2026/._x": b"junk", "2026/": b"", "2026/.DS_Store": b"\0"}
    )
    document = Document(content=archive, filename="mail.zip")
    (child,) = claimer(parsers, document).parse(document).children
    assert (child.filename, child.media_type, child.origin) == (
        "发票 A.xml",
        "application/xml",
        "mail.zip!2026/03/发票 A.xml",
    )


def test_rfc2047_encoded_member_name(parsers: list) -> None:
    archive = zip_of({"=?UTF-8?B?5Y+R56WoLnhtbA==?=": b"<a/>"})
    (child,) = (
        claimer(parsers, Document(content=archive, filename="z.zip"))
        .parse(Document(content=archive, filename="z.zip"))
        .children
    )
    assert child.filename == "发票.xml"


def test_encrypted_member(parsers: list) -> None:
    archive = bytearray(zip_of({"secret.xml": b"<a/>"}, zipfile.ZIP_STORED))
    # set the "encrypted" flag bit in the local header and the central directory entry
    local = archive.find(b"PK\x03\x04")
    central = archive.find(b"PK\x01\x02")
    archive[local + 6] |= 1
    archive[central + 8] |= 1
    assert "encrypted" in refused(parsers, bytes(archive), "locked.zip", "application/zip")


# ---------------------------------------------------------------------------------------------------
# Numbers that do not add up: parse fine, validation says where
# ---------------------------------------------------------------------------------------------------
def test_ubl_invoice_whose_totals_do_not_add_up(parsers: list) -> None:
    content = (REFERENCE / "peppol-base-example.xml").read_bytes()
    content = content.replace(
        b'"EUR">1656.25</cbc:TaxInclusiveAmount>', b'"EUR">1756.25</cbc:TaxInclusiveAmount>'
    )
    document = Document(content=content, filename="bad-total.xml")
    invoice = claimer(parsers, document).parse(document).invoices[0]
    with pytest.raises(InvoiceInvalid) as caught:
        ensure_valid(invoice)
    paths = {p.path for p in caught.value.problems if p.severity == "error"}
    assert "totals.gross" in paths and all(p.startswith("totals.") for p in paths)


def test_cn_invoice_whose_tax_does_not_add_up(parsers: list) -> None:
    content = (
        (CN / "special-goods-2025.xml").read_bytes().replace(b"<TotalTaxAm>2040.00<", b"<TotalTaxAm>2400.00<")
    )
    document = Document(content=content, filename="bad-tax.xml")
    invoice = claimer(parsers, document).parse(document).invoices[0]
    with pytest.raises(InvoiceInvalid) as caught:
        ensure_valid(invoice)
    paths = {p.path for p in caught.value.problems if p.severity == "error"}
    assert {"totals.tax", "totals.gross"} <= paths


# ---------------------------------------------------------------------------------------------------
# Who claims what
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "media_type", "expected"),
    [
        (REFERENCE / "peppol-base-example.xml", "application/xml", "ubl"),
        (REFERENCE / "peppol-base-creditnote-correction.xml", "text/xml", "ubl"),
        (REFERENCE / "zugferd-2p1-EN16931-Einfach.xml", "application/octet-stream", "cii"),
        (REFERENCE / "facturx-cii-en16931.xml", "application/xml", "cii"),
        (REFERENCE / "facturx-invoice_EN16931.pdf", "application/octet-stream", "facturx.pdf"),
        (CN / "toll-2026.xml", "application/xml", "cn.digital.xml"),
        (HERE / "fixtures" / "ofd" / "legacy-custom-tags.ofd", "application/octet-stream", "ofd"),
    ],
)
def test_the_right_parser_claims_each_document_type(
    parsers: list, path: Path, media_type: str, expected: str
) -> None:
    document = Document(content=path.read_bytes(), filename=path.name, media_type=media_type)
    assert claimer(parsers, document).name == expected
    unnamed = Document(content=path.read_bytes(), media_type="application/octet-stream")
    assert claimer(parsers, unnamed).name == expected  # by the first bytes alone


def test_ofd_is_claimed_before_the_zip_parser_and_a_plain_zip_by_the_zip_parser(parsers: list) -> None:
    names = [p.name for p in parsers]
    assert names.index("ofd") < names.index("zip")
    plain = zip_of({"a.xml": b"<a/>"})
    assert claimer(parsers, Document(content=plain)).name == "zip"
