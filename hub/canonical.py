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
    if value is None:
        return None
    return compact_id(value) or None


def number(value: Decimal | None) -> str | None:
    if value is None:
        return None
    if value == 0:
        return "0"
    out = str(value)  # "214.02", "100.00": already plain; only exponents need normalising
    if "E" in out:
        out = format(value.normalize(), "f")
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    return out


def _party(p: Party) -> dict[str, Any]:
    return {
        "name": text(p.name),
        "tax_id": ident(p.tax_id),
        "address": text(p.address),
        "phone": ident(p.phone),
        "bank_name": text(p.bank_name),
        "bank_account": ident(p.bank_account),
        "country": ident(p.country),
    }


def _line(line: Line) -> dict[str, Any]:
    return {
        "name": text(line.name),
        "spec": text(line.spec),
        "unit": text(line.unit),
        "quantity": number(line.quantity),
        "unit_price": number(line.unit_price),
        "amount": number(line.amount),
        "tax_rate": number(line.tax_rate),
        "tax_category": line.tax_category.value,
        "tax_amount": number(line.tax_amount),
        "tax_code": ident(line.tax_code),
        # Only when present, so invoices without line allowances keep the hash they always had.
        **({"allowances": number(line.allowances)} if line.allowances else {}),
        **({"charges": number(line.charges)} if line.charges else {}),
    }


def _totals(t: Totals) -> dict[str, Any]:
    return {
        "net": number(t.net),
        "tax": number(t.tax),
        "gross": number(t.gross),
        "allowances": number(t.allowances),
        "charges": number(t.charges),
        "prepaid": number(t.prepaid),
        "payable": number(t.amount_due),
    }


def canonical_dict(invoice: Invoice) -> dict[str, Any]:
    """The business content of ``invoice`` in canonical form (a plain, JSON-ready dict)."""
    return {
        "v": CANONICAL_VERSION,
        "kind": invoice.kind.value,
        "country": ident(invoice.country),
        "number": compact_number(invoice.number),
        "code": ident(invoice.code),
        "issue_date": invoice.issue_date.isoformat(),
        "currency": ident(invoice.currency),
        "seller": _party(invoice.seller),
        "buyer": _party(invoice.buyer),
        "lines": [_line(line) for line in invoice.lines],
        "totals": _totals(invoice.totals),
        "reverses": compact_number(invoice.reverses) if invoice.reverses else None,
        "reversal_reason": text(invoice.reversal_reason),
    }


def canonical_bytes(invoice: Invoice) -> bytes:
    return orjson.dumps(canonical_dict(invoice), option=orjson.OPT_SORT_KEYS)


def content_hash(invoice: Invoice) -> str:
    """SHA-256 (hex) of the canonical business content: the idempotency key of an invoice version."""
    return hashlib.sha256(canonical_bytes(invoice)).hexdigest()
