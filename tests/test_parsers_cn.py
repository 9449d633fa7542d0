"""Chinese e-invoices: 数电 XML (``tests/fixtures/cn``) and OFD containers (``tests/fixtures/ofd``).

The fixtures are realistic samples written for these tests: valid unified social credit codes (check
characters from ``stdnum.cn.uscc.calc_check_digit``) and 20-digit numbers that start with the issue
year. Parsing goes through the plugin system, as the hub's intake does.
"""

from __future__ import annotations

import io
import zipfile
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from hub.canonical import content_hash
from hub.errors import ParseError
from hub.models import Document, Invoice, InvoiceKind, TaxCategory
from hub.plugins import build_plugins
from hub.validation import validate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CN = FIXTURES / "cn"
OFD = FIXTURES / "ofd"


@pytest.fixture(scope="module")
def parsers() -> list:
    return build_plugins().parsers


def parse(parsers: list, content: bytes, filename: str, expect_parser: str | None = None) -> Invoice:
    document = Document(content=content, filename=filename)
    parser = next(p for p in parsers if p.claims(document))
    if expect_parser is not None:
        assert parser.name == expect_parser
    (invoice,) = parser.parse(document).invoices
    return invoice


def refused(parsers: list, content: bytes, filename: str) -> str:
    document = Document(content=content, filename=filename)
    parser = next(p for p in parsers if p.claims(document))
    with pytest.raises(ParseError) as caught:
        parser.parse(document)
    return str(caught.value)


def fixture(parsers: list, name: str) -> Invoice:
    folder = CN if name.endswith(".xml") else OFD
    return parse(parsers, (folder / name).read_bytes(), name, "cn.digital.xml" if folder is CN else "ofd")


ALL = [p.name for p in sorted(CN.glob("*.xml"))] + [
    p.name for p in sorted(OFD.glob("*.ofd")) if p.name != "no-invoice-data.ofd"
]


@pytest.mark.parametrize("name", ALL)
def test_every_chinese_fixture_is_valid(parsers: list, name: str) -> None:
    problems = validate(fixture(parsers, name))
    assert problems == [], [str(p) for p in problems]


# ---------------------------------------------------------------------------------------------------
# 数电 XML
# ---------------------------------------------------------------------------------------------------
def test_special_invoice(parsers: list) -> None:
    invoice = fixture(parsers, "special-goods-2025.xml")
    assert invoice.kind is InvoiceKind.CN_DIGITAL_SPECIAL
    assert invoice.identity == "CN:25322000000045671234"
    assert invoice.issue_date == date(2025, 12, 29)  # from "2025-12-29 13:02:50"
    assert (invoice.seller.name, invoice.seller.tax_id) == ("南京云帆软件科技有限公司", "91320100MA1MX4T3Q3")
    assert invoice.seller.bank_account == "4301018809100123456"
    assert invoice.buyer.tax_id == "91320594MA1WN8K2PR"
    assert (invoice.totals.net, invoice.totals.tax, invoice.totals.gross) == (
        Decimal("20000.00"),
        Decimal("2040.00"),
        Decimal("22040.00"),
    )
    first, second = invoice.lines
    assert (first.name, first.spec, first.unit) == ("*计算机外部设备*工业显示器", "XD-2417", "台")
    assert (first.quantity, first.tax_rate, first.tax_code) == (
        Decimal(10),
        Decimal("0.13"),
        "1090511030000000000",
    )
    assert second.tax_rate == Decimal("0.06")  # written "6%"
    assert invoice.extra["einvoice_tag"] == "SWEI3200" and invoice.extra["drawer"] == "王晓燕"


def test_ordinary_invoice_with_mixed_rate_forms_exempt_line_and_8_decimals(parsers: list) -> None:
    invoice = fixture(parsers, "ordinary-service-2026.xml")
    assert invoice.kind is InvoiceKind.CN_DIGITAL_ORDINARY
    assert invoice.issue_date == date(2026, 2, 28)  # a date without time
    rates = [(line.tax_rate, line.tax_category) for line in invoice.lines]
    assert rates == [
        (Decimal("0.06"), TaxCategory.STANDARD),  # "0.06"
        (Decimal("0.06"), TaxCategory.STANDARD),  # "6%"
        (None, TaxCategory.EXEMPT),  # 免税
    ]
    assert invoice.lines[1].unit_price == Decimal("333.33333333")


def test_stars_for_the_tax_of_an_exempt_line_mean_no_amount(parsers: list) -> None:
    content = (CN / "ordinary-service-2026.xml").read_text(encoding="utf-8")
    starred = content.replace(
        "<TaxRate>免税</TaxRate>\n      <ComTaxAm>0.00</ComTaxAm>",
        "<TaxRate>免税</TaxRate><ComTaxAm>***</ComTaxAm>",
    )
    assert starred != content
    invoice = parse(parsers, starred.encode(), "starred.xml")
    assert invoice.lines[2].tax_amount is None and invoice.lines[2].tax_category is TaxCategory.EXEMPT
    assert [p for p in validate(invoice) if p.severity == "error"] == []


def test_toll_invoice_number_is_the_invoice_number_not_the_plate(parsers: list) -> None:
    invoice = fixture(parsers, "toll-2026.xml")
    assert invoice.number == "26532000000055449123"
    assert invoice.kind is InvoiceKind.CN_DIGITAL_ORDINARY  # no LabelCode on toll invoices
    assert "label_code" not in invoice.extra
    assert invoice.extra["specific"]["PlateNumber"] == "云ADA0381"


def test_toll_invoice_number_when_plate_and_number_are_swapped_in_order(parsers: list) -> None:
    content = (CN / "toll-2026.xml").read_bytes()
    plate = "<PlateNumber>云ADA0381</PlateNumber>".encode()
    number = b"<InvoiceNumber>26532000000055449123</InvoiceNumber>"
    swapped = content.replace(plate + b"\n    " + number, number + b"\n    " + plate)
    assert swapped != content
    assert content_hash(parse(parsers, swapped, "t.xml")) == content_hash(fixture(parsers, "toll-2026.xml"))


def test_red_letter_invoice_names_the_original(parsers: list) -> None:
    red = fixture(parsers, "red-letter-2026.xml")
    blue = fixture(parsers, "ordinary-service-2026.xml")
    assert red.reverses == blue.number and red.reversal_reason == "01"
    assert red.totals.gross == -blue.totals.gross
    assert [line.name for line in red.lines] == [line.name for line in blue.lines]  # original line order
    assert red.identity != blue.identity


def test_red_letter_without_original_number_is_refused(parsers: list) -> None:
    content = (CN / "red-letter-2026.xml").read_bytes().replace(b"OriginalInvoiceNumber", b"Something")
    reason = refused(parsers, content, "red.xml")
    assert "red-letter invoice (RedEInvoice) that names no original invoice number" in reason


def test_kind_comes_from_label_code_not_label_name(parsers: list) -> None:
    content = (CN / "ordinary-service-2026.xml").read_bytes()
    lying = content.replace("<LabelName>普通发票".encode(), "<LabelName>增值税专用发票".encode())
    assert parse(parsers, lying, "x.xml").kind is InvoiceKind.CN_DIGITAL_ORDINARY
    unknown = content.replace(b"<LabelCode>02<", b"<LabelCode>07<")
    assert "LabelCode '07'" in refused(parsers, unknown, "x.xml")


def test_gbk_declared_xml_reads_the_same(parsers: list) -> None:
    utf8 = (CN / "ordinary-service-2026.xml").read_text(encoding="utf-8")
    gbk = utf8.replace('encoding="UTF-8"', 'encoding="GBK"').encode("gbk")
    assert content_hash(parse(parsers, gbk, "gbk.xml")) == content_hash(
        fixture(parsers, "ordinary-service-2026.xml")
    )


def test_full_width_tax_id_and_spacing_do_not_change_identity_or_hash(parsers: list) -> None:
    content = (CN / "ordinary-service-2026.xml").read_text(encoding="utf-8")
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "91110108551385082Q")  # ９１１…Ｑ
    wide = content.replace("<BuyerIdNum>91110108551385082Q", f"<BuyerIdNum>{full_width}").replace(
        "<SellerName>南京云帆", "<SellerName>  南京云帆"
    )
    again = parse(parsers, wide.encode(), "wide.xml")
    assert again.buyer.tax_id == "91110108551385082Q"
    assert content_hash(again) == content_hash(fixture(parsers, "ordinary-service-2026.xml"))


def test_amount_that_is_not_a_number_names_the_field(parsers: list) -> None:
    content = (CN / "toll-2026.xml").read_bytes().replace(b"<TotalTaxAm>0.56<", b"<TotalTaxAm>0,5.6x<")
    assert "TotalTaxAm is '0,5.6x', which is not a number" in refused(parsers, content, "t.xml")


# ---------------------------------------------------------------------------------------------------
# OFD
# ---------------------------------------------------------------------------------------------------
def test_ofd_with_original_invoice_xml_is_the_same_invoice_as_the_xml(parsers: list) -> None:
    ofd = fixture(parsers, "digital-attachment.ofd")
    xml = fixture(parsers, "ordinary-service-2026.xml")
    assert ofd.identity == xml.identity == "CN:26322000000012345678"
    assert content_hash(ofd) == content_hash(xml)
    assert ofd.extra["container"] == "ofd"


def test_legacy_ofd_from_custom_tags(parsers: list) -> None:
    invoice = fixture(parsers, "legacy-custom-tags.ofd")
    assert invoice.kind is InvoiceKind.CN_LEGACY_ORDINARY
    assert invoice.identity == "CN:032002100211:66422957"
    assert invoice.issue_date == date(2020, 11, 22)
    assert invoice.buyer.name == "苏州工业园区恒瑞精密机械有限公司"  # joined from two text objects
    assert (invoice.totals.net, invoice.totals.tax, invoice.totals.gross) == (
        Decimal("495.41"),
        Decimal("44.59"),
        Decimal("540.00"),
    )
    assert [(line.name, line.tax_rate) for line in invoice.lines] == [
        ("*餐饮服务*餐费", Decimal("0.06")),
        ("*纸制品*打印纸", Decimal("0.13")),
    ]
    assert invoice.extra["check_code"] == "6039 8861 2201 4567 8912"


def test_legacy_special_invoice_known_by_its_printed_title(parsers: list) -> None:
    title = (
        '<ofd:TextObject ID="90"><ofd:TextCode X="0" Y="3">江苏增值税电子</ofd:TextCode>'
        '<ofd:TextCode X="30" Y="3">专用发票</ofd:TextCode></ofd:TextObject>'
    ).encode()
    with zipfile.ZipFile(OFD / "legacy-custom-tags.ofd") as ofd:
        page = ofd.read("Doc_0/Pages/Page_0/Content.xml")
    layer = b'<ofd:Layer ID="2">'
    content = _rewrite_ofd(
        OFD / "legacy-custom-tags.ofd",
        {"Doc_0/Pages/Page_0/Content.xml": page.replace(layer, layer + title, 1)},
    )
    invoice = parse(parsers, content, "special.ofd")
    assert invoice.kind is InvoiceKind.CN_LEGACY_SPECIAL
    assert invoice.extra["invoice_type"] == "江苏增值税电子专用发票"
    assert fixture(parsers, "legacy-custom-tags.ofd").kind is InvoiceKind.CN_LEGACY_ORDINARY


def test_digital_ofd_in_flat_tag_layout(parsers: list) -> None:
    invoice = fixture(parsers, "digital-flat-tags.ofd")
    assert invoice.kind is InvoiceKind.CN_DIGITAL_SPECIAL  # 发票类型 in CustomData
    assert invoice.identity == fixture(parsers, "special-goods-2025.xml").identity
    assert [line.amount for line in invoice.lines] == [Decimal("12000.00"), Decimal("8000.00")]


def test_digital_ofd_known_only_from_custom_data(parsers: list) -> None:
    invoice = fixture(parsers, "digital-custom-data.ofd")
    toll = fixture(parsers, "toll-2026.xml")
    assert invoice.identity == toll.identity
    assert invoice.totals.gross == toll.totals.gross and invoice.lines == []


def test_ofd_without_invoice_data(parsers: list) -> None:
    reason = refused(parsers, (OFD / "no-invoice-data.ofd").read_bytes(), "no-invoice-data.ofd")
    assert reason.startswith("no structured invoice data")


def test_truncated_ofd(parsers: list) -> None:
    content = (OFD / "legacy-custom-tags.ofd").read_bytes()
    assert "not a readable OFD" in refused(parsers, content[: len(content) // 2], "cut.ofd")


def _rewrite_ofd(source: Path, replace: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, replace.get(info.filename, old.read(info)))
    return buffer.getvalue()


def test_ofd_with_hostile_custom_tag_xml(parsers: list) -> None:
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><x>&xxe;</x>'
    content = _rewrite_ofd(OFD / "legacy-custom-tags.ofd", {"Doc_0/Tags/CustomTag.xml": evil})
    reason = refused(parsers, content, "evil.ofd")
    assert "forbidden XML construct (entity 'xxe'" in reason and "CustomTag.xml" in reason


def test_ofd_attachment_wins_over_custom_data(parsers: list) -> None:
    """The attachment is the most trusted source: a different number in CustomData does not matter."""
    ofd_xml = (
        '<?xml version="1.0" encoding="UTF-8"?><ofd:OFD xmlns:ofd="http://www.ofdspec.org/2016"><ofd:DocBody>'
        '<ofd:DocInfo><ofd:CustomDatas><ofd:CustomData Name="发票号码">26322000000000000000</ofd:CustomData>'
        "</ofd:CustomDatas></ofd:DocInfo><ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>"
    )
    content = _rewrite_ofd(OFD / "digital-attachment.ofd", {"OFD.xml": ofd_xml.encode()})
    assert parse(parsers, content, "x.ofd").number == "26322000000012345678"


def test_zip_of_chinese_invoices_hands_back_each_file(parsers: list) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(OFD / "digital-attachment.ofd", "发票/26322000000012345678.ofd")
        archive.write(CN / "ordinary-service-2026.xml", "发票/26322000000012345678.xml")
    document = Document(content=buffer.getvalue(), filename="invoices.zip")
    children = next(p for p in parsers if p.claims(document)).parse(document).children
    invoices = [parse(parsers, child.content, child.filename or "") for child in children]
    assert [child.media_type for child in children] == ["application/ofd", "application/xml"]
    assert len({content_hash(invoice) for invoice in invoices}) == 1
