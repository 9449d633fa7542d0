"""Every public reference invoice in ``../shared/reference/invoices/`` parses to the values its README states.

The expected values are read from the README's table (not copied here), and the files are read where
they are (not copied into the repo). Parsing goes through the plugin system: the first registered
parser that claims a file reads it, as the hub's intake does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from hub.canonical import content_hash
from hub.errors import Problem
from hub.models import Document, Invoice, InvoiceKind, compact_id, compact_number
from hub.plugins import build_plugins
from hub.validation import validate

REFERENCE = (Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "invoices").resolve()
README = REFERENCE / "README.md"


@dataclass(frozen=True)
class Expected:
    file: str
    format: str
    number: str
    type_code: str
    issue_date: str
    currency: str
    seller: tuple[str, str | None]
    buyer: tuple[str, str | None]
    net: Decimal
    tax: Decimal
    gross: Decimal
    payable: Decimal
    lines: int

    @property
    def kind(self) -> InvoiceKind:
        credit = self.type_code == "381" or "CreditNote" in self.format
        return InvoiceKind.CREDIT_NOTE if credit else InvoiceKind.INVOICE

    @property
    def parser(self) -> str:
        if "PDF" in self.format:
            return "facturx.pdf"
        return "ubl" if self.format.startswith("UBL") else "cii"


def _party(cell: str) -> tuple[str, str | None]:
    match = re.fullmatch(r"(.+?) \(([^()]+)\)", cell.strip())
    assert match, f"README party cell {cell!r} is not 'name (tax id)'"
    name, tax_id = match.groups()
    return name, None if tax_id == "none" else tax_id


def _expected_rows() -> list[Expected]:
    if not README.exists():
        return []
    section = README.read_text(encoding="utf-8").split("## Expected values", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 13 or cells[0] in ("file", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append(
            Expected(
                file=cells[0],
                format=cells[1],
                number=cells[2],
                type_code=cells[3],
                issue_date=cells[4],
                currency=cells[5],
                seller=_party(cells[6]),
                buyer=_party(cells[7]),
                net=Decimal(cells[8]),
                tax=Decimal(cells[9]),
                gross=Decimal(cells[10]),
                payable=Decimal(cells[11]),
                lines=int(cells[12]),
            )
        )
    return rows


ROWS = {row.file: row for row in _expected_rows()}
FILES = sorted(p.name for p in REFERENCE.glob("*") if p.name != "README.md") if REFERENCE.exists() else []

#: Reference invoices that a *core* validation rule rejects although they are correct (reported to the
#: lead; strict, so the test fails as soon as the rule is fixed and this entry must go).


@pytest.fixture(scope="module")
def parsers() -> list:
    return build_plugins().parsers


class Reader:
    """Reads each reference file once, through the first registered parser that claims it."""

    def __init__(self, parsers: list) -> None:
        self.parsers = parsers
        self.cache: dict[str, tuple[str, Invoice]] = {}

    def _load(self, name: str) -> tuple[str, Invoice]:
        if name not in self.cache:
            document = Document(content=(REFERENCE / name).read_bytes(), filename=name, source="reference")
            parser = next((p for p in self.parsers if p.claims(document)), None)
            assert parser is not None, f"no registered parser claims {name}"
            result = parser.parse(document)
            assert len(result.invoices) == 1 and not result.children
            self.cache[name] = (parser.name, result.invoices[0])
        return self.cache[name]

    def __call__(self, name: str) -> Invoice:
        return self._load(name)[1].model_copy(deep=True)

    def parser_of(self, name: str) -> str:
        return self._load(name)[0]


@pytest.fixture(scope="module")
def read(parsers: list) -> Reader:
    return Reader(parsers)


def test_reference_folder_and_table_agree() -> None:
    assert REFERENCE.is_dir(), (
        f"reference invoices not found at {REFERENCE} (shared/ must sit beside the repo)"
    )
    assert FILES, "the reference folder holds no invoices"
    assert set(FILES) == set(ROWS), "every reference file has exactly one row in the README's table"


@pytest.mark.parametrize("name", FILES)
def test_reference_invoice_parses_to_its_known_values(read, name: str) -> None:
    expected = ROWS[name]
    invoice = read(name)
    assert read.parser_of(name) == expected.parser
    assert invoice.number == compact_number(expected.number)
    assert invoice.extra["number_as_written"] == expected.number
    assert invoice.kind is expected.kind
    assert invoice.issue_date.isoformat() == expected.issue_date
    assert invoice.currency == expected.currency
    assert (invoice.seller.name, invoice.seller.tax_id) == (
        expected.seller[0],
        None if expected.seller[1] is None else compact_id(expected.seller[1]),
    )
    assert (invoice.buyer.name, invoice.buyer.tax_id) == (
        expected.buyer[0],
        None if expected.buyer[1] is None else compact_id(expected.buyer[1]),
    )
    totals = invoice.totals
    assert (totals.net, totals.tax, totals.gross, totals.amount_due) == (
        expected.net,
        expected.tax,
        expected.gross,
        expected.payable,
    )
    assert len(invoice.lines) == expected.lines
    assert invoice.identity.startswith(f"{invoice.country}:{invoice.seller.tax_id}:")


def _errors(invoice: Invoice) -> list[Problem]:
    return [p for p in validate(invoice) if p.severity == "error"]


@pytest.mark.parametrize("name", FILES)
def test_reference_invoice_passes_validation(read, name: str) -> None:
    errors = _errors(read(name))
    assert errors == [], [str(p) for p in errors]


def test_same_number_other_content_is_an_amendment(read) -> None:
    base, changed = read("peppol-base-example.xml"), read("peppol-Allowance-example.xml")
    assert base.identity == changed.identity
    assert content_hash(base) != content_hash(changed)


def test_invoice_and_credit_note_with_one_number_are_two_identities(read) -> None:
    invoice, credit = read("peppol-base-example.xml"), read("peppol-base-creditnote-correction.xml")
    assert invoice.number == credit.number
    assert invoice.identity != credit.identity
    assert credit.kind is InvoiceKind.CREDIT_NOTE
    assert credit.reverses == compact_number("Snippet1")


def test_negative_invoice_names_the_invoice_it_corrects_but_a_plain_reference_does_not(read) -> None:
    assert read("peppol-base-negative-inv-correction.xml").reverses == compact_number("Snippet1")
    plain = read("facturx-ubl-21-en16931.xml")  # references F124211 but is an ordinary invoice
    assert plain.reverses is None
    assert "F124211" in plain.extra["billing_references"]


def test_facturx_pdf_and_its_xml_are_one_invoice_and_payment_means_are_not_content(read) -> None:
    pdf, xml = read("facturx-invoice_EN16931.pdf"), read("facturx-cii-en16931.xml")
    assert pdf.identity == xml.identity
    # They differ only in the payment card block; payment means are kept in extra, not hashed.
    assert pdf.extra["payment_means"] != xml.extra["payment_means"]
    assert content_hash(pdf) == content_hash(xml)
    assert pdf.extra["embedded_file"] == "factur-x.xml"


def test_buyer_vat_id_with_spaces_is_normalised(read) -> None:
    assert read("facturx-cii-en16931.xml").buyer.tax_id == "FR05987654321"


def test_payable_below_gross_is_a_prepaid_amount_not_an_error(read) -> None:
    invoice = read("facturx-ubl-21-en16931.xml")
    assert invoice.totals.prepaid == Decimal("100.00")
    assert invoice.totals.payable == invoice.totals.gross - invoice.totals.prepaid
    assert not [p for p in _errors(invoice) if p.path.startswith("totals")]


def _parse_bytes(parsers: list, content: bytes, filename: str) -> Invoice:
    document = Document(content=content, filename=filename)
    parser = next(p for p in parsers if p.claims(document))
    return parser.parse(document).invoices[0]


def test_number_formatting_does_not_change_the_content_hash(parsers: list, read) -> None:
    original = (REFERENCE / "peppol-base-example.xml").read_bytes()
    reformatted = original.replace(b">1325<", b">1325.00<").replace(b">2800<", b">2800.000<")
    assert reformatted != original
    assert content_hash(_parse_bytes(parsers, reformatted, "x.xml")) == content_hash(
        read("peppol-base-example.xml")
    )


def test_tax_id_spacing_does_not_change_the_content_hash(parsers: list, read) -> None:
    original = (REFERENCE / "facturx-cii-en16931.xml").read_bytes()
    compacted = original.replace(b"FR 05 987 654 321", b"FR05987654321")
    assert compacted != original
    assert content_hash(_parse_bytes(parsers, compacted, "y.xml")) == content_hash(
        read("facturx-cii-en16931.xml")
    )


def test_a_changed_amount_changes_the_content_hash(parsers: list, read) -> None:
    original = (REFERENCE / "zugferd-2p1-EN16931-Einfach.xml").read_bytes()
    changed = original.replace(b"<ram:LineTotalAmount>198.00<", b"<ram:LineTotalAmount>199.00<")
    assert changed != original
    assert content_hash(_parse_bytes(parsers, changed, "z.xml")) != content_hash(
        read("zugferd-2p1-EN16931-Einfach.xml")
    )


def test_price_base_quantity_divides_the_price(read) -> None:
    line = read("peppol-Allowance-example.xml").lines[1]  # PriceAmount 200 per BaseQuantity 2
    assert (line.quantity, line.unit_price, line.amount, line.unit) == (
        Decimal(10),
        Decimal(100),
        Decimal("1000.00"),
        "C62",
    )
    assert (line.tax_rate, line.tax_category.value) == (Decimal(0), "exempt")


def test_country_falls_back_to_the_vat_id_prefix(parsers: list) -> None:
    original = (REFERENCE / "peppol-vat-category-E.xml").read_text(encoding="utf-8")
    without = original.replace(
        "<cac:Country>\n                    <cbc:IdentificationCode>GB</cbc:IdentificationCode>\n"
        "                </cac:Country>",
        "",
        1,
    )
    assert without != original
    invoice = _parse_bytes(parsers, without.encode(), "no-country.xml")
    assert invoice.seller.country is None and invoice.country == "GB"
