"""UN/CEFACT Cross Industry Invoice (Factur-X, ZUGFeRD 2.x, XRechnung CII) as XML or embedded in a PDF.

XML: the ``rsm:CrossIndustryInvoice`` (D16B, namespace ``...:CrossIndustryInvoice:100``) as Factur-X
and ZUGFeRD 2.x write it, EN 16931 profile and its subsets. ZUGFeRD 1.0 (``CrossIndustryDocument``) is
refused with a reason that says so.

PDF: a Factur-X / ZUGFeRD PDF carries the XML as an embedded file (``factur-x.xml``,
``zugferd-invoice.xml``, ``xrechnung.xml``...). The attachment is taken out with ``pypdf`` and then
parsed with the hub's hardened XML parser. (``facturx.get_xml_from_pdf`` does the same lookup, but it
parses the attachment with lxml's default parser before handing it back and skips an attachment that
is not well-formed without saying so; reading the attachment ourselves keeps one hardened parser
and one clear error for every XML the hub reads.) An embedded UBL invoice is read by the UBL reader.
A PDF without an embedded invoice is refused with "no structured invoice data", so it lands in the
dead-letter queue for a person to key in; a damaged or truncated PDF is refused as such.

Mapping (EN 16931 terms): number ``ExchangedDocument/ID`` [BT-1], type code [BT-3] (381 and the other
credit note codes → ``CREDIT_NOTE``), issue date [BT-2, format 102], currency [BT-5]; seller and buyer
from ``ApplicableHeaderTradeAgreement`` (name, VAT id ``SpecifiedTaxRegistration/ID[@schemeID='VA']``,
else the ``FC`` tax number; address; country); totals from
``SpecifiedTradeSettlementHeaderMonetarySummation`` (``TaxBasisTotalAmount`` net, ``TaxTotalAmount`` in
the invoice currency, ``GrandTotalAmount`` gross, allowances, charges, prepaid, ``DuePayableAmount``);
lines from ``IncludedSupplyChainTradeLineItem`` (net price ÷ basis quantity). ``reverses`` is the
preceding invoice reference [BT-25] for credit notes and negative invoices only. Payment means,
terms and notes go to ``Invoice.extra`` (not business content).
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any, ClassVar

from invoice_hub_plugins._xml import (
    Element,
    child,
    children,
    decimal,
    local,
    looks_like_xml,
    namespace,
    parse_xml,
    sniff_root,
    split_allowance_charges,
    text,
    to_decimal,
)
from invoice_hub_plugins.parse_ubl import (
    CREDIT_NOTE_TYPE_CODES,
    country_from_vat,
    is_ubl_root,
    percent_to_rate,
    read_ubl,
    tax_category,
)
from pypdf import PdfReader
from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError

from hub import hookimpl
from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document, Invoice, InvoiceKind, Line, Party, Totals

CII_NAMESPACE = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
#: Embedded file names Factur-X, ZUGFeRD 2.x and XRechnung use, most specific first.
EMBEDDED_NAMES = (
    "factur-x.xml",
    "zugferd-invoice.xml",
    "xrechnung.xml",
    "zugferd_invoice.xml",
    "order-x.xml",
)
NO_DATA = "no structured invoice data"


def is_cii_root(name: str, ns: str) -> bool:
    return name == "CrossIndustryInvoice" and (ns == CII_NAMESPACE or ns == "")


# ---------------------------------------------------------------------------------------------------
# CII XML
# ---------------------------------------------------------------------------------------------------
def _party(element: Element | None, role: str, fmt: str) -> Party:
    if element is None:
        raise ParseError(f"{fmt} has no {role} (ApplicableHeaderTradeAgreement/{role.title()}TradeParty)")
    name = text(element, "Name")
    if name is None:
        raise ParseError(f"{fmt} names no {role} ({role.title()}TradeParty/Name)")
    registrations: dict[str, str | None] = {}
    for registration in children(element, "SpecifiedTaxRegistration"):
        id_el = child(registration, "ID")
        if id_el is not None:
            registrations.setdefault((id_el.get("schemeID") or "").strip().upper(), text(id_el))
    tax_id = registrations.get("VA") or registrations.get("FC")
    address_el = child(element, "PostalTradeAddress")
    parts = [
        text(address_el, "LineOne"),
        text(address_el, "LineTwo"),
        text(address_el, "LineThree"),
        " ".join(p for p in (text(address_el, "PostcodeCode"), text(address_el, "CityName")) if p) or None,
        text(address_el, "CountrySubDivisionName"),
    ]
    return Party(
        name=name,
        tax_id=tax_id,
        address=", ".join(p for p in parts if p) or None,
        phone=text(element, "DefinedTradeContact", "TelephoneUniversalCommunication", "CompleteNumber"),
        country=text(address_el, "CountryID"),
    )


def _line(element: Element, index: int, fmt: str) -> tuple[Line, dict[str, Any]]:
    where = f"{fmt} line {index + 1}"
    name = text(element, "SpecifiedTradeProduct", "Name")
    if name is None:
        raise ParseError(f"{where} has no product name (SpecifiedTradeProduct/Name)")
    settlement = child(element, "SpecifiedLineTradeSettlement")
    amount = decimal(
        settlement,
        "SpecifiedTradeSettlementLineMonetarySummation",
        "LineTotalAmount",
        where=f"{where} LineTotalAmount",
    )
    if amount is None:
        raise ParseError(f"{where} has no LineTotalAmount")
    quantity_el = child(element, "SpecifiedLineTradeDelivery", "BilledQuantity")
    quantity = to_decimal(text(quantity_el), f"{where} BilledQuantity") if quantity_el is not None else None
    price = child(element, "SpecifiedLineTradeAgreement", "NetPriceProductTradePrice")
    unit_price = decimal(price, "ChargeAmount", where=f"{where} NetPriceProductTradePrice/ChargeAmount")
    basis = decimal(price, "BasisQuantity", where=f"{where} NetPriceProductTradePrice/BasisQuantity")
    if unit_price is not None and basis is not None and basis not in (0, 1):
        unit_price = unit_price / basis
    tax = child(settlement, "ApplicableTradeTax")
    allowance_charges = [
        {
            "charge": text(ac, "ChargeIndicator"),
            "amount": text(ac, "ActualAmount"),
            "reason": text(ac, "Reason"),
        }
        for ac in children(settlement, "SpecifiedTradeAllowanceCharge")
    ]
    allowances, charges = split_allowance_charges(allowance_charges)
    line = Line(
        allowances=allowances,
        charges=charges,
        name=name,
        unit=quantity_el.get("unitCode") if quantity_el is not None else None,
        quantity=quantity,
        unit_price=unit_price,
        amount=amount,
        tax_rate=percent_to_rate(
            decimal(tax, "RateApplicablePercent", where=f"{where} RateApplicablePercent")
        ),
        tax_category=tax_category(text(tax, "CategoryCode")),
    )
    extra: dict[str, Any] = {}
    if (line_id := text(element, "AssociatedDocumentLineDocument", "LineID")) is not None:
        extra["id"] = line_id
    if allowance_charges:
        extra["allowance_charges"] = allowance_charges
    return line, extra


def _payment_means(settlement: Element | None) -> list[dict[str, str | None]]:
    return [
        {
            "code": text(pm, "TypeCode"),
            "information": text(pm, "Information"),
            "card": text(pm, "ApplicableTradeSettlementFinancialCard", "ID"),
            "card_holder": text(pm, "ApplicableTradeSettlementFinancialCard", "CardholderName"),
            "payer_iban": text(pm, "PayerPartyDebtorFinancialAccount", "IBANID"),
            "payee_iban": text(pm, "PayeePartyCreditorFinancialAccount", "IBANID"),
            "payee_bic": text(pm, "PayeeSpecifiedCreditorFinancialInstitution", "BICID"),
        }
        for pm in children(settlement, "SpecifiedTradeSettlementPaymentMeans")
    ]


def _document_tax(summation: Element, currency: str) -> Decimal | None:
    fallback: Decimal | None = None
    for element in children(summation, "TaxTotalAmount"):
        amount = to_decimal(text(element), "TaxTotalAmount")
        declared = element.get("currencyID")
        if declared is not None and declared.strip().upper() == currency.upper():
            return amount
        if declared is None and fallback is None:
            fallback = amount
    return fallback


def read_cii(root: Element, *, name: str | None = None) -> Invoice:
    """Read a parsed ``CrossIndustryInvoice`` root element into an ``Invoice``."""
    root_name = local(root.tag)
    fmt = "CII invoice" + (f" {name}" if name else "")
    if root_name == "CrossIndustryDocument":
        raise ParseError(
            f"{fmt}: ZUGFeRD 1.0 (CrossIndustryDocument) is not supported; send ZUGFeRD 2.x / Factur-X"
        )
    if not is_cii_root(root_name, namespace(root.tag)):
        raise ParseError(
            f"XML is not an invoice (root element {root_name}): expected a CII CrossIndustryInvoice"
        )
    document = child(root, "ExchangedDocument")
    number = text(document, "ID")
    type_code = text(document, "TypeCode")
    issue_date = text(document, "IssueDateTime", "DateTimeString")
    if number is None:
        raise ParseError(f"{fmt} has no invoice number (ExchangedDocument/ID)")
    if issue_date is None:
        raise ParseError(f"{fmt} has no issue date (ExchangedDocument/IssueDateTime)")
    kind = InvoiceKind.CREDIT_NOTE if type_code in CREDIT_NOTE_TYPE_CODES else InvoiceKind.INVOICE

    transaction = child(root, "SupplyChainTradeTransaction")
    agreement = child(transaction, "ApplicableHeaderTradeAgreement")
    settlement = child(transaction, "ApplicableHeaderTradeSettlement")
    seller = _party(child(agreement, "SellerTradeParty"), "seller", fmt)
    buyer = _party(child(agreement, "BuyerTradeParty"), "buyer", fmt)
    country = seller.country or country_from_vat(seller.tax_id)
    if country is None:
        raise ParseError(f"{fmt}: the seller's country is unknown (no CountryID, no VAT id prefix)")
    currency = text(settlement, "InvoiceCurrencyCode")
    if currency is None:
        raise ParseError(f"{fmt} has no InvoiceCurrencyCode")

    summation = child(settlement, "SpecifiedTradeSettlementHeaderMonetarySummation")
    if summation is None:
        raise ParseError(f"{fmt} has no SpecifiedTradeSettlementHeaderMonetarySummation")

    def amount(field: str) -> Decimal | None:
        return decimal(summation, field, where=f"{fmt} {field}")

    net, gross = amount("TaxBasisTotalAmount"), amount("GrandTotalAmount")
    if net is None or gross is None:
        raise ParseError(f"{fmt} lacks TaxBasisTotalAmount or GrandTotalAmount")
    tax = _document_tax(summation, currency)
    totals = Totals(
        net=net,
        tax=gross - net if tax is None else tax,
        gross=gross,
        allowances=amount("AllowanceTotalAmount") or Decimal(0),
        charges=amount("ChargeTotalAmount") or Decimal(0),
        prepaid=amount("TotalPrepaidAmount") or Decimal(0),
        payable=amount("DuePayableAmount"),
    )
    lines: list[Line] = []
    line_extras: list[dict[str, Any]] = []
    for index, element in enumerate(children(transaction, "IncludedSupplyChainTradeLineItem")):
        line, line_extra = _line(element, index, fmt)
        lines.append(line)
        line_extras.append(line_extra)

    references = [
        ref
        for doc in children(settlement, "InvoiceReferencedDocument")
        if (ref := text(doc, "IssuerAssignedID")) is not None
    ]
    reverses = references[0] if references and (kind is InvoiceKind.CREDIT_NOTE or gross < 0) else None
    extra: dict[str, Any] = {
        "format": "cii",
        "type_code": type_code,
        "guideline": text(
            root, "ExchangedDocumentContext", "GuidelineSpecifiedDocumentContextParameter", "ID"
        ),
        "number_as_written": number,
        "buyer_reference": text(agreement, "BuyerReference"),
        "billing_references": references,
        "notes": [
            c for note in children(document, "IncludedNote") if (c := text(note, "Content")) is not None
        ],
        "payment_means": _payment_means(settlement),
        "payment_terms": text(settlement, "SpecifiedTradePaymentTerms", "Description"),
        "due_date": text(settlement, "SpecifiedTradePaymentTerms", "DueDateDateTime", "DateTimeString"),
        "rounding": text(summation, "RoundingAmount"),
        "lines": line_extras,
    }
    try:
        return Invoice(
            kind=kind,
            number=number,
            country=country,
            issue_date=issue_date,
            currency=currency,
            seller=seller,
            buyer=buyer,
            lines=lines,
            totals=totals,
            reverses=reverses,
            extra={k: v for k, v in extra.items() if v not in (None, [], "")},
        )
    except ValueError as exc:
        raise ParseError(f"{fmt} holds a value the hub cannot read: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------------------------------
def embedded_xml(content: bytes, *, name: str | None = None) -> tuple[str, bytes]:
    """The embedded invoice XML of a Factur-X / ZUGFeRD PDF as ``(attachment name, bytes)``.

    Only the chosen attachment is decompressed (a PDF may carry large images or other files too).
    """
    where = f" {name}" if name else ""
    chosen: str | None = None
    names: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        attachments = reader.attachments
        names = list(attachments.keys())
        by_lower = {key.lower(): key for key in names}
        chosen = next((by_lower[n] for n in EMBEDDED_NAMES if n in by_lower), None)
        if chosen is None:
            chosen = next((key for key in names if key.lower().endswith(".xml")), None)
        data = list(attachments[chosen]) if chosen is not None else []
    except LimitReachedError as exc:
        raise ParseError(
            f"the PDF{where} holds a stream that expands past the reader's safety limit ({exc}); "
            "refused as a decompression bomb",
            filename=name,
        ) from exc
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ParseError(
            f"the PDF{where} is damaged or truncated and cannot be read ({type(exc).__name__}: {exc})",
            filename=name,
        ) from exc
    if chosen is None or not data or not data[0].strip():
        listed = ", ".join(sorted(names)) or "none"
        raise ParseError(
            f"{NO_DATA}: the PDF{where} has no embedded Factur-X/ZUGFeRD XML (embedded files: {listed}); "
            "a person has to key it in (hub dlq edit)",
            filename=name,
            code="no_structured_data",
        )
    return chosen, data[0]


def read_invoice_xml(root: Element, *, name: str | None = None) -> Invoice:
    """CII or UBL, by the root element."""
    root_name, ns = local(root.tag), namespace(root.tag)
    if is_ubl_root(root_name, ns):
        return read_ubl(root, name=name)
    return read_cii(root, name=name)


class CiiXmlParser(Parser):
    """UN/CEFACT CII XML (Factur-X / ZUGFeRD 2.x / XRechnung CII)."""

    name: ClassVar[str] = "cii"
    priority: ClassVar[int] = 50

    def claims(self, document: Document) -> bool:
        if not looks_like_xml(document):
            return False
        root = sniff_root(document.content)
        return root is not None and root[0] in ("CrossIndustryInvoice", "CrossIndustryDocument")

    def parse(self, document: Document) -> ParseResult:
        root = parse_xml(document.content, name=document.filename)
        return ParseResult(invoices=[read_cii(root, name=document.filename)])


class FacturXPdfParser(Parser):
    """Any PDF: reads the embedded Factur-X / ZUGFeRD XML, or says there is none."""

    name: ClassVar[str] = "facturx.pdf"
    priority: ClassVar[int] = 50

    def claims(self, document: Document) -> bool:
        if document.content[:1024].lstrip().startswith(b"%PDF-"):
            return True
        media = document.media_type.split(";")[0].strip().lower()
        return media == "application/pdf" or (document.filename or "").lower().endswith(".pdf")

    def parse(self, document: Document) -> ParseResult:
        if b"%PDF-" not in document.content[:1024]:
            raise ParseError(
                f"{document.filename or 'the document'} is called a PDF but does not start like one "
                f"(first bytes {document.content[:8]!r})",
                filename=document.filename,
            )
        attachment, xml = embedded_xml(document.content, name=document.filename)
        where = f"{document.filename or 'PDF'}/{attachment}"
        root = parse_xml(xml, name=where)
        root_name, ns = local(root.tag), namespace(root.tag)
        if not (
            is_ubl_root(root_name, ns) or is_cii_root(root_name, ns) or root_name == "CrossIndustryDocument"
        ):
            raise ParseError(
                f"{NO_DATA}: the XML embedded in {document.filename or 'the PDF'} ({attachment}) is not an "
                f"invoice (root element {root_name})",
                filename=document.filename,
            )
        invoice = read_invoice_xml(root, name=where)
        invoice.extra["embedded_file"] = attachment
        return ParseResult(invoices=[invoice])


@hookimpl
def hub_register_parsers() -> list[Parser]:
    return [CiiXmlParser(), FacturXPdfParser()]
