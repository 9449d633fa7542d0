"""OFD (GB/T 33190): the ZIP container Chinese e-invoices come in; reads the invoice data it embeds.

Where the data sits, most trusted first (a field missing from one place is taken from the next):

1. ``Attachs/original_invoice.xml`` (or another XML attachment listed in the document's
   ``Attachments.xml``): the invoice itself, either a 数电 ``EInvoice`` XML — read by the 数电 XML
   reader of ``parse_cn_xml``, so an OFD and the XML sent beside it give the same invoice and the same
   content hash — or the legacy ``fp:eInvoice`` schema;
2. ``Tags/CustomTags.xml``: custom tag files whose leaves (``InvoiceNo``, ``SellerTaxID``,
   ``GoodsInfo/Amount`` ...) either hold the value or point (``ObjectRef``) at a text object on a page,
   whose text is the value; both the legacy ``fp:eInvoice`` schema and the flat 数电 layout (repeated
   leaves instead of ``GoodsInfo`` groups);
3. ``CustomData`` entries in ``OFD.xml`` (``发票号码``, ``开票日期``, ``合计金额`` ...), which 数电 OFDs use
   for the key fields.

An OFD with none of these is refused with "no structured invoice data" (a dead letter a person keys
in). When a platform returns both OFD and PDF, the OFD is the legal original.

Why a small reader here and not a library: easyofd is a renderer (it pulls in PyMuPDF, reportlab and
loguru) with no invoice-field reader; ofdkit reads invoice fields (and its layout knowledge shaped this
module) but parses with the standard library's ElementTree without entity hardening and silently
"repairs" malformed XML — wrong for a legal original we must refuse clearly when broken — and is not
a project dependency. This reader is zipfile + the hub's hardened XML parser (``_xml.parse_xml``),
with the same size limits as the ZIP parser.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from invoice_hub_plugins._xml import Element, child, children, local, parse_xml, text, to_decimal
from invoice_hub_plugins.parse_cn_xml import read_cn_xml
from invoice_hub_plugins.parse_zip import DEFAULT_LIMITS, ZipLimits, is_ofd_package

from hub import hookimpl
from hub.connectors import Parser, ParseResult
from hub.errors import ParseError
from hub.models import Document, Invoice, InvoiceKind, Line, Party, TaxCategory, Totals

NO_DATA = "no structured invoice data"
ORIGINAL_INVOICE = "attachs/original_invoice.xml"

#: ``CustomData`` names in OFD.xml → leaf names of the e-invoice schema (compared without spaces/punctuation).
CUSTOM_DATA_NAMES = {
    "发票号码": "InvoiceNo",
    "发票代码": "InvoiceCode",
    "开票日期": "IssueDate",
    "校验码": "InvoiceCheckCode",
    "机器编号": "MachineNo",
    "合计金额": "TaxExclusiveTotalAmount",
    "合计税额": "TaxTotalAmount",
    "价税合计": "TaxInclusiveTotalAmount",
    "购买方名称": "BuyerName",
    "购买方纳税人识别号": "BuyerTaxID",
    "购买方统一社会信用代码/纳税人识别号": "BuyerTaxID",
    "购买方地址电话": "BuyerAddrTel",
    "购买方开户行及账号": "BuyerFinancialAccount",
    "销售方名称": "SellerName",
    "销售方纳税人识别号": "SellerTaxID",
    "销售方统一社会信用代码/纳税人识别号": "SellerTaxID",
    "销售方地址电话": "SellerAddrTel",
    "销售方开户行及账号": "SellerFinancialAccount",
    "发票类型": "InvoiceType",
    "票种": "InvoiceType",
    "开票人": "InvoiceClerk",
    "备注": "Note",
}
#: Line item leaves (legacy ``GoodsInfo`` children and the flat 数电 custom tag layout).
ITEM_LEAVES = (
    "Item",
    "Specification",
    "MeasurementDimension",
    "Quantity",
    "Price",
    "Amount",
    "TaxScheme",
    "TaxAmount",
)
KEY_LEAVES = ("InvoiceNo", "TaxInclusiveTotalAmount", "TaxExclusiveTotalAmount")
_CUSTOM_KEY = re.compile(r"[\s、，,:：]")


def is_ofd(document: Document) -> bool:
    if (document.filename or "").lower().endswith(".ofd") or document.media_type.lower().startswith(
        "application/ofd"
    ):
        return True
    return is_ofd_package(document.content)


# ---------------------------------------------------------------------------------------------------
# The package
# ---------------------------------------------------------------------------------------------------
class _Package:
    """Read-only access to the OFD's parts, with size limits and path resolution."""

    def __init__(self, content: bytes, label: str, limits: ZipLimits) -> None:
        self.label = label
        self.limits = limits
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(content))
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise ParseError(f"{label} is not a readable OFD (ZIP container): {exc}") from exc
        infos = self.zip.infolist()
        if len(infos) > limits.max_members:
            raise ParseError(f"zip limit max_members exceeded: {label} holds {len(infos)} parts")
        self.names = {info.filename.lstrip("/").lower(): info for info in infos if not info.is_dir()}
        self.read_bytes = 0
        self.parsed: dict[str, Element] = {}

    def close(self) -> None:
        self.zip.close()

    def find(self, path: str) -> str | None:
        key = posixpath.normpath(path.replace("\\", "/").lstrip("/")).lower()
        return key if key in self.names else None

    def resolve(self, base_file: str, location: str | None) -> str | None:
        """An OFD location: absolute from the package root, else relative to ``base_file``'s folder."""
        if not location:
            return None
        location = location.strip().replace("\\", "/")
        if location.startswith("/"):
            return self.find(location)
        return self.find(posixpath.join(posixpath.dirname(base_file), location)) or self.find(location)

    def read(self, key: str) -> bytes:
        info = self.names[key]
        where = f"{self.label}!{info.filename}"
        limits = self.limits
        if info.file_size > limits.max_member_bytes or (
            info.file_size > limits.ratio_floor_bytes
            and info.file_size > limits.max_ratio * max(info.compress_size, 1)
        ):
            raise ParseError(
                f"zip limit exceeded: {where} declares {info.file_size} bytes from {info.compress_size}"
            )
        try:
            with self.zip.open(info) as stream:
                data = stream.read(limits.max_member_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise ParseError(f"{where} is damaged and cannot be decompressed ({exc})") from exc
        if len(data) > limits.max_member_bytes:
            raise ParseError(
                f"zip limit max_member_bytes exceeded: {where} expands past {limits.max_member_bytes}"
            )
        self.read_bytes += len(data)
        if self.read_bytes > limits.max_total_bytes:
            raise ParseError(f"zip limit max_total_bytes exceeded while reading {self.label}")
        return data

    def xml(self, key: str) -> Element:
        """The parsed part, parsed once however often the reader asks for it."""
        if key not in self.parsed:
            self.parsed[key] = parse_xml(self.read(key), name=f"{self.label}!{self.names[key].filename}")
        return self.parsed[key]


# ---------------------------------------------------------------------------------------------------
# Sources of invoice data
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Source:
    """Values from one place in the OFD: leaf name → values in document order, plus grouped items."""

    name: str
    values: dict[str, list[str]] = field(default_factory=dict)
    items: list[dict[str, str]] = field(default_factory=list)

    def first(self, leaf: str) -> str | None:
        return next(iter(self.values.get(leaf, [])), None)

    def is_invoice(self) -> bool:
        return any(self.values.get(leaf) for leaf in KEY_LEAVES)

    def flat_items(self) -> list[dict[str, str]]:
        """数电 custom tags repeat the item leaves at top level instead of grouping them."""
        columns = {leaf: self.values.get(leaf, []) for leaf in ITEM_LEAVES}
        count = max((len(v) for v in columns.values()), default=0)
        return [{leaf: v[i] for leaf, v in columns.items() if i < len(v)} for i in range(count)]


def _collect(root: Element, name: str, resolve: Any = None) -> _Source:
    """Leaves of an invoice tree; ``resolve(page_ref, object_id)`` turns an ObjectRef into page text."""
    source = _Source(name)

    def value_of(element: Element) -> str | None:
        refs = list(children(element, "ObjectRef"))
        if refs and resolve is not None:
            parts = [resolve(ref.get("PageRef"), (ref.text or "").strip()) for ref in refs]
            return "".join(p for p in parts if p).strip() or None
        return text(element)

    def visit(element: Element, depth: int) -> None:
        leaf = local(element.tag)
        if not leaf or depth > 16:
            return
        if leaf == "GoodsInfo":
            item = {local(c.tag): v for c in element if local(c.tag) and (v := value_of(c)) is not None}
            if item:
                source.items.append(item)
            return
        inner = [c for c in element if local(c.tag) and local(c.tag) != "ObjectRef"]
        if not inner:
            value = value_of(element)
            if value is not None:
                source.values.setdefault(leaf, []).append(value)
            return
        for c in inner:
            visit(c, depth + 1)

    for element in root:
        visit(element, 0)
    return source


@dataclass
class _Ofd:
    package: _Package
    documents: list[str]  # Document.xml keys
    custom_data: dict[str, str]
    page_text: dict[str, dict[str, str]] = field(default_factory=dict)  # page key → object id → text
    lookups: dict[tuple[str, str | None], dict[str, str]] = field(default_factory=dict)


def _open(package: _Package) -> _Ofd:
    entry = package.find("OFD.xml")
    if entry is None:
        raise ParseError(f"{package.label} is a ZIP file but not an OFD (no OFD.xml at its root)")
    root = package.xml(entry)
    documents: list[str] = []
    custom: dict[str, str] = {}
    for body in children(root, "DocBody"):
        for item in children(child(body, "DocInfo", "CustomDatas"), "CustomData"):
            key = _CUSTOM_KEY.sub("", item.get("Name") or "")
            if key and (value := text(item)) is not None:
                custom[key] = value
        doc = package.resolve(entry, text(body, "DocRoot"))
        if doc is not None:
            documents.append(doc)
    return _Ofd(package, documents, custom)


def _page_objects(ofd: _Ofd, doc_key: str, page_ref: str | None) -> dict[str, str]:
    """Object id → text of the text objects on the page ``page_ref`` (or every page)."""
    if (doc_key, page_ref) in ofd.lookups:
        return ofd.lookups[doc_key, page_ref]
    package = ofd.package
    root = package.xml(doc_key)
    found: dict[str, str] = {}
    for page in children(child(root, "Pages"), "Page"):
        if page_ref and page.get("ID") != page_ref:
            continue
        key = package.resolve(doc_key, page.get("BaseLoc"))
        if key is None:
            continue
        if key not in ofd.page_text:
            objects: dict[str, str] = {}
            for element in package.xml(key).iter():
                if local(element.tag) == "TextObject" and element.get("ID"):
                    codes = [c.text or "" for c in element if local(c.tag) == "TextCode"]
                    objects[element.get("ID") or ""] = "".join(codes).strip()
            ofd.page_text[key] = objects
        found.update(ofd.page_text[key])
    ofd.lookups[doc_key, page_ref] = found
    return found


def _attachments(ofd: _Ofd) -> tuple[Element | None, list[_Source]]:
    """(a 数电 EInvoice root if attached, legacy-schema sources) from the attachments."""
    package = ofd.package
    keys: list[str] = []
    direct = [k for k in package.names if k == ORIGINAL_INVOICE or k.endswith("/" + ORIGINAL_INVOICE)]
    keys.extend(direct)
    for doc in ofd.documents:
        listing_key = package.resolve(doc, text(package.xml(doc), "Attachments"))
        if listing_key is None:
            continue
        for attachment in children(package.xml(listing_key), "Attachment"):
            key = package.resolve(listing_key, text(attachment, "FileLoc"))
            if key and key.endswith(".xml") and key not in keys:
                keys.append(key)
    sources: list[_Source] = []
    for key in keys:
        root = package.xml(key)
        if local(root.tag) == "EInvoice":
            return root, []
        source = _collect(root, f"attachment {package.names[key].filename}")
        if source.is_invoice():
            sources.append(source)
    return None, sources


def _custom_tags(ofd: _Ofd) -> list[_Source]:
    package = ofd.package
    sources: list[_Source] = []
    for doc in ofd.documents:
        index_key = package.resolve(doc, text(package.xml(doc), "CustomTags"))
        if index_key is None:
            continue
        for tag in children(package.xml(index_key), "CustomTag"):
            key = package.resolve(index_key, text(tag, "FileLoc"))
            if key is None:
                continue

            def resolve(page_ref: str | None, object_id: str, doc: str = doc) -> str | None:
                return _page_objects(ofd, doc, page_ref).get(object_id)

            source = _collect(package.xml(key), f"custom tags {package.names[key].filename}", resolve)
            if source.is_invoice():
                sources.append(source)
    return sources


# ---------------------------------------------------------------------------------------------------
# Building the invoice
# ---------------------------------------------------------------------------------------------------
def _rate(value: str | None) -> tuple[Decimal | None, TaxCategory]:
    if value is None:
        return None, TaxCategory.STANDARD
    value = value.strip()
    if value in ("免税", "不征税"):
        return None, TaxCategory.EXEMPT if value == "免税" else TaxCategory.NOT_TAXABLE
    if value in ("***", "*", "-"):
        return None, TaxCategory.OTHER
    number = to_decimal(value.rstrip("%"), f"tax rate {value!r}")
    if number is None:
        return None, TaxCategory.OTHER
    if value.endswith("%") or number >= 1:
        number = number / 100
    return number, TaxCategory.ZERO if number == 0 else TaxCategory.STANDARD


def _money(value: str | None, where: str) -> Decimal | None:
    if value is None:
        return None
    return to_decimal(re.sub(r"[¥￥元\s]", "", value), where)


def _title(ofd: _Ofd) -> str | None:
    """The invoice title printed on the first page (``增值税电子专用发票``, ``电子发票（普通发票）``)."""
    for doc in ofd.documents:
        pages = list(children(child(ofd.package.xml(doc), "Pages"), "Page"))
        if not pages:
            continue
        for value in _page_objects(ofd, doc, pages[0].get("ID")).values():
            compact = re.sub(r"\s", "", value)
            if "发票" in compact and ("专用" in compact or "普通" in compact):
                return compact
    return None


def _from_leaves(sources: list[_Source], label: str, title: str | None = None) -> Invoice:
    def first(leaf: str) -> str | None:
        return next((v for s in sources if (v := s.first(leaf)) is not None), None)

    number, code = first("InvoiceNo"), first("InvoiceCode")
    issue_date = first("IssueDate")
    net = _money(first("TaxExclusiveTotalAmount"), f"{label} TaxExclusiveTotalAmount")
    tax = _money(first("TaxTotalAmount"), f"{label} TaxTotalAmount")
    gross = _money(first("TaxInclusiveTotalAmount"), f"{label} TaxInclusiveTotalAmount")
    required = (("InvoiceNo", number), ("IssueDate", issue_date), ("SellerName", first("SellerName")))
    missing = [leaf for leaf, value in required if value is None]
    if net is None and gross is None:
        missing.append("TaxExclusiveTotalAmount/TaxInclusiveTotalAmount")
    if missing or number is None:
        raise ParseError(f"{label}: the embedded invoice data lacks {', '.join(missing)}")
    if net is None:
        net = (gross or Decimal(0)) - (tax or Decimal(0))
    if tax is None:
        tax = (net if gross is None else gross) - net
    if gross is None:
        gross = net + tax
    special = "专用" in (first("InvoiceType") or title or "")
    digits = re.sub(r"\s", "", number)
    if code and len(digits) != 20:
        kind = InvoiceKind.CN_LEGACY_SPECIAL if special else InvoiceKind.CN_LEGACY_ORDINARY
    else:
        kind = InvoiceKind.CN_DIGITAL_SPECIAL if special else InvoiceKind.CN_DIGITAL_ORDINARY
        code = None

    items: list[dict[str, str]] = []
    for source in sources:
        items = source.items or source.flat_items()
        if items:
            break
    lines = []
    for index, item in enumerate(items):
        where = f"{label} item {index + 1}"
        amount = _money(item.get("Amount"), f"{where} Amount")
        if item.get("Item") is None or amount is None:
            raise ParseError(f"{where} lacks its name (Item) or Amount")
        rate, category = _rate(item.get("TaxScheme"))
        lines.append(
            Line(
                name=item["Item"],
                spec=item.get("Specification"),
                unit=item.get("MeasurementDimension"),
                quantity=_money(item.get("Quantity"), f"{where} Quantity"),
                unit_price=_money(item.get("Price"), f"{where} Price"),
                amount=amount,
                tax_rate=rate,
                tax_category=category,
                tax_amount=_money(item.get("TaxAmount"), f"{where} TaxAmount"),
            )
        )

    def party(prefix: str) -> Party:
        account = first(f"{prefix}FinancialAccount")
        return Party(
            name=first(f"{prefix}Name") or "",
            tax_id=first(f"{prefix}TaxID"),
            address=first(f"{prefix}AddrTel"),
            bank_name=account,
            country="CN" if prefix == "Seller" else None,
        )

    extra = {
        "format": "ofd",
        "sources": [s.name for s in sources],
        "check_code": first("InvoiceCheckCode"),
        "machine_no": first("MachineNo"),
        "drawer": first("InvoiceClerk"),
        "remark": first("Note"),
        "invoice_type": first("InvoiceType") or title,
    }
    buyer = party("Buyer")
    if not buyer.name:
        raise ParseError(f"{label}: the embedded invoice data lacks BuyerName")
    return Invoice(
        kind=kind,
        number=number,
        code=code,
        issue_date=issue_date,
        seller=party("Seller"),
        buyer=buyer,
        lines=lines,
        totals=Totals(net=net, tax=tax, gross=gross, payable=gross),
        extra={k: v for k, v in extra.items() if v not in (None, [], "")},
    )


def read_ofd(content: bytes, *, name: str | None = None, limits: ZipLimits = DEFAULT_LIMITS) -> Invoice:
    label = name or "OFD"
    package = _Package(content, label, limits)
    try:
        ofd = _open(package)
        einvoice, attachment_sources = _attachments(ofd)
        if einvoice is not None:
            invoice = read_cn_xml(einvoice, name=f"{label}!original_invoice.xml")
            invoice.extra["container"] = "ofd"
            return invoice
        sources = [*attachment_sources, *_custom_tags(ofd)]
        custom = _Source("OFD.xml CustomData")
        for key, value in ofd.custom_data.items():
            leaf = CUSTOM_DATA_NAMES.get(key)
            if leaf:
                custom.values.setdefault(leaf, []).append(value)
        if custom.values:
            sources.append(custom)  # also when it only says the invoice type (发票类型)
        if not any(source.is_invoice() for source in sources):
            raise ParseError(
                f"{NO_DATA}: {label} is an OFD without invoice data (no Attachs/original_invoice.xml, no "
                "invoice custom tags, no invoice CustomData); a person has to key it in (hub dlq edit)",
                filename=name,
                code="no_structured_data",
            )
        try:
            return _from_leaves(sources, label, _title(ofd))
        except ValueError as exc:
            raise ParseError(f"{label} holds a value the hub cannot read: {exc}") from exc
    finally:
        package.close()


class OfdParser(Parser):
    """OFD e-invoices (数电 and legacy), claimed before the generic ZIP parser."""

    name: ClassVar[str] = "ofd"
    priority: ClassVar[int] = 60

    def __init__(self, limits: ZipLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def claims(self, document: Document) -> bool:
        return is_ofd(document)

    def parse(self, document: Document) -> ParseResult:
        return ParseResult(invoices=[read_ofd(document.content, name=document.filename, limits=self.limits)])


@hookimpl
def hub_register_parsers() -> list[Parser]:
    return [OfdParser()]
