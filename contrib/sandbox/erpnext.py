"""A small ERPNext (Frappe) that speaks the REST API, for the ``erp.rest`` connector's ``erpnext`` preset.

Requests follow Frappe's documented REST API: ``Authorization: token <api_key>:<api_secret>``;
``GET /api/resource/<DocType>`` with ``fields`` and ``filters`` (JSON), ``limit_start``,
``limit_page_length`` (default 20; 0 = all) and ``order_by`` → ``{"data": [...]}``;
``GET /api/resource/<DocType>/<name>`` → ``{"data": {...}}``; ``POST /api/resource/<DocType>`` (insert,
``docstatus: 1`` submits on insert) and ``PUT /api/resource/<DocType>/<name>`` (update a draft);
``POST /api/method/frappe.client.submit`` / ``frappe.client.cancel``. Errors carry ``exc_type`` and
``_server_messages`` as Frappe does: 401 ``AuthenticationError``, 404 ``DoesNotExistError``,
409 ``DuplicateEntryError``, 417 ``ValidationError`` / ``MandatoryError`` / ``LinkValidationError``.

DocTypes: ``Customer`` (named by ``customer_name``), ``Item`` (seeded from ``items``), ``Currency``
(CNY, EUR, USD) and ``Sales Invoice``: totals computed from ``items`` and ``taxes`` (``Actual`` and
``On Net Total`` rows), named ``ACC-SINV-2026-00001`` (returns ``ACC-SINV-RET-…``), returns with
``is_return`` + ``return_against`` (a submitted invoice of the same customer; quantities negative),
``docstatus`` 0 draft / 1 submitted / 2 cancelled.

Test hooks (not Frappe): ``GET /_sandbox/stats``, ``POST /_sandbox/faults`` (``force_5xx``,
``force_429`` + ``retry_after``, ``hang_after_create`` + ``hang_seconds``, ``refuse_creates``: every
Sales Invoice insert is refused with a 417 ``ValidationError``), ``POST /_sandbox/reset``.
Start it with ``python -m contrib.sandbox erpnext --option api_keys='["key:secret"]'``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_PORT = 8000
CENT = Decimal("0.01")


class FrappeError(Exception):
    def __init__(self, status: int, exc_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.exc_type = exc_type
        self.message = message


def _validation(message: str, exc_type: str = "ValidationError") -> FrappeError:
    return FrappeError(417, exc_type, message)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _dec(value: Any, field: str) -> Decimal:
    try:
        return Decimal(str(value if value is not None else 0))
    except InvalidOperation:
        raise _validation(f"{field}: {value!r} is not a number") from None


FIELDS: dict[str, set[str]] = {
    "Customer": {"name", "customer_name", "customer_type", "tax_id", "customer_group", "territory"},
    "Item": {"name", "item_code", "item_name", "is_stock_item", "stock_uom"},
    "Currency": {"name", "currency_name", "enabled"},
    "Sales Invoice": {
        "name",
        "customer",
        "customer_name",
        "company",
        "posting_date",
        "posting_time",
        "set_posting_time",
        "due_date",
        "currency",
        "tax_id",
        "remarks",
        "po_no",
        "is_return",
        "return_against",
        "items",
        "taxes",
        "net_total",
        "total_taxes_and_charges",
        "grand_total",
        "outstanding_amount",
        "status",
    },
}
_COMMON = {"name", "doctype", "docstatus", "creation", "modified", "owner", "idx"}


def _matches(doc: dict[str, Any], filters: Any, doctype: str) -> bool:
    terms: list[tuple[str, str, Any]] = []
    if isinstance(filters, dict):
        for field, value in filters.items():
            if isinstance(value, list) and len(value) == 2:
                terms.append((field, value[0], value[1]))
            else:
                terms.append((field, "=", value))
    elif isinstance(filters, list):
        for term in filters:
            if not isinstance(term, list) or len(term) not in (3, 4):
                raise _validation(f"Invalid filter: {term!r}")
            terms.append((term[-3], term[-2], term[-1]))
    else:
        raise _validation("filters must be a list or an object")
    for field, op, value in terms:
        if field not in FIELDS[doctype] | _COMMON:
            raise FrappeError(417, "DataError", f"Field not permitted in query: {field}")
        actual = doc.get(field)
        if isinstance(actual, Decimal) and isinstance(value, int | float | Decimal):
            value = Decimal(str(value))
        op = op.lower()
        if op == "=":
            ok = actual == value
        elif op == "!=":
            ok = actual != value
        elif op in {">", ">=", "<", "<="}:
            if actual is None:
                return False
            ok = {">": actual > value, ">=": actual >= value, "<": actual < value, "<=": actual <= value}[op]
        elif op == "in":
            ok = actual in (value if isinstance(value, list) else str(value).split(","))
        elif op == "not in":
            ok = actual not in (value if isinstance(value, list) else str(value).split(","))
        elif op in {"like", "not like"}:
            hit = str(value).replace("%", "").lower() in str(actual or "").lower()
            ok = hit if op == "like" else not hit
        elif op == "is":
            ok = bool(actual) if value == "set" else not actual
        else:
            raise _validation(f"Unsupported operator: {op}")
        if not ok:
            return False
    return True


class Frappe:
    def __init__(self, items: list[str]) -> None:
        self.docs: dict[str, dict[str, dict[str, Any]]] = {d: {} for d in FIELDS}
        self.calls: Counter[str] = Counter()
        self.series: Counter[str] = Counter()
        for code in ("CNY", "EUR", "USD"):
            self._store("Currency", code, {"currency_name": code, "enabled": 1})
        for code in items:
            self._store(
                "Item", code, {"item_code": code, "item_name": code, "is_stock_item": 0, "stock_uom": "Nos"}
            )

    def _store(self, doctype: str, name: str, doc: dict[str, Any], docstatus: int = 0) -> dict[str, Any]:
        now = _now()
        full = {
            "name": name,
            "doctype": doctype,
            "docstatus": docstatus,
            "creation": now,
            "modified": now,
            "owner": "api@example.com",
            "idx": 0,
            **doc,
        }
        self.docs[doctype][name] = full
        return full

    def get(self, doctype: str, name: str) -> dict[str, Any]:
        doc = self.docs[doctype].get(name)
        if doc is None:
            raise FrappeError(404, "DoesNotExistError", f"{doctype} {name} not found")
        return doc

    def list(
        self, doctype: str, fields: list[str], filters: Any, start: int, length: int, order_by: str
    ) -> list[dict[str, Any]]:
        for field in fields:
            if field != "*" and field not in FIELDS[doctype] | _COMMON:
                raise FrappeError(417, "DataError", f"Field not permitted in query: {field}")
            if field in {"items", "taxes"}:
                raise FrappeError(417, "DataError", f"Field not permitted in query: {field} (child table)")
        docs = [d for d in self.docs[doctype].values() if _matches(d, filters or [], doctype)]
        field, _, direction = (order_by or "modified desc").strip().partition(" ")
        field = field.strip("`").split(".")[-1].strip("`")
        docs.sort(
            key=lambda d: (d.get(field) is None, d.get(field) or ""), reverse=direction.lower() != "asc"
        )
        docs = docs[start:] if not length else docs[start : start + length]
        if "*" in fields:
            return [{k: v for k, v in d.items() if k not in {"items", "taxes"}} for d in docs]
        return [{f: d.get(f) for f in fields} for d in docs]

    def insert(self, doctype: str, body: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in body if k not in FIELDS[doctype] | {"doctype", "docstatus"}]
        if unknown:
            # Frappe ignores unknown keys on insert; the sandbox does the same, but records them.
            self.calls[f"{doctype}/ignored_fields"] += len(unknown)
            body = {k: v for k, v in body.items() if k not in unknown}
        docstatus = int(body.pop("docstatus", 0) or 0)
        body.pop("doctype", None)
        if docstatus not in (0, 1):
            raise _validation("Cannot create a cancelled document (docstatus 2)")
        if doctype == "Customer":
            name = str(body.get("customer_name") or "").strip()
            if not name:
                raise _validation("[Customer, new-customer-1]: customer_name", "MandatoryError")
            if name in self.docs["Customer"]:
                raise FrappeError(409, "DuplicateEntryError", f"Customer {name} already exists")
            return self._store("Customer", name, {"customer_type": "Company", **body})
        if doctype == "Sales Invoice":
            doc = self._invoice(body, docstatus)
            return self._store("Sales Invoice", doc.pop("name"), doc, docstatus)
        name = str(body.get("name") or body.get("item_code") or "")
        if not name:
            raise _validation(f"[{doctype}]: name", "MandatoryError")
        return self._store(doctype, name, body)

    def _invoice(self, body: dict[str, Any], docstatus: int) -> dict[str, Any]:
        missing = [f for f in ("customer", "posting_date", "items") if not body.get(f)]
        if missing:
            raise _validation(f"[Sales Invoice, new-sales-invoice-1]: {', '.join(missing)}", "MandatoryError")
        customer = body["customer"]
        if customer not in self.docs["Customer"]:
            raise _validation(f"Could not find Customer: {customer}", "LinkValidationError")
        currency = body.get("currency") or "CNY"
        if currency not in self.docs["Currency"]:
            raise _validation(f"Could not find Currency: {currency}", "LinkValidationError")
        try:
            posting = datetime.strptime(str(body["posting_date"]), "%Y-%m-%d").date()
        except ValueError:
            raise _validation(f"posting_date: {body['posting_date']!r} is not a date") from None
        is_return = int(body.get("is_return") or 0)
        items = []
        for idx, row in enumerate(body["items"], start=1):
            code = row.get("item_code")
            if not code:
                raise _validation(f"Row #{idx}: Item Code is mandatory", "MandatoryError")
            if code not in self.docs["Item"]:
                raise _validation(f"Row #{idx}: Could not find Item: {code}", "LinkValidationError")
            qty = _dec(row.get("qty", 1), f"items[{idx}].qty")
            rate = _dec(row.get("rate", 0), f"items[{idx}].rate")
            if is_return and qty > 0:
                raise _validation(f"Row #{idx}: Quantity must be negative in a return document")
            amount = (qty * rate).quantize(CENT, ROUND_HALF_UP)
            items.append(
                {
                    "name": f"row-{idx}",
                    "idx": idx,
                    "parenttype": "Sales Invoice",
                    "item_code": code,
                    "item_name": row.get("item_name") or code,
                    "description": row.get("description") or "",
                    "qty": qty,
                    "rate": rate,
                    "amount": amount,
                }
            )
        net = sum((i["amount"] for i in items), Decimal(0))
        taxes = []
        for idx, row in enumerate(body.get("taxes") or [], start=1):
            kind = row.get("charge_type")
            if not row.get("account_head"):
                raise _validation(f"Taxes Row #{idx}: Account Head is mandatory", "MandatoryError")
            if kind == "Actual":
                tax = _dec(row.get("tax_amount"), f"taxes[{idx}].tax_amount")
            elif kind == "On Net Total":
                tax = (net * _dec(row.get("rate"), f"taxes[{idx}].rate") / 100).quantize(CENT, ROUND_HALF_UP)
            else:
                raise _validation(f"Taxes Row #{idx}: charge_type {kind!r} is not supported here")
            taxes.append({**row, "idx": idx, "tax_amount": tax})
        total_tax = sum((t["tax_amount"] for t in taxes), Decimal(0))
        against = body.get("return_against")
        if against:
            original = self.docs["Sales Invoice"].get(against)
            if original is None:
                raise _validation(f"Could not find Return Against: {against}", "LinkValidationError")
            if original["docstatus"] != 1:
                raise _validation(f"Return Against Sales Invoice {against} must be submitted")
            if original["customer"] != customer:
                raise _validation(f"Customer must be the same as in Sales Invoice {against}")
        year = posting.year
        series = f"ACC-SINV-RET-{year}-" if is_return else f"ACC-SINV-{year}-"
        self.series[series] += 1
        grand = net + total_tax
        status = {0: "Draft", 1: "Return" if is_return else "Unpaid"}[docstatus]
        return {
            **{k: v for k, v in body.items() if k not in {"items", "taxes"}},
            "name": f"{series}{self.series[series]:05d}",
            "customer_name": self.docs["Customer"][customer].get("customer_name", customer),
            "currency": currency,
            "is_return": is_return,
            "items": items,
            "taxes": taxes,
            "net_total": net,
            "total_taxes_and_charges": total_tax,
            "grand_total": grand,
            "outstanding_amount": grand if docstatus == 1 else Decimal(0),
            "status": status,
        }

    def update(self, doctype: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        doc = self.get(doctype, name)
        if doc["docstatus"] != 0:
            raise _validation("Cannot edit a submitted or cancelled document", "UpdateAfterSubmitError")
        for key, value in body.items():
            if key in FIELDS[doctype] and key not in {"name", "items", "taxes"}:
                doc[key] = value
        doc["modified"] = _now()
        return doc

    def submit(self, doctype: str, name: str) -> dict[str, Any]:
        doc = self.get(doctype, name)
        if doc["docstatus"] != 0:
            raise _validation(
                f"Cannot submit {doctype} {name}: it is not a draft", "DocstatusTransitionError"
            )
        doc["docstatus"] = 1
        doc["status"] = "Return" if doc.get("is_return") else "Unpaid"
        doc["modified"] = _now()
        return doc

    def cancel(self, doctype: str, name: str) -> dict[str, Any]:
        doc = self.get(doctype, name)
        if doc["docstatus"] != 1:
            raise _validation(
                f"Cannot cancel {doctype} {name}: it is not submitted", "DocstatusTransitionError"
            )
        doc["docstatus"] = 2
        doc["status"] = "Cancelled"
        doc["modified"] = _now()
        return doc

    def stats(self) -> dict[str, Any]:
        return {
            "records": {d: len(rows) for d, rows in self.docs.items()},
            "calls": dict(self.calls),
            "invoices": [
                {
                    "name": d["name"],
                    "docstatus": d["docstatus"],
                    "remarks": d.get("remarks"),
                    "is_return": d["is_return"],
                }
                for d in self.docs["Sales Invoice"].values()
            ],
        }


def _error(exc: FrappeError) -> JSONResponse:
    messages = json.dumps([json.dumps({"message": exc.message, "indicator": "red", "raise_exception": 1})])
    return JSONResponse(
        {
            "exc_type": exc.exc_type,
            "exception": f"frappe.exceptions.{exc.exc_type}: {exc.message}",
            "_server_messages": messages,
        },
        status_code=exc.status,
    )


def create_app(
    api_keys: list[str] | tuple[str, ...] = ("sandbox-key:sandbox-secret",),
    items: list[str] | tuple[str, ...] = ("HUB-SERVICE",),
    faults: dict[str, Any] | None = None,
) -> Starlette:
    """An ERPNext REST endpoint with in-memory documents; ``api_keys`` are accepted ``key:secret``
    pairs, ``items`` the Item codes that exist."""
    state: dict[str, Any] = {
        "force_5xx": 0,
        "force_429": 0,
        "retry_after": 1.0,
        "hang_after_create": 0,
        "hang_seconds": 3.0,
        "refuse_creates": False,
        "latency": 0.0,
        "requests": 0,
        "refused_auth": 0,
    }
    state.update(faults or {})
    frappe = Frappe(list(items))
    keys = set(api_keys)

    async def gate(request: Request) -> Response | None:
        state["requests"] += 1
        if state["latency"]:
            await asyncio.sleep(float(state["latency"]))
        if state["force_429"] > 0:
            state["force_429"] -= 1
            return JSONResponse(
                {"exc_type": "TooManyRequestsError", "exception": "frappe.exceptions.TooManyRequestsError"},
                status_code=429,
                headers={"Retry-After": str(state["retry_after"])},
            )
        if state["force_5xx"] > 0:
            state["force_5xx"] -= 1
            return JSONResponse({"exc_type": "ServiceUnavailable"}, status_code=503)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "token" or credentials.strip() not in keys:
            state["refused_auth"] += 1
            return _error(FrappeError(401, "AuthenticationError", "Invalid Authorization"))
        return None

    def doctype_of(request: Request) -> str:
        doctype = request.path_params["doctype"]
        if doctype not in FIELDS:
            raise FrappeError(404, "DoesNotExistError", f"DocType {doctype} not found")
        return doctype

    async def resource(request: Request) -> Response:
        refused = await gate(request)
        if refused is not None:
            return refused
        try:
            doctype = doctype_of(request)
            frappe.calls[f"{doctype}/{request.method}"] += 1
            if request.method == "GET":
                q = request.query_params
                try:
                    fields = json.loads(q.get("fields", '["name"]'))
                    filters = json.loads(q.get("filters", "[]"))
                    start = int(q.get("limit_start", "0"))
                    length = int(q.get("limit_page_length", q.get("limit", "20")))
                except ValueError as exc:
                    raise _validation(f"bad query parameter: {exc}") from None
                data = frappe.list(doctype, fields, filters, start, length, q.get("order_by", ""))
                return JSONResponse({"data": _json_ready(data)})
            body = json.loads(await request.body() or b"{}", parse_float=Decimal)
            if isinstance(body.get("data"), str):  # Frappe also takes data=<json> form posts
                body = json.loads(body["data"], parse_float=Decimal)
            if state["refuse_creates"] and doctype == "Sales Invoice":
                raise _validation(
                    "Accounting Period is closed for posting date (sandbox fault refuse_creates)"
                )
            doc = frappe.insert(doctype, body)
            if doctype == "Sales Invoice" and state["hang_after_create"] > 0:
                state["hang_after_create"] -= 1
                await asyncio.sleep(float(state["hang_seconds"]))
            return JSONResponse({"data": _json_ready(doc)})
        except FrappeError as exc:
            return _error(exc)

    async def one(request: Request) -> Response:
        refused = await gate(request)
        if refused is not None:
            return refused
        try:
            doctype = doctype_of(request)
            name = request.path_params["name"]
            if request.method == "GET":
                return JSONResponse({"data": _json_ready(frappe.get(doctype, name))})
            body = json.loads(await request.body() or b"{}", parse_float=Decimal)
            return JSONResponse({"data": _json_ready(frappe.update(doctype, name, body))})
        except FrappeError as exc:
            return _error(exc)

    async def method(request: Request) -> Response:
        refused = await gate(request)
        if refused is not None:
            return refused
        name = request.path_params["method"]
        body = json.loads(await request.body() or b"{}", parse_float=Decimal)
        frappe.calls[f"method/{name}"] += 1
        try:
            if name == "frappe.client.submit":
                doc = body.get("doc")
                if isinstance(doc, str):
                    doc = json.loads(doc)
                result = frappe.submit(doc["doctype"], doc["name"])
            elif name == "frappe.client.cancel":
                result = frappe.cancel(body["doctype"], body["name"])
            else:
                raise FrappeError(404, "DoesNotExistError", f"Method {name} not found")
        except KeyError as exc:
            return _error(_validation(f"missing argument {exc}"))
        except FrappeError as exc:
            return _error(exc)
        return JSONResponse({"message": _json_ready(result)})

    async def stats(request: Request) -> Response:
        out = frappe.stats()
        out["requests"] = state["requests"]
        out["refused_auth"] = state["refused_auth"]
        return JSONResponse(_json_ready(out))

    async def set_faults(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            unknown = set(body) - (set(state) - {"requests", "refused_auth"})
            if unknown:
                return JSONResponse(
                    {"error": f"unknown fault(s): {', '.join(sorted(unknown))}"}, status_code=400
                )
            state.update(body)
        return JSONResponse({k: v for k, v in state.items() if k not in {"requests", "refused_auth"}})

    async def reset(request: Request) -> Response:
        nonlocal frappe
        frappe = Frappe(list(items))
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/api/resource/{doctype}", resource, methods=["GET", "POST"]),
            Route("/api/resource/{doctype}/{name}", one, methods=["GET", "PUT"]),
            Route("/api/method/{method}", method, methods=["POST"]),
            Route("/_sandbox/stats", stats, methods=["GET"]),
            Route("/_sandbox/faults", set_faults, methods=["GET", "POST"]),
            Route("/_sandbox/reset", reset, methods=["POST"]),
        ]
    )
