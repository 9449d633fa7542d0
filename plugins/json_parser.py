"""The JSON invoice parser: the hub's own invoice model as JSON (one invoice, a list, or
``{"invoices": [...]}``).

The common document — one invoice object whose amounts are strings, as the hub itself writes them —
is validated straight from its bytes by pydantic-core (``model_validate_json``): the model refuses
floats for money and rates, so that path never rounds anything. Everything else (a list, the
``invoices`` wrapper, amounts as JSON numbers, a byte-order mark, an error to report) is read with the
standard library's ``json`` and ``parse_float=Decimal`` (orjson and pydantic's JSON reader take
numbers as floats, and money must never pass through a float). A JSON
document that is meant as an invoice but breaks the model becomes a dead letter naming each field
path; a JSON document that is not an invoice at all is refused as such.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pydantic

from hub import Document, Invoice, Parser, ParseResult, hookimpl
from hub.errors import InvoiceInvalid, ParseError, Problem

_INVOICE_KEYS = {"kind", "number", "seller", "totals"}


def _problems(exc: pydantic.ValidationError, prefix: str) -> list[Problem]:
    out = []
    for err in exc.errors():
        path = prefix + ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"])
        out.append(Problem(path.replace(".[", "["), err["msg"], rule="model"))
    return out


def _direct(content: bytes) -> Invoice | None:
    """One invoice object read by pydantic-core in one pass, or None: amounts as JSON numbers (which
    the model refuses as floats), a wrapper, or a real error go the exact way, which reads or names it."""
    if content[:1] != b"{" or b'"invoices"' in content:
        return None
    try:
        return Invoice.model_validate_json(content)
    except pydantic.ValidationError:
        return None


class JsonInvoiceParser(Parser):
    name = "json"
    priority = 10

    def claims(self, document: Document) -> bool:
        if document.media_type in ("application/json", "text/json"):
            return True
        if (document.filename or "").lower().endswith(".json"):
            return True
        head = document.content[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
        return head[:1] in (b"{", b"[") and document.media_type in ("application/octet-stream", "text/plain")

    def parse(self, document: Document) -> ParseResult:
        invoice = _direct(document.content)
        if invoice is not None:
            return ParseResult(invoices=[invoice])
        try:
            data: Any = json.loads(document.content.decode("utf-8-sig"), parse_float=Decimal)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"not valid JSON: {exc}", document=document.filename) from exc
        items = data.get("invoices") if isinstance(data, dict) and "invoices" in data else data
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise ParseError("JSON is not an invoice (expected an object with kind, number, seller, totals)")
        invoices = []
        for i, item in enumerate(items):
            prefix = f"invoices[{i}]." if len(items) > 1 else ""
            if not isinstance(item, dict) or not (_INVOICE_KEYS & set(item)):
                raise ParseError(
                    f"JSON {prefix or 'document'} is not an invoice (no kind, number, seller or totals key)"
                )
            try:
                invoices.append(Invoice.model_validate(item))
            except pydantic.ValidationError as exc:
                raise InvoiceInvalid(_problems(exc, prefix), document=document.filename) from exc
        return ParseResult(invoices=invoices)


@hookimpl
def hub_register_parsers() -> list[Parser]:
    return [JsonInvoiceParser()]
