"""Canonical form and content hash (contract: see DESIGN.md, "Content hash").

The content hash is SHA-256 over orjson with sorted keys of the invoice's *business* fields:

* text: NFKC (full-width → half-width), zero-width characters and BOM removed, whitespace collapsed
  and trimmed, and no space between two CJK characters (``北京 清泉`` is ``北京清泉``);
* identifiers (numbers, codes, tax ids, bank accounts): also without spaces and hyphens, upper case;
* numbers: ``Decimal`` written with ``'f'`` and without trailing zeros, so ``100``, ``100.00`` and
  ``1E+2`` are one value and ``-0`` is ``0``; never float;
* dates: ISO ``YYYY-MM-DD``; lines in document order.

Not content: ``status`` (a lifecycle event of the same invoice), ``extra`` (provenance, payment means,
remarks, drawer), and anything about the file or the channel. Payment means are left out on purpose:
the same invoice is often delivered once as XML and once embedded in a PDF whose payment block differs
(card details vs. IBAN), and neither changes what was sold, to whom, or what is owed.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson

from hub.models import Invoice, Line, Party, Totals, compact_id, compact_number, nfkc

_SPACES = re.compile(r"\s+")
_CJK = "\u2e80-\u9fff\uf900-\ufaff"
#: A space between two CJK characters carries no meaning (manual entry and OCR add them).
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")

#: Bump when the canonical form changes; stored beside every hash in the ledger.
CANONICAL_VERSION = 1


@lru_cache(maxsize=65536)
def text(value: str | None) -> str | None:
    if value is None:
        return None
    out = _CJK_GAP.sub("", _SPACES.sub(" ", nfkc(value)).strip())
    return out or None


def ident(value: str | None) -> str | None:
    return (compact_id(value) or None) if value else None


def number(value: Decimal | None) -> str | None:
    if value is None:
        return None
    if not value:
        return "0"  # 0, 0.00, -0 and 0E-7 alike (and the defaults of most totals fields, at no cost)
    out = str(value)  # "214.02", "100.00": already plain; only exponents need normalising
    if "E" in out:
        out = format(value.normalize(), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out


# Every dict below is written with its keys in sorted order: the canonical bytes are orjson's with
# sorted keys (tests/test_canonical.py checks it), without asking orjson to sort each object again.
def _party(p: Party) -> dict[str, Any]:
    return {
        "address": text(p.address),
        "bank_account": ident(p.bank_account),
        "bank_name": text(p.bank_name),
        "country": ident(p.country),
        "name": text(p.name),
        "phone": ident(p.phone),
        "tax_id": ident(p.tax_id),
    }


def _line(line: Line) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Only when present, so invoices without line allowances keep the hash they always had.
    if line.allowances:
        out["allowances"] = number(line.allowances)
    out["amount"] = number(line.amount)
    if line.charges:
        out["charges"] = number(line.charges)
    out["name"] = text(line.name)
    out["quantity"] = number(line.quantity)
    out["spec"] = text(line.spec)
    out["tax_amount"] = number(line.tax_amount)
    out["tax_category"] = line.tax_category._value_  # the str; ``.value`` is a slow descriptor
    out["tax_code"] = ident(line.tax_code)
    out["tax_rate"] = number(line.tax_rate)
    out["unit"] = text(line.unit)
    out["unit_price"] = number(line.unit_price)
    return out


def _totals(t: Totals) -> dict[str, Any]:
    return {
        "allowances": number(t.allowances),
        "charges": number(t.charges),
        "gross": number(t.gross),
        "net": number(t.net),
        "payable": number(t.amount_due),
        "prepaid": number(t.prepaid),
        "tax": number(t.tax),
    }


def canonical_dict(invoice: Invoice) -> dict[str, Any]:
    """The business content of ``invoice`` in canonical form (a plain, JSON-ready dict)."""
    return {
        "buyer": _party(invoice.buyer),
        "code": ident(invoice.code),
        "country": ident(invoice.country),
        "currency": ident(invoice.currency),
        "issue_date": invoice.issue_date.isoformat(),
        "kind": invoice.kind._value_,
        "lines": [_line(line) for line in invoice.lines],
        "number": compact_number(invoice.number),
        "reversal_reason": text(invoice.reversal_reason),
        "reverses": compact_number(invoice.reverses) if invoice.reverses else None,
        "seller": _party(invoice.seller),
        "totals": _totals(invoice.totals),
        "v": CANONICAL_VERSION,
    }


def canonical_bytes(invoice: Invoice) -> bytes:
    return orjson.dumps(canonical_dict(invoice))


def content_hash(invoice: Invoice) -> str:
    """SHA-256 (hex) of the canonical business content: the idempotency key of an invoice version."""
    return hashlib.sha256(canonical_bytes(invoice)).hexdigest()
