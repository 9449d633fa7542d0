"""Chinese fully digitalised e-invoice XML (数电票 / 全电发票), the XML tax platforms send beside PDF/OFD.

No official XSD is public; the paths are those public parsers agree on (see ``DOMAIN.md``)::

    EInvoice/Header/{EIid, EInvoiceTag, Version, InherentLabel/GeneralOrSpecialVAT/LabelCode}
    EInvoice/EInvoiceData/SellerInformation/{SellerIdNum, SellerName, SellerAddr, SellerTelNum,
                                             SellerBankName, SellerBankAccNum}
    EInvoice/EInvoiceData/BuyerInformation/{BuyerIdNum, BuyerName, ...}
    EInvoice/EInvoiceData/BasicInformation/{TotalAmWithoutTax, TotalTaxAm, TotalTax-includedAmount,
                                            TotalTax-includedAmountInChinese, Drawer, RequestTime, Remark}
    EInvoice/EInvoiceData/IssuItemInformation*/{ItemName, SpecMod, MeaUnits, Quantity, UnPrice, Amount,
                                                TaxRate, ComTaxAm, TaxClassificationCode}
    EInvoice/EInvoiceData/SpecificInformation/...   (industry data; red-letter data under RedEInvoice)
    EInvoice/TaxSupervisionInfo/{InvoiceNumber, IssueTime}

Traps handled on purpose:

* every element is selected **by name**, never by position: toll invoices (通行费) carry a
  ``PlateNumber`` ahead of ``InvoiceNumber``, and a parser that took "the first child" read the plate
  as the invoice number and threw real invoices away as duplicates;
* the kind comes from ``LabelCode`` (01 special → ``CN_DIGITAL_SPECIAL``, 02 ordinary →
  ``CN_DIGITAL_ORDINARY``), never from the ``LabelName`` text. Some platforms (toll invoices) leave the
  label out: such an invoice is read as ordinary — a special invoice is what a buyer deducts input VAT
  with and always carries its label — and ``extra["label_code"]`` stays empty so it can be found;
  an unknown code is refused;
* ``IssueTime`` is a date or a date-time; ``TaxRate`` is ``0.06`` or ``6%`` (even in one file), or the
  words 免税 / 不征税 (no rate, category exempt / not taxable);
* ``Quantity`` and ``UnPrice`` carry up to 8 decimals and are kept exactly (Decimal).

Red-letter invoices: the original ("blue") invoice number is read from ``RedEInvoice`` under
``SpecificInformation`` (element names vary between platforms and are unverified; the reader accepts
``OriginalInvoiceNumber``, ``BlueInvoiceNumber``, ``OriginalEInvoiceNumber``, ``OriInvoiceNumber``), the
reason code (01-04) from ``RedReasonCode`` / ``RedReason`` / ``ReasonCode``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from invoice_hub_plugins._xml import (
    Element,
    child,
    children,
    decimal,
    descendants,
    local,
    looks_like_xml,
    parse_xml,
    sniff_root,
    text,
)

from hub import hookimpl
from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document, Invoice, InvoiceKind, Line, Party, TaxCategory, Totals, nfkc

LABEL_KINDS = {"01": InvoiceKind.CN_DIGITAL_SPECIAL, "02": InvoiceKind.CN_DIGITAL_ORDINARY}
ORIGINAL_NUMBER_NAMES = (
    "OriginalInvoiceNumber",
    "BlueInvoiceNumber",
    "OriginalEInvoiceNumber",
    "OriInvoiceNumber",
)
REASON_NAMES = ("RedReasonCode", "RedReason", "ReasonCode")
_NO_RATE = {"免税": TaxCategory.EXEMPT, "不征税": TaxCategory.NOT_TAXABLE}


def _rate(value: str | None, where: str) -> tuple[Decimal | None, TaxCategory]:
    """``0.13`` / ``13%`` / ``13`` / 免税 / 不征税 → (fraction, category)."""
    if value is None:
        return None, TaxCategory.STANDARD
    cleaned = nfkc(value).strip()
    if cleaned in _NO_RATE:
        return None, _NO_RATE[cleaned]
    if cleaned in ("***", ""):
        return None, TaxCategory.OTHER
    percent = cleaned.endswith("%")
    try:
        number = Decimal(cleaned.rstrip("%").strip())
    except ArithmeticError:
        raise ParseError(f"{where} TaxRate is {value!r}, which is not a tax rate") from None
    if percent or number >= 1:
        number = number / 100
    return number, TaxCategory.ZERO if number == 0 else TaxCategory.STANDARD


def _tax_amount(element: Element | None, name: str, where: str) -> Decimal | None:
    """Tax on an exempt or not-taxable line is printed ``***``: no amount, not an error."""
    value = text(element, name)
    if value is not None and set(value) <= {"*"}:
        return None
    return decimal(element, name, where=where)


def _party(info: Element | None, prefix: str, fmt: str) -> Party:
    role = "seller" if prefix == "Seller" else "buyer"
    name = text(info, f"{prefix}Name")
    if name is None:
        raise ParseError(f"{fmt} names no {role} ({prefix}Information/{prefix}Name)")
    return Party(
        name=name,
        tax_id=text(info, f"{prefix}IdNum"),
        address=text(info, f"{prefix}Addr"),
        phone=text(info, f"{prefix}TelNum"),
        bank_name=text(info, f"{prefix}BankName"),
        bank_account=text(info, f"{prefix}BankAccNum"),
        country="CN" if role == "seller" else None,
    )


def _lines(data: Element, fmt: str) -> tuple[list[Line], int]:
    lines: list[Line] = []
    skipped = 0
    for index, item in enumerate(children(data, "IssuItemInformation")):
        where = f"{fmt} IssuItemInformation[{index + 1}]"
        name = text(item, "ItemName")
        amount = decimal(item, "Amount", where=f"{where} Amount")
        if name is None and amount is None:
            skipped += 1  # toll platforms write an item holding only a TaxRate
            continue
        if name is None:
            raise ParseError(f"{where} has an Amount but no ItemName")
        if amount is None:
            raise ParseError(f"{where} ({name}) has no Amount")
        rate, category = _rate(text(item, "TaxRate"), where)
        lines.append(
            Line(
                name=name,
                spec=text(item, "SpecMod"),
                unit=text(item, "MeaUnits"),
                quantity=decimal(item, "Quantity", where=f"{where} Quantity"),
                unit_price=decimal(item, "UnPrice", where=f"{where} UnPrice"),
                amount=amount,
                tax_rate=rate,
                tax_category=category,
                tax_amount=_tax_amount(item, "ComTaxAm", f"{where} ComTaxAm"),
                tax_code=text(item, "TaxClassificationCode"),
            )
        )
    return lines, skipped


def _red_letter(data: Element, fmt: str) -> tuple[str | None, str | None, dict[str, str]]:
    specific = child(data, "SpecificInformation")
    red = next(descendants(specific, "RedEInvoice"), None) if specific is not None else None
    if red is None:
        return None, None, {}
    fields = {local(el.tag): value for el in red.iter() if el is not red and (value := text(el)) is not None}
    original = next((fields[n] for n in ORIGINAL_NUMBER_NAMES if n in fields), None)
    if original is None:
        raise ParseError(
            f"{fmt} is a red-letter invoice (RedEInvoice) that names no original invoice number "
            f"(looked for {', '.join(ORIGINAL_NUMBER_NAMES)}; found {', '.join(fields) or 'nothing'})"
        )
    reason = next((fields[n] for n in REASON_NAMES if n in fields), None)
    return original, reason, fields


def read_cn_xml(root: Element, *, name: str | None = None) -> Invoice:
    """Read a parsed 数电 ``EInvoice`` root element into an ``Invoice``."""
    fmt = "数电 e-invoice XML" + (f" {name}" if name else "")
    if local(root.tag) != "EInvoice":
        raise ParseError(f"XML is not an invoice (root element {local(root.tag)}): expected a 数电 EInvoice")
    header = child(root, "Header")
    data = child(root, "EInvoiceData")
    supervision = child(root, "TaxSupervisionInfo")
    if data is None:
        raise ParseError(f"{fmt} has no EInvoiceData")

    label_code = text(header, "InherentLabel", "GeneralOrSpecialVAT", "LabelCode")
    if label_code is None:
        kind = InvoiceKind.CN_DIGITAL_ORDINARY
    elif label_code in LABEL_KINDS:
        kind = LABEL_KINDS[label_code]
    else:
        raise ParseError(f"{fmt} has LabelCode {label_code!r}; known: 01 (special), 02 (ordinary)")

    # By name, never by position (the toll invoice PlateNumber trap).
    eiid = text(header, "EIid")
    number = text(supervision, "InvoiceNumber") or eiid
    if number is None:
        raise ParseError(f"{fmt} has no invoice number (TaxSupervisionInfo/InvoiceNumber or Header/EIid)")
    issue_time = text(supervision, "IssueTime") or text(data, "BasicInformation", "RequestTime")
    if issue_time is None:
        raise ParseError(f"{fmt} has no issue time (TaxSupervisionInfo/IssueTime)")

    basic = child(data, "BasicInformation")
    net = decimal(basic, "TotalAmWithoutTax", where=f"{fmt} TotalAmWithoutTax")
    tax = _tax_amount(basic, "TotalTaxAm", f"{fmt} TotalTaxAm")
    gross = decimal(basic, "TotalTax-includedAmount", where=f"{fmt} TotalTax-includedAmount")
    if net is None or gross is None:
        raise ParseError(f"{fmt} lacks TotalAmWithoutTax or TotalTax-includedAmount (BasicInformation)")
    lines, skipped = _lines(data, fmt)
    original, reason, red_fields = _red_letter(data, fmt)

    extra: dict[str, Any] = {
        "format": "cn.digital.xml",
        "eiid": eiid,
        "einvoice_tag": text(header, "EInvoiceTag"),
        "version": text(header, "Version"),
        "label_code": label_code,
        "issue_time": issue_time,
        "drawer": text(basic, "Drawer"),
        "request_time": text(basic, "RequestTime"),
        "remark": text(basic, "Remark"),
        "gross_in_chinese": text(basic, "TotalTax-includedAmountInChinese"),
        "red_letter": red_fields,
        "items_without_data": skipped,
    }
    specific = child(data, "SpecificInformation")
    if specific is not None:
        extra["specific"] = {
            local(el.tag): value
            for el in specific.iter()
            if el is not specific and local(el.tag) and (value := text(el)) is not None and len(el) == 0
        }
    try:
        return Invoice(
            kind=kind,
            number=number,
            country="CN",
            issue_date=issue_time,
            currency="CNY",
            seller=_party(child(data, "SellerInformation"), "Seller", fmt),
            buyer=_party(child(data, "BuyerInformation"), "Buyer", fmt),
            lines=lines,
            totals=Totals(net=net, tax=gross - net if tax is None else tax, gross=gross, payable=gross),
            reverses=original,
            reversal_reason=reason,
            extra={k: v for k, v in extra.items() if v not in (None, {}, 0, "")},
        )
    except ValueError as exc:
        raise ParseError(f"{fmt} holds a value the hub cannot read: {exc}") from exc


class CnDigitalXmlParser(Parser):
    """数电 e-invoice XML (root ``EInvoice``)."""

    name: ClassVar[str] = "cn.digital.xml"
    priority: ClassVar[int] = 50

    def claims(self, document: Document) -> bool:
        if not looks_like_xml(document):
            return False
        root = sniff_root(document.content)
        return root is not None and root[0] == "EInvoice"

    def parse(self, document: Document) -> ParseResult:
        root = parse_xml(document.content, name=document.filename)
        return ParseResult(invoices=[read_cn_xml(root, name=document.filename)])


@hookimpl
def hub_register_parsers() -> list[Parser]:
    return [CnDigitalXmlParser()]
