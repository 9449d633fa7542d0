"""Field mapping shared by the ERP connectors (``erp.sql``, ``erp.rest``).

A mapping is a dict of dotted paths: ``{"seller.tax_id": "seller_tax_id"}`` reads "the invoice's
``seller.tax_id`` lives in the ERP's ``seller_tax_id``". Paths walk dicts and list indexes
(``lines.0.amount``). Besides the invoice's own fields a few *virtual* paths are known:
``identity``, ``content_hash`` and ``idempotency_key`` (only when writing a delivery).

Numbers from JSON arrive as floats when a driver or an HTTP client decoded them; they are turned back
into ``Decimal`` through their shortest round-trip text (``repr``), so ``100.1`` stays ``100.1``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from hub.canonical import content_hash
from hub.models import Invoice

_MISSING = object()

#: Paths that are not fields of ``Invoice`` but can be mapped.
VIRTUAL_PATHS = frozenset({"identity", "content_hash", "idempotency_key"})


def get_path(data: Any, path: str, default: Any = None) -> Any:
    """Read a dotted path from nested dicts/lists; ``default`` when any step is missing."""
    current = data
    for step in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(step, _MISSING)
        elif isinstance(current, list | tuple) and step.lstrip("-").isdigit():
            index = int(step)
            current = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            current = getattr(current, step, _MISSING)
        if current is _MISSING:
            return default
    return current


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at a dotted path, creating the dicts on the way."""
    steps = path.split(".")
    current = data
    for step in steps[:-1]:
        nxt = current.get(step)
        if not isinstance(nxt, dict):
            nxt = {}
            current[step] = nxt
        current = nxt
    current[steps[-1]] = value


def decimals(value: Any) -> Any:
    """Floats (anywhere inside dicts/lists) → Decimal through their shortest round-trip text."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [decimals(v) for v in value]
    return value


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """JSON text with Decimals as strings and dates in ISO form (never floats for money)."""
    return json.dumps(value, default=json_default, ensure_ascii=False, sort_keys=True)


def loads(value: Any) -> Any:
    """A JSON column's value as Python data: drivers hand back text (MariaDB) or decoded data (psycopg)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        if not value.strip():
            return None
        return json.loads(value, parse_float=Decimal)
    return decimals(value)


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    """The invoice as JSON-ready data (Decimals as strings, dates ISO)."""
    return invoice.model_dump(mode="json")


def invoice_value(invoice: Invoice, path: str, *, idempotency_key: str | None = None) -> Any:
    """Read a mapped path from an invoice (its fields, ``extra.*``, or a virtual path)."""
    if path == "identity":
        return invoice.identity
    if path == "content_hash":
        return content_hash(invoice)
    if path == "idempotency_key":
        return idempotency_key
    return get_path(invoice, path)


def build_invoice(data: dict[str, Any], *, where: str) -> Invoice:
    """Validate mapped data into an Invoice; the error names ``where`` (table row, record) and each field."""
    try:
        return Invoice.model_validate(decimals(data))
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(invoice)'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{where} does not map to a valid invoice: {problems}") from exc
