"""The data model every part of the hub and every plugin shares (a contract: see DESIGN.md).

``Invoice`` holds a Chinese fully digitalised e-invoice (20-digit number), a legacy VAT invoice
(code + 8-digit number) and a UBL/CII commercial invoice or credit note. Money is ``Decimal``;
dates written in any of the forms Chinese and European sources use are read into ``date``.
Identity fields (number, code, tax ids) are normalised on the way in (NFKC, no spaces or hyphens,
upper case) so one invoice has one identity whatever channel it came from; names and addresses keep
their original text for display, and ``hub.canonical`` normalises them for the content hash.
"""

from __future__ import annotations

import os
import random
import re
import time
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import cached_property, lru_cache
from hashlib import sha256
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")

# Ids (events, traces) take their random part from a generator seeded once per process from the OS:
# ``uuid4`` asks the kernel for 16 bytes each time, and intake makes two per invoice.
_ID_SOURCE = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ID_SOURCE.seed(os.urandom(32)))


def new_id() -> str:
    """A time-ordered id as 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits (UUIDv7's
    layout, without its version and variant bits). Ids made later sort later, so the ledger's indexes on
    event ids take a new one at their right edge rather than on a random page (4-7 us less per invoice
    in the ledger write, docs/benchmarks.md, stop 13); 80 random bits per millisecond keep them unique."""
    return f"{time.time_ns() // 1_000_000:012x}{_ID_SOURCE.getrandbits(80):020x}"


# ---------------------------------------------------------------------------------------------------
# Scalar readers: the forms sources actually write
# ---------------------------------------------------------------------------------------------------
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff\u2060"), None)


def nfkc(text: str) -> str:
    """NFKC (full-width → half-width, U+3000 → space) and strip the zero-width characters NFKC keeps."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


_ID_GAPS = re.compile(r"[\s\-]+")


@lru_cache(maxsize=65536)
def compact_id(text: str) -> str:
    """An identifier as compared and stored: NFKC, no whitespace or hyphens, upper case."""
    return _ID_GAPS.sub("", nfkc(text)).upper()


def _read_decimal(value: Any) -> Any:
    if value.__class__ is str and value.isascii() and "," not in value and "%" not in value:
        try:
            return Decimal(value)  # the common case, first: "214.02"
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    if isinstance(value, float):
        raise ValueError("money and quantities must not be floats; pass a string or Decimal")
    if isinstance(value, str):
        text = value.strip() if value.isascii() else nfkc(value).strip().replace("¥", "").replace("￥", "")
        if "," in text:
            text = text.replace(",", "")
        if text.endswith("%"):
            raise ValueError(f"{value!r} is a percentage, not an amount")
        try:
            return Decimal(text)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    return value


def _read_rate(value: Any) -> Any:
    """Tax rates come as ``0.13``, ``13%`` and ``13``; keep a Decimal fraction."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        raise ValueError("a tax rate must not be a float; pass a string or Decimal")
    if value.__class__ is str and value.isascii() and value[:2] == "0." and "%" not in value:
        try:
            return Decimal(value)  # the common case, first: "0.13"
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a tax rate") from None
    text = nfkc(str(value)).strip()
    if text in {"免税", "不征税", "***", ""}:
        return None
    percent = text.endswith("%")
    try:
        number = Decimal(text.rstrip("%").strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a tax rate") from None
    if percent or number > 1:
        number = number / 100
    return number


_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日", "%d.%m.%Y")


def read_date(value: Any) -> Any:
    """Read ``2026-02-28``, ``20260228``, ``2026年02月28日``, ``2025-12-29 13:02:50``, ISO date-times
    and epoch milliseconds (converted in the issuer's zone, Asia/Shanghai)."""
    if isinstance(value, datetime):
        return (value.astimezone(SHANGHAI) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10**11 else value
        return datetime.fromtimestamp(seconds, SHANGHAI).date()
    if isinstance(value, str):
        if len(value) == 10 and value[4] == "-" and value[7] == "-" and value.isascii():
            try:
                return date.fromisoformat(value)  # the common case, first: "2026-02-28"
            except ValueError:
                raise ValueError(f"{value!r} is not a date this hub can read") from None
        text = nfkc(value).strip()
        if text.isdigit() and len(text) >= 10:
            return read_date(int(text))
        head = re.split(r"[ T]", text, maxsplit=1)[0]
        for fmt in _DATE_FORMATS:
            try:
                return datetime.strptime(head, fmt).date()
            except ValueError:
                continue
        raise ValueError(f"{value!r} is not a date this hub can read")
    return value


def _read_id(value: Any) -> Any:
    return compact_id(value) if isinstance(value, str) else value


_SPACES = re.compile(r"\s+")


def compact_number(text: str) -> str:
    """A document number as compared and stored: NFKC, no whitespace, upper case. Hyphens stay:
    ``A-1`` and ``A1`` are two invoices. (Not cached: every invoice has a number of its own, so a cache
    would only grow with the count.)"""
    if text.isascii() and text.isalnum():
        return text.upper()  # the common case: "25312000000000000003"
    return _SPACES.sub("", nfkc(text)).upper()


def _read_number(value: Any) -> Any:
    return compact_number(value) if isinstance(value, str) else value


def _decimal_str(value: Decimal) -> str:
    return format(value, "f")


Money = Annotated[Decimal, BeforeValidator(_read_decimal), PlainSerializer(_decimal_str, return_type=str)]
Quantity = Money
Rate = Annotated[
    Decimal | None,
    BeforeValidator(_read_rate),
    PlainSerializer(lambda v: None if v is None else format(v, "f")),
]
IssueDate = Annotated[date, BeforeValidator(read_date)]
Identifier = Annotated[str, BeforeValidator(_read_id)]
OptIdentifier = Annotated[str | None, BeforeValidator(_read_id)]
DocNumber = Annotated[str, BeforeValidator(_read_number)]
OptDocNumber = Annotated[str | None, BeforeValidator(_read_number)]
#: Free text; surrounding whitespace is stripped by the invoice models' ``str_strip_whitespace``.
Text = str
OptText = str | None


# ---------------------------------------------------------------------------------------------------
# Enumerations
# ---------------------------------------------------------------------------------------------------
class InvoiceKind(StrEnum):
    """What kind of document this is. The kind is part of the identity."""

    CN_DIGITAL_SPECIAL = "cn.digital.special"  # 数电专票 (LabelCode 01)
    CN_DIGITAL_ORDINARY = "cn.digital.ordinary"  # 数电普票 (LabelCode 02)
    CN_LEGACY_SPECIAL = "cn.legacy.special"  # 增值税专用发票
    CN_LEGACY_ORDINARY = "cn.legacy.ordinary"  # 增值税普通发票 (paper or electronic)
    INVOICE = "invoice"  # UBL / CII commercial invoice (type code 380 and kin)
    CREDIT_NOTE = "credit_note"  # UBL CreditNote / CII 381

    @property
    def is_cn_digital(self) -> bool:
        return self in (InvoiceKind.CN_DIGITAL_SPECIAL, InvoiceKind.CN_DIGITAL_ORDINARY)

    @property
    def is_cn_legacy(self) -> bool:
        return self in (InvoiceKind.CN_LEGACY_SPECIAL, InvoiceKind.CN_LEGACY_ORDINARY)

    @property
    def is_cn(self) -> bool:
        return self._value_.startswith("cn.")


class InvoiceStatus(StrEnum):
    """Lifecycle status (``fpzt``). Not content: a change is an ``invoice.status_changed`` event."""

    ISSUED = "issued"  # 0 normal
    VOID = "void"  # 2 作废 (paper and legacy invoices only)
    RED_LETTERED = "red_lettered"  # 3/8 fully reversed by a red-letter invoice
    PARTLY_RED_LETTERED = "partly_red_lettered"  # 7


class TaxCategory(StrEnum):
    STANDARD = "standard"
    ZERO = "zero"
    EXEMPT = "exempt"  # 免税 / EN16931 E
    NOT_TAXABLE = "not_taxable"  # 不征税 / EN16931 O
    REVERSE_CHARGE = "reverse_charge"  # EN16931 AE
    OTHER = "other"


# ---------------------------------------------------------------------------------------------------
# Invoice
# ---------------------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


class _InvoiceModel(_Model):
    """The invoice's own models: text fields come without surrounding whitespace (stripped in
    pydantic-core, not in a Python validator per field)."""

    model_config = ConfigDict(str_strip_whitespace=True)


class Party(_InvoiceModel):
    name: Text
    tax_id: OptIdentifier = None
    address: OptText = None
    phone: OptText = None
    bank_name: OptText = None
    bank_account: OptIdentifier = None
    country: OptIdentifier = None


class Line(_InvoiceModel):
    name: Text
    spec: OptText = None
    unit: OptText = None
    quantity: Quantity | None = None
    unit_price: Money | None = None
    amount: Money
    tax_rate: Rate = None
    tax_category: TaxCategory = TaxCategory.STANDARD
    tax_amount: Money | None = None
    tax_code: OptIdentifier = None  # e.g. the 19-digit tax classification code
    #: EN 16931 line allowances (BG-27) and charges (BG-28), already included in ``amount``.
    allowances: Money = Decimal(0)
    charges: Money = Decimal(0)


class Totals(_InvoiceModel):
    net: Money
    tax: Money
    gross: Money
    allowances: Money = Decimal(0)
    charges: Money = Decimal(0)
    prepaid: Money = Decimal(0)
    payable: Money | None = None

    @property
    def amount_due(self) -> Decimal:
        return self.payable if self.payable is not None else self.gross - self.prepaid


class Invoice(_InvoiceModel):
    """One invoice as the hub understands it, whatever format it arrived in."""

    kind: InvoiceKind
    number: DocNumber
    code: OptIdentifier = None  # legacy invoice code (10 or 12 digits)
    country: Identifier = "CN"
    status: InvoiceStatus = InvoiceStatus.ISSUED
    issue_date: IssueDate
    currency: Identifier = "CNY"
    seller: Party
    buyer: Party
    lines: list[Line] = Field(default_factory=list)
    totals: Totals
    reverses: OptDocNumber = None  # red-letter / correction: the number of the invoice it reverses
    reversal_reason: OptText = None  # red-letter reason code 01-04
    #: Provenance and display data that is *not* business content (payment means, remark, drawer...).
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def identity(self) -> str:
        """The identity key (contract): one invoice, one identity, whatever channel it came from."""
        if self.kind.is_cn_digital:
            return f"CN:{self.number}"
        if self.kind.is_cn_legacy:
            return f"CN:{self.code}:{self.number}"
        doc = "CRN" if self.kind is InvoiceKind.CREDIT_NOTE else "INV"
        return f"{self.country}:{self.seller.tax_id or '-'}:{doc}:{self.number}"

    @property
    def is_red_letter(self) -> bool:
        return self.reverses is not None


# ---------------------------------------------------------------------------------------------------
# Documents and events
# ---------------------------------------------------------------------------------------------------
def utcnow() -> datetime:
    return datetime.now(UTC)


class Document(_Model):
    """Raw bytes as received, with what we know about where they came from."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    content: bytes = Field(repr=False, exclude=True)
    media_type: str = "application/octet-stream"
    filename: str | None = None
    source: str = "manual"
    received_at: AwareDatetime = Field(default_factory=utcnow)
    #: Where the document came from inside its source (file path, IMAP Message-ID, parent archive...).
    origin: str | None = None
    parent_sha256: str | None = None

    @cached_property
    def sha256(self) -> str:
        return sha256(self.content).hexdigest()

    @property
    def size(self) -> int:
        return len(self.content)


EventType = Literal["invoice.received", "invoice.status_changed"]


class Event(_Model):
    """The bus envelope (contract)."""

    id: str = Field(default_factory=new_id)
    type: EventType = "invoice.received"
    source: str
    identity: str
    content_hash: str
    invoice: Invoice
    document_sha256: str | None = None
    trace_id: str = Field(default_factory=new_id)
    received_at: AwareDatetime = Field(default_factory=utcnow)

    @property
    def idempotency_key(self) -> str:
        """What a destination must see at most once: the content hash, plus the status for a change."""
        if self.type == "invoice.status_changed":
            return f"{self.content_hash}:{self.invoice.status}"
        return self.content_hash
