"""The golden invoice set the conformance kit drives connectors with (built in code, shipped in the hub).

Every item is an ``Invoice`` that passes the hub's built-in validation, the ``original`` document it came
in (数电 XML, hub JSON, UBL 2.1 or CII XML) and, for some, an ``attachment`` container the original sits
in (a PDF, as a platform returns it). Together they cover:

* Chinese fully digitalised invoices (数电专票 and 数电普票) and a legacy VAT invoice (code + number);
* a red-letter reversal (negative amounts, ``reverses`` the original's number, reason ``01``);
* a UBL invoice and a UBL credit note with the **same number** (two identities: the kind is part of it),
  EU tax ids, and a CII invoice;
* several currencies (CNY, EUR, GBP, USD) and a prepaid amount (payable below gross);
* parties with bank accounts (which must never appear in logs or dead-letter views).

``golden_set()`` returns fresh objects each call, so a test may change them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from xml.sax.saxutils import escape

from hub.canonical import content_hash
from hub.models import Document, Invoice, InvoiceKind, InvoiceStatus, Line, Party, TaxCategory, Totals

#: Bank account numbers in the golden set; the kit checks none of them leaks into logs or dead letters.
BANK_ACCOUNTS = (
    "6222021001123456789",
    "DE89370400440532013000",
    "31010000123456789012",
    "0200001234567890",
)


@dataclass
class GoldenItem:
    """One golden invoice with the documents it travels with."""

    name: str
    invoice: Invoice
    original: Document
    attachment: Document | None = None
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def content_hash(self) -> str:
        return content_hash(self.invoice)

    @property
    def identity(self) -> str:
        return self.invoice.identity

    @property
    def documents(self) -> list[Document]:
        """What a sink receives as ``DeliveryRequest.documents``: the original, then its container."""
        return [self.original] + ([self.attachment] if self.attachment is not None else [])


def _d(text: str) -> Decimal:
    return Decimal(text)


SELLER_CN = Party(
    name="上海云账信息技术有限公司",
    tax_id="91310115MA1H7GXB31",
    address="上海市浦东新区张江路 88 号",
    phone="021-50801234",
    bank_name="中国工商银行上海张江支行",
    bank_account=BANK_ACCOUNTS[0],
)
BUYER_CN = Party(
    name="深圳前海星河贸易有限公司",
    tax_id="91440300708461136T",
    address="深圳市南山区前海路 1 号",
    bank_name="招商银行深圳分行",
    bank_account=BANK_ACCOUNTS[2],
)
SELLER_DE = Party(
    name="Lieferant GmbH",
    tax_id="DE123456789",
    address="Lieferantenstraße 20, 80333 München",
    country="DE",
    bank_name="Commerzbank",
    bank_account=BANK_ACCOUNTS[1],
)
BUYER_FR = Party(name="Ma jolie boutique SARL", tax_id="FR19787878784", country="FR")
SELLER_GB = Party(name="The Sellercompany Incorporated", tax_id="GB928741974", country="GB")
BUYER_US = Party(name="Acme Widgets Inc.", tax_id="US123456789", country="US")


def _cn_digital_special() -> Invoice:
    return Invoice(
        kind=InvoiceKind.CN_DIGITAL_SPECIAL,
        number="26312000000012345678",
        issue_date=date(2026, 2, 28),
        seller=SELLER_CN,
        buyer=BUYER_CN,
        lines=[
            Line(
                name="*信息技术服务*软件维护费",
                unit="次",
                quantity=_d("1"),
                unit_price=_d("10000"),
                amount=_d("10000.00"),
                tax_rate=_d("0.06"),
                tax_amount=_d("600.00"),
                tax_code="3040201010000000000",
            ),
            Line(
                name="*计算机配套产品*固态硬盘",
                spec="2TB",
                unit="块",
                quantity=_d("4"),
                unit_price=_d("850"),
                amount=_d("3400.00"),
                tax_rate=_d("0.13"),
                tax_amount=_d("442.00"),
                tax_code="1090511030000000000",
            ),
        ],
        totals=Totals(net=_d("13400.00"), tax=_d("1042.00"), gross=_d("14442.00")),
    )


def _cn_red_letter() -> Invoice:
    return Invoice(
        kind=InvoiceKind.CN_DIGITAL_SPECIAL,
        number="26312000000098765432",
        issue_date=date(2026, 3, 5),
        seller=SELLER_CN,
        buyer=BUYER_CN,
        lines=[
            Line(
                name="*信息技术服务*软件维护费",
                unit="次",
                quantity=_d("-1"),
                unit_price=_d("10000"),
                amount=_d("-10000.00"),
                tax_rate=_d("0.06"),
                tax_amount=_d("-600.00"),
            ),
            Line(
                name="*计算机配套产品*固态硬盘",
                spec="2TB",
                unit="块",
                quantity=_d("-4"),
                unit_price=_d("850"),
                amount=_d("-3400.00"),
                tax_rate=_d("0.13"),
                tax_amount=_d("-442.00"),
            ),
        ],
        totals=Totals(net=_d("-13400.00"), tax=_d("-1042.00"), gross=_d("-14442.00")),
        reverses="26312000000012345678",
        reversal_reason="01",
    )


def _cn_digital_ordinary() -> Invoice:
    return Invoice(
        kind=InvoiceKind.CN_DIGITAL_ORDINARY,
        number="26442000000000004321",
        issue_date=date(2026, 1, 15),
        seller=Party(name="广州南方餐饮管理有限公司", tax_id="91330106MA2CFJ4P03"),
        buyer=Party(name="个人"),
        lines=[
            Line(
                name="*餐饮服务*餐费",
                amount=_d("188.68"),
                tax_rate=_d("0.06"),
                tax_amount=_d("11.32"),
            )
        ],
        totals=Totals(net=_d("188.68"), tax=_d("11.32"), gross=_d("200.00")),
    )


def _cn_legacy_special() -> Invoice:
    return Invoice(
        kind=InvoiceKind.CN_LEGACY_SPECIAL,
        code="3100194130",
        number="01234567",
        issue_date=date(2019, 5, 10),
        seller=Party(
            name="北京华北机械设备有限公司", tax_id="91110000100003962Y", bank_account=BANK_ACCOUNTS[3]
        ),
        buyer=BUYER_CN,
        lines=[
            Line(
                name="*机械设备*数控车床",
                spec="CK6140",
                unit="台",
                quantity=_d("2"),
                unit_price=_d("45000"),
                amount=_d("90000.00"),
                tax_rate=_d("0.13"),
                tax_amount=_d("11700.00"),
            )
        ],
        totals=Totals(net=_d("90000.00"), tax=_d("11700.00"), gross=_d("101700.00")),
    )


def _ubl_invoice() -> Invoice:
    return Invoice(
        kind=InvoiceKind.INVOICE,
        number="INV-2026-0042",
        country="DE",
        currency="EUR",
        issue_date=date(2026, 6, 17),
        seller=SELLER_DE,
        buyer=BUYER_FR,
        lines=[
            Line(
                name="Consulting",
                unit="HUR",
                quantity=_d("10"),
                unit_price=_d("120"),
                amount=_d("1200.00"),
                tax_rate=_d("0.19"),
                tax_amount=_d("228.00"),
            ),
            Line(
                name="Travel (reverse charge not applicable)",
                quantity=_d("1"),
                unit_price=_d("80"),
                amount=_d("80.00"),
                tax_rate=_d("0.19"),
                tax_amount=_d("15.20"),
            ),
        ],
        totals=Totals(net=_d("1280.00"), tax=_d("243.20"), gross=_d("1523.20")),
    )


def _ubl_credit_note() -> Invoice:
    return Invoice(
        kind=InvoiceKind.CREDIT_NOTE,
        number="INV-2026-0042",  # the same number as the invoice: a different identity (CRN, not INV)
        country="DE",
        currency="EUR",
        issue_date=date(2026, 6, 20),
        seller=SELLER_DE,
        buyer=BUYER_FR,
        lines=[
            Line(
                name="Travel (credited)",
                quantity=_d("1"),
                unit_price=_d("80"),
                amount=_d("80.00"),
                tax_rate=_d("0.19"),
                tax_amount=_d("15.20"),
            )
        ],
        totals=Totals(net=_d("80.00"), tax=_d("15.20"), gross=_d("95.20")),
        extra={"billing_reference": "INV-2026-0042"},
    )


def _cii_invoice() -> Invoice:
    return Invoice(
        kind=InvoiceKind.INVOICE,
        number="F20260023",
        country="GB",
        currency="GBP",
        issue_date=date(2026, 1, 31),
        seller=SELLER_GB,
        buyer=Party(name="The Buyercompany", country="GB"),
        lines=[
            Line(
                name="Paper, A4, 500 sheets",
                quantity=_d("20"),
                unit_price=_d("4.50"),
                amount=_d("90.00"),
                tax_rate=_d("0.20"),
                tax_amount=_d("18.00"),
            ),
            Line(
                name="Children's books",
                quantity=_d("2"),
                unit_price=_d("5.00"),
                amount=_d("10.00"),
                tax_rate=_d("0"),
                tax_category=TaxCategory.ZERO,
                tax_amount=_d("0"),
            ),
        ],
        totals=Totals(net=_d("100.00"), tax=_d("18.00"), gross=_d("118.00")),
    )


def _usd_prepaid() -> Invoice:
    return Invoice(
        kind=InvoiceKind.INVOICE,
        number="US-7781",
        country="DE",
        currency="USD",
        issue_date=date(2025, 11, 3),
        seller=SELLER_DE,
        buyer=BUYER_US,
        lines=[
            Line(
                name="Annual licence",
                quantity=_d("1"),
                unit_price=_d("2400"),
                amount=_d("2400.00"),
                tax_rate=_d("0"),
                tax_category=TaxCategory.REVERSE_CHARGE,
                tax_amount=_d("0"),
            )
        ],
        totals=Totals(net=_d("2400.00"), tax=_d("0"), gross=_d("2400.00"), prepaid=_d("400.00")),
    )


# ---------------------------------------------------------------------------------------------------
# Original documents in the formats these invoices travel in
# ---------------------------------------------------------------------------------------------------
def _cn_xml(inv: Invoice) -> bytes:
    label = "01" if inv.kind is InvoiceKind.CN_DIGITAL_SPECIAL else "02"
    items = "".join(
        "<IssuItemInformation>"
        f"<ItemName>{escape(line.name)}</ItemName>"
        f"<Quantity>{line.quantity if line.quantity is not None else ''}</Quantity>"
        f"<Amount>{line.amount}</Amount><TaxRate>{line.tax_rate}</TaxRate>"
        f"<ComTaxAm>{line.tax_amount}</ComTaxAm></IssuItemInformation>"
        for line in inv.lines
    )
    red = (
        "<SpecificInformation><RedEInvoice>"
        f"<OriginalInvoiceNumber>{inv.reverses}</OriginalInvoiceNumber>"
        f"<RedReasonCode>{inv.reversal_reason}</RedReasonCode></RedEInvoice></SpecificInformation>"
        if inv.reverses
        else ""
    )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?><EInvoice><Header>'
        f"<EIid>{inv.number}</EIid><EInvoiceTag>SWEI{inv.number[2:4]}00</EInvoiceTag>"
        f"<InherentLabel><GeneralOrSpecialVAT><LabelCode>{label}</LabelCode></GeneralOrSpecialVAT>"
        "</InherentLabel></Header><EInvoiceData>"
        f"<SellerInformation><SellerIdNum>{inv.seller.tax_id}</SellerIdNum>"
        f"<SellerName>{escape(inv.seller.name)}</SellerName></SellerInformation>"
        f"<BuyerInformation><BuyerIdNum>{inv.buyer.tax_id or ''}</BuyerIdNum>"
        f"<BuyerName>{escape(inv.buyer.name)}</BuyerName></BuyerInformation>"
        f"<BasicInformation><TotalAmWithoutTax>{inv.totals.net}</TotalAmWithoutTax>"
        f"<TotalTaxAm>{inv.totals.tax}</TotalTaxAm>"
        f"<TotalTax-includedAmount>{inv.totals.gross}</TotalTax-includedAmount></BasicInformation>"
        f"{items}{red}</EInvoiceData><TaxSupervisionInfo><InvoiceNumber>{inv.number}</InvoiceNumber>"
        f"<IssueTime>{inv.issue_date.isoformat()}</IssueTime></TaxSupervisionInfo></EInvoice>"
    )
    return text.encode("utf-8")


def _ubl_xml(inv: Invoice) -> bytes:
    root = "CreditNote" if inv.kind is InvoiceKind.CREDIT_NOTE else "Invoice"
    ns = f"urn:oasis:names:specification:ubl:schema:xsd:{root}-2"
    type_code = "381" if root == "CreditNote" else "380"
    qty = "CreditedQuantity" if root == "CreditNote" else "InvoicedQuantity"
    lines = "".join(
        f"<cac:{root}Line><cbc:ID>{i + 1}</cbc:ID><cbc:{qty}>{line.quantity}</cbc:{qty}>"
        f'<cbc:LineExtensionAmount currencyID="{inv.currency}">{line.amount}</cbc:LineExtensionAmount>'
        f"<cac:Item><cbc:Name>{escape(line.name)}</cbc:Name></cac:Item></cac:{root}Line>"
        for i, line in enumerate(inv.lines)
    )
    text = (
        f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="{ns}" '
        'xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2" '
        'xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">'
        f"<cbc:ID>{inv.number}</cbc:ID><cbc:IssueDate>{inv.issue_date.isoformat()}</cbc:IssueDate>"
        f"<cbc:{root}TypeCode>{type_code}</cbc:{root}TypeCode>"
        f"<cbc:DocumentCurrencyCode>{inv.currency}</cbc:DocumentCurrencyCode>"
        f"<cac:AccountingSupplierParty><cac:Party><cac:PartyTaxScheme><cbc:CompanyID>{inv.seller.tax_id}"
        f"</cbc:CompanyID></cac:PartyTaxScheme><cac:PartyLegalEntity><cbc:RegistrationName>"
        f"{escape(inv.seller.name)}</cbc:RegistrationName></cac:PartyLegalEntity></cac:Party>"
        f"</cac:AccountingSupplierParty><cac:AccountingCustomerParty><cac:Party><cac:PartyLegalEntity>"
        f"<cbc:RegistrationName>{escape(inv.buyer.name)}</cbc:RegistrationName></cac:PartyLegalEntity>"
        f"</cac:Party></cac:AccountingCustomerParty><cac:LegalMonetaryTotal>"
        f'<cbc:TaxExclusiveAmount currencyID="{inv.currency}">{inv.totals.net}</cbc:TaxExclusiveAmount>'
        f'<cbc:TaxInclusiveAmount currencyID="{inv.currency}">{inv.totals.gross}</cbc:TaxInclusiveAmount>'
        f'<cbc:PayableAmount currencyID="{inv.currency}">{inv.totals.amount_due}</cbc:PayableAmount>'
        f"</cac:LegalMonetaryTotal>{lines}</{root}>"
    )
    return text.encode("utf-8")


def _cii_xml(inv: Invoice) -> bytes:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?><rsm:CrossIndustryInvoice '
        'xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100" '
        'xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100" '
        'xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">'
        f"<rsm:ExchangedDocument><ram:ID>{inv.number}</ram:ID><ram:TypeCode>380</ram:TypeCode>"
        f'<ram:IssueDateTime><udt:DateTimeString format="102">{inv.issue_date:%Y%m%d}'
        "</udt:DateTimeString></ram:IssueDateTime></rsm:ExchangedDocument>"
        "<rsm:SupplyChainTradeTransaction><ram:ApplicableHeaderTradeAgreement><ram:SellerTradeParty>"
        f"<ram:Name>{escape(inv.seller.name)}</ram:Name><ram:SpecifiedTaxRegistration>"
        f'<ram:ID schemeID="VA">{inv.seller.tax_id}</ram:ID></ram:SpecifiedTaxRegistration>'
        f"</ram:SellerTradeParty><ram:BuyerTradeParty><ram:Name>{escape(inv.buyer.name)}</ram:Name>"
        "</ram:BuyerTradeParty></ram:ApplicableHeaderTradeAgreement><ram:ApplicableHeaderTradeSettlement>"
        f"<ram:InvoiceCurrencyCode>{inv.currency}</ram:InvoiceCurrencyCode>"
        "<ram:SpecifiedTradeSettlementHeaderMonetarySummation>"
        f"<ram:TaxBasisTotalAmount>{inv.totals.net}</ram:TaxBasisTotalAmount>"
        f"<ram:TaxTotalAmount>{inv.totals.tax}</ram:TaxTotalAmount>"
        f"<ram:GrandTotalAmount>{inv.totals.gross}</ram:GrandTotalAmount>"
        f"<ram:DuePayableAmount>{inv.totals.amount_due}</ram:DuePayableAmount>"
        "</ram:SpecifiedTradeSettlementHeaderMonetarySummation></ram:ApplicableHeaderTradeSettlement>"
        "</rsm:SupplyChainTradeTransaction></rsm:CrossIndustryInvoice>"
    )
    return text.encode("utf-8")


def _pdf(title: str, embedded: Document) -> bytes:
    """A small, well-formed one-page PDF naming the invoice (the container a platform hands back)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({title}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /EmbeddedSha256 (%s) >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        embedded.sha256.encode(),
        xref,
    )
    return bytes(out)


def _item(
    name: str,
    invoice: Invoice,
    fmt: str,
    *,
    container: bool = False,
    tags: tuple[str, ...] = (),
) -> GoldenItem:
    if fmt == "cn_xml":
        content, media, suffix = _cn_xml(invoice), "application/xml", ".xml"
    elif fmt == "ubl":
        content, media, suffix = _ubl_xml(invoice), "application/xml", ".xml"
    elif fmt == "cii":
        content, media, suffix = _cii_xml(invoice), "application/xml", ".xml"
    else:
        content, media, suffix = invoice.model_dump_json(indent=2).encode(), "application/json", ".json"
    attachment = None
    if container:
        pdf_probe = Document(content=content, media_type=media, filename=f"{name}{suffix}")
        pdf_bytes = _pdf(f"{invoice.kind.value} {invoice.number}", pdf_probe)
        attachment = Document(
            content=pdf_bytes,
            media_type="application/pdf",
            filename=f"{name}.pdf",
            source="hub.testing.golden",
            origin=f"golden:{name}.pdf",
        )
    original = Document(
        content=content,
        media_type=media,
        filename=f"{name}{suffix}",
        source="hub.testing.golden",
        origin=f"golden:{name}{suffix}",
        parent_sha256=attachment.sha256 if attachment else None,
    )
    return GoldenItem(name, invoice, original, attachment, frozenset({fmt, *tags}))


def golden_set() -> list[GoldenItem]:
    """The golden invoices, in delivery order (the red-letter reversal after the invoice it reverses)."""
    return [
        _item("cn-digital-special", _cn_digital_special(), "cn_xml", container=True, tags=("cn", "bank")),
        _item("cn-digital-ordinary", _cn_digital_ordinary(), "json", tags=("cn",)),
        _item("cn-legacy-special", _cn_legacy_special(), "json", tags=("cn", "legacy", "bank")),
        _item("cn-red-letter", _cn_red_letter(), "cn_xml", container=True, tags=("cn", "red_letter")),
        _item("ubl-invoice", _ubl_invoice(), "ubl", tags=("en16931", "bank")),
        _item("ubl-credit-note", _ubl_credit_note(), "ubl", tags=("en16931",)),
        _item("cii-invoice-gbp", _cii_invoice(), "cii", container=True, tags=("en16931",)),
        _item("usd-prepaid", _usd_prepaid(), "json", tags=("en16931",)),
    ]


def status_change(item: GoldenItem, status: InvoiceStatus = InvoiceStatus.RED_LETTERED) -> Invoice:
    """The same invoice with a new lifecycle status (same content hash; idempotency key ``hash:status``)."""
    return item.invoice.model_copy(update={"status": status})


__all__ = ["BANK_ACCOUNTS", "GoldenItem", "golden_set", "status_change"]
