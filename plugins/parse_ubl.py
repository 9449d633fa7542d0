"""UBL 2.1 Invoice and CreditNote, as PEPPOL BIS Billing 3.0 / EN 16931 use them.

Mapping (EN 16931 business terms in brackets):

* number ``cbc:ID`` [BT-1]; kind: a ``CreditNote`` root, or an ``Invoice`` whose type code is a credit
  note code (381, 396, 81, 83, 532), is ``CREDIT_NOTE``, anything else ``INVOICE``;
* issue date [BT-2], currency ``DocumentCurrencyCode`` [BT-5];
* seller/buyer: legal name ``PartyLegalEntity/RegistrationName`` [BT-27/44] (else the trading name),
  tax id ``PartyTaxScheme/CompanyID`` whose ``TaxScheme/ID`` is ``VAT`` [BT-31/48] (else the first
  one), postal address, country, contact telephone;
* country of the invoice: the seller's postal address country [BT-40], else the first two letters
  of the seller's VAT id;
* totals from ``LegalMonetaryTotal``: ``TaxExclusiveAmount`` net [BT-109], ``TaxInclusiveAmount`` gross
  [BT-112], allowances [BT-107], charges [BT-108], prepaid [BT-113], payable [BT-115]; tax is the
  ``TaxTotal/TaxAmount`` in the document currency [BT-110] (a second ``TaxTotal`` in the tax currency
  [BT-111] is ignored);
* lines ``InvoiceLine``/``CreditNoteLine``: amount ``LineExtensionAmount`` [BT-131], quantity
  ``InvoicedQuantity``/``CreditedQuantity`` [BT-129] with its unit code, unit price
  ``Price/PriceAmount`` divided by ``Price/BaseQuantity`` [BT-146/149], ``ClassifiedTaxCategory``
  percent and category [BT-151/152];
* ``reverses``: ``BillingReference/InvoiceDocumentReference/ID`` [BT-25], only for a credit note or an
  invoice with a negative total (a correction); on an ordinary invoice it is just a reference and
  stays in ``extra``.

Payment means, payment terms, due date, notes and line-level allowances/charges go to
``Invoice.extra``: kept for display, not business content (see ``hub.canonical``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from invoice_hub_plugins._xml import (
    Element,
    UnknownXmlParser,
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

from hub import hookimpl
from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document, Invoice, InvoiceKind, Line, Party, TaxCategory, Totals

UBL_NAMESPACE_PREFIX = "urn:oasis:names:specification:ubl:schema:xsd:"
CREDIT_NOTE_TYPE_CODES = frozenset({"381", "396", "81", "83", "532", "261", "262"})

#: UNCL 5305 tax category codes (EN 16931) → the hub's categories.
TAX_CATEGORIES = {
    "S": TaxCategory.STANDARD,
    "Z": TaxCategory.ZERO,
    "E": TaxCategory.EXEMPT,
    "O": TaxCategory.NOT_TAXABLE,
    "AE": TaxCategory.REVERSE_CHARGE,
}


def tax_category(code: str | None) -> TaxCategory:
    if code is None:
        return TaxCategory.STANDARD
    return TAX_CATEGORIES.get(code.strip().upper(), TaxCategory.OTHER)


def percent_to_rate(value: Decimal | None) -> Decimal | None:
    """EN 16931 rates are percentages (``25.0``): the hub keeps a fraction (``0.25``)."""
    return None if value is None else value / 100


def country_from_vat(vat_id: str | None) -> str | None:
    if vat_id and len(vat_id) >= 2 and vat_id[:2].isalpha():
        return vat_id[:2].upper()
    return None


def is_ubl_root(name: str, ns: str) -> bool:
    return name in ("Invoice", "CreditNote") and ns.startswith(UBL_NAMESPACE_PREFIX)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------
def _address(address: Element | None) -> tuple[str | None, str | None]:
    """(one-line address, country code) of a ``PostalAddress``."""
    if address is None:
        return None, None
    parts = [
        text(address, "StreetName"),
        text(address, "AdditionalStreetName"),
        *(text(line, "Line") for line in children(address, "AddressLine")),
        " ".join(p for p in (text(address, "PostalZone"), text(address, "CityName")) if p) or None,
        text(address, "CountrySubentity"),
    ]
    joined = ", ".join(p for p in parts if p) or None
    return joined, text(address, "Country", "IdentificationCode")


def _tax_id(party: Element) -> str | None:
    schemes = list(children(party, "PartyTaxScheme"))
    for scheme in schemes:
        if (text(scheme, "TaxScheme", "ID") or "").upper() == "VAT" and text(scheme, "CompanyID"):
            return text(scheme, "CompanyID")
    for scheme in schemes:
        if text(scheme, "CompanyID"):
            return text(scheme, "CompanyID")
    return None


def _party(holder: Element | None, role: str, fmt: str) -> Party:
    party = child(holder, "Party")
    if party is None:
        raise ParseError(f"{fmt} has no {role} party")
    name = text(party, "PartyLegalEntity", "RegistrationName") or text(party, "PartyName", "Name")
    if name is None:
        raise ParseError(f"{fmt} names no {role} (PartyLegalEntity/RegistrationName or PartyName/Name)")
    address, country = _address(child(party, "PostalAddress"))
    return Party(
        name=name,
        tax_id=_tax_id(party),
        address=address,
        phone=text(party, "Contact", "Telephone"),
        country=country,
    )


def _document_tax(root: Element, currency: str) -> Decimal | None:
    """``TaxTotal/TaxAmount`` in the document currency (a second TaxTotal may be in the tax currency)."""
    fallback: Decimal | None = None
    for total in children(root, "TaxTotal"):
        amount_el = child(total, "TaxAmount")
        if amount_el is None:
            continue
        amount = to_decimal(text(amount_el), "TaxTotal/TaxAmount")
        declared = amount_el.get("currencyID")
        if declared is not None and declared.strip().upper() == currency.upper():
            return amount
        if declared is None and fallback is None:
            fallback = amount
    return fallback


def _allowance_charges(element: Element) -> list[dict[str, str | None]]:
    found = []
    for ac in children(element, "AllowanceCharge"):
        found.append(
            {
                "charge": text(ac, "ChargeIndicator"),
                "amount": text(ac, "Amount"),
                "reason": text(ac, "AllowanceChargeReason"),
                "reason_code": text(ac, "AllowanceChargeReasonCode"),
            }
        )
    return found


def _line(element: Element, index: int, quantity_name: str, fmt: str) -> tuple[Line, dict[str, Any]]:
    where = f"{fmt} line {index + 1}"
    item = child(element, "Item")
    name = text(item, "Name") or text(item, "Description")
    if name is None:
        raise ParseError(f"{where} has no item name (Item/Name)")
    amount = decimal(element, "LineExtensionAmount", where=f"{where} LineExtensionAmount")
    if amount is None:
        raise ParseError(f"{where} has no LineExtensionAmount")
    quantity_el = child(element, quantity_name)
    quantity = to_decimal(text(quantity_el), f"{where} {quantity_name}") if quantity_el is not None else None
    price = child(element, "Price")
    unit_price = decimal(price, "PriceAmount", where=f"{where} Price/PriceAmount")
    base = decimal(price, "BaseQuantity", where=f"{where} Price/BaseQuantity")
    if unit_price is not None and base is not None and base not in (0, 1):
        unit_price = unit_price / base
    category = child(item, "ClassifiedTaxCategory")
    allowance_charges = _allowance_charges(element)
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
            decimal(category, "Percent", where=f"{where} ClassifiedTaxCategory/Percent")
        ),
        tax_category=tax_category(text(category, "ID")),
    )
    extra: dict[str, Any] = {}
    if (line_id := text(element, "ID")) is not None:
        extra["id"] = line_id
    if description := text(item, "Description"):
        extra["description"] = description
    if allowance_charges:
        extra["allowance_charges"] = allowance_charges
    return line, extra


def _payment_means(root: Element) -> list[dict[str, str | None]]:
    means = []
    for pm in children(root, "PaymentMeans"):
        code = child(pm, "PaymentMeansCode")
        means.append(
            {
                "code": text(code),
                "name": code.get("name") if code is not None else None,
                "payment_id": text(pm, "PaymentID"),
                "account": text(pm, "PayeeFinancialAccount", "ID"),
                "account_name": text(pm, "PayeeFinancialAccount", "Name"),
                "bic": text(pm, "PayeeFinancialAccount", "FinancialInstitutionBranch", "ID"),
                "card": text(pm, "CardAccount", "PrimaryAccountNumberID"),
                "mandate": text(pm, "PaymentMandate", "ID"),
            }
        )
    return means


def read_ubl(root: Element, *, name: str | None = None) -> Invoice:
    """Read a parsed UBL ``Invoice``/``CreditNote`` root element into an ``Invoice``."""
    kind_name = local(root.tag)
    fmt = f"UBL {kind_name}" + (f" {name}" if name else "")
    if not is_ubl_root(kind_name, namespace(root.tag)):
        raise ParseError(
            f"XML is not an invoice (root element {kind_name}): expected a UBL Invoice or CreditNote"
        )
    credit_note = kind_name == "CreditNote"
    type_code = text(root, "CreditNoteTypeCode" if credit_note else "InvoiceTypeCode")
    kind = (
        InvoiceKind.CREDIT_NOTE if credit_note or type_code in CREDIT_NOTE_TYPE_CODES else InvoiceKind.INVOICE
    )

    number = text(root, "ID")
    issue_date = text(root, "IssueDate")
    currency = text(root, "DocumentCurrencyCode")
    if number is None:
        raise ParseError(f"{fmt} has no invoice number (cbc:ID)")
    if issue_date is None:
        raise ParseError(f"{fmt} has no issue date (cbc:IssueDate)")
    if currency is None:
        raise ParseError(f"{fmt} has no DocumentCurrencyCode")

    seller = _party(child(root, "AccountingSupplierParty"), "seller", fmt)
    buyer = _party(child(root, "AccountingCustomerParty"), "buyer", fmt)
    country = seller.country or country_from_vat(seller.tax_id)
    if country is None:
        raise ParseError(
            f"{fmt}: the seller's country is unknown (no postal address country, no VAT id prefix)"
        )

    money = child(root, "LegalMonetaryTotal")
    if money is None:
        raise ParseError(f"{fmt} has no LegalMonetaryTotal")

    def amount(field: str) -> Decimal | None:
        return decimal(money, field, where=f"{fmt} LegalMonetaryTotal/{field}")

    net, gross = amount("TaxExclusiveAmount"), amount("TaxInclusiveAmount")
    if net is None or gross is None:
        raise ParseError(f"{fmt} LegalMonetaryTotal lacks TaxExclusiveAmount or TaxInclusiveAmount")
    tax = _document_tax(root, currency)
    if tax is None:
        tax = gross - net
    totals = Totals(
        net=net,
        tax=tax,
        gross=gross,
        allowances=amount("AllowanceTotalAmount") or Decimal(0),
        charges=amount("ChargeTotalAmount") or Decimal(0),
        prepaid=amount("PrepaidAmount") or Decimal(0),
        payable=amount("PayableAmount"),
    )

    line_name = "CreditNoteLine" if credit_note else "InvoiceLine"
    quantity_name = "CreditedQuantity" if credit_note else "InvoicedQuantity"
    lines: list[Line] = []
    line_extras: list[dict[str, Any]] = []
    for index, element in enumerate(children(root, line_name)):
        line, line_extra = _line(element, index, quantity_name, fmt)
        lines.append(line)
        line_extras.append(line_extra)

    references = [
        ref
        for billing in children(root, "BillingReference")
        if (ref := text(billing, "InvoiceDocumentReference", "ID")) is not None
    ]
    reverses = references[0] if references and (kind is InvoiceKind.CREDIT_NOTE or gross < 0) else None

    extra: dict[str, Any] = {
        "format": "ubl",
        "document": kind_name,
        "type_code": type_code,
        "number_as_written": number,
        "customization_id": text(root, "CustomizationID"),
        "profile_id": text(root, "ProfileID"),
        "due_date": text(root, "DueDate"),
        "buyer_reference": text(root, "BuyerReference"),
        "order_reference": text(root, "OrderReference", "ID"),
        "billing_references": references,
        "notes": [n for note in children(root, "Note") if (n := text(note)) is not None],
        "payment_means": _payment_means(root),
        "payment_terms": text(root, "PaymentTerms", "Note"),
        "rounding": text(money, "PayableRoundingAmount"),
        "document_allowance_charges": _allowance_charges(root),
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
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ParseError(f"{fmt} holds a value the hub cannot read: {exc}") from exc


class UblParser(Parser):
    """UBL 2.1 Invoice / CreditNote XML (PEPPOL BIS 3, EN 16931, XRechnung UBL)."""

    name: ClassVar[str] = "ubl"
    priority: ClassVar[int] = 50

    def claims(self, document: Document) -> bool:
        if not looks_like_xml(document):
            return False
        root = sniff_root(document.content)
        return root is not None and is_ubl_root(*root)

    def parse(self, document: Document) -> ParseResult:
        root = parse_xml(document.content, name=document.filename)
        return ParseResult(invoices=[read_ubl(root, name=document.filename)])


@hookimpl
def hub_register_parsers() -> list[Parser]:
    # The fallback for XML that no reader claims lives here, beside the most general XML reader, so a
    # well-formed non-invoice XML gets the reason "XML is not an invoice (root element ...)".
    return [UblParser(), UnknownXmlParser()]
