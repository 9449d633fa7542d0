"""A small Odoo 19 that speaks the External JSON-2 API, for the ``erp.rest`` connector's ``odoo`` preset.

Requests follow Odoo 19's documentation: ``POST /json/2/<model>/<method>`` with
``Authorization: bearer <API key>``, an optional ``X-Odoo-Database`` header and the method's
parameters as one JSON object (``ids`` and ``context`` are special). A success is ``200`` with the
method's return value as JSON; an error is a ``4xx``/``5xx`` with ``{"name", "message", "arguments",
"context", "debug"}`` (401 for a bad API key, 404 for an unknown model or method, 422 for a business
error such as posting an invoice without lines).

Models: ``res.partner``, ``res.currency`` (CNY, EUR, USD), ``account.tax`` (sale taxes 13/9/6/5/3/1/0 %)
and ``account.move`` (customer invoices ``out_invoice`` and credit notes ``out_refund``: totals computed
from the lines and their taxes, ``action_post`` names them ``INV/2026/00001`` / ``RINV/2026/00001``,
``button_draft`` / ``button_cancel``). Methods: ``search``, ``search_read``, ``search_count``, ``read``,
``create`` (``vals_list``), ``write`` (``vals``), ``unlink``. Domains: ``[field, op, value]`` terms
with ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``, ``like``, ``ilike``, and the
prefix operators ``&``, ``|``, ``!``.

Test hooks (not Odoo): ``GET /_sandbox/stats`` (records and calls per model and method),
``POST /_sandbox/faults`` (``force_5xx``, ``force_429`` with ``retry_after``, ``hang_after_create``
with ``hang_seconds``: the record is created, then the answer comes too late; ``refuse_creates``: every
``account.move`` create is refused with a 422 business error), ``POST /_sandbox/reset``.
Start it with ``python -m contrib.sandbox odoo --option api_keys='["my-key"]'``.
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

DEFAULT_PORT = 8069
CENT = Decimal("0.01")


class OdooError(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message


def _user_error(message: str) -> OdooError:
    return OdooError(422, "odoo.exceptions.UserError", message)


def _validation_error(message: str) -> OdooError:
    return OdooError(422, "odoo.exceptions.ValidationError", message)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _dec(value: Any, field: str) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise _validation_error(f"{field}: {value!r} is not a number") from None


# ---------------------------------------------------------------------------------------------------
# Domains
# ---------------------------------------------------------------------------------------------------
def _compare(record: dict[str, Any], term: list[Any]) -> bool:
    if not isinstance(term, list | tuple) or len(term) != 3:
        raise OdooError(400, "builtins.ValueError", f"Invalid leaf {term!r}")
    field, op, value = term
    actual = record.get(field)
    if isinstance(actual, list) and len(actual) == 2 and isinstance(actual[0], int):
        actual = actual[0]  # many2one compares by id
    if isinstance(actual, Decimal) and isinstance(value, int | float | Decimal):
        value = Decimal(str(value))
    if op == "=":
        return bool(actual == value) if value is not False else not actual
    if op == "!=":
        return bool(actual != value) if value is not False else bool(actual)
    if op == "in":
        return actual in value
    if op == "not in":
        return actual not in value
    if op in {"like", "ilike"}:
        if actual is None or actual is False:
            return False
        pattern = str(value).replace("%", "")
        return pattern.lower() in str(actual).lower() if op == "ilike" else pattern in str(actual)
    if actual is None or actual is False:
        return False
    if op == "<":
        return bool(actual < value)
    if op == "<=":
        return bool(actual <= value)
    if op == ">":
        return bool(actual > value)
    if op == ">=":
        return bool(actual >= value)
    raise OdooError(400, "builtins.ValueError", f"Invalid domain operator {op!r}")


def _matches(record: dict[str, Any], domain: list[Any]) -> bool:
    """Evaluate an Odoo domain (prefix notation, implicit AND between consecutive terms)."""
    items = list(domain)

    def parse(pos: int) -> tuple[bool, int]:
        item = items[pos]
        if item == "!":
            value, nxt = parse(pos + 1)
            return not value, nxt
        if item in ("&", "|"):
            left, nxt = parse(pos + 1)
            right, nxt = parse(nxt)
            return (left and right) if item == "&" else (left or right), nxt
        return _compare(record, item), pos + 1

    pos = 0
    result = True
    while pos < len(items):
        value, pos = parse(pos)
        result = result and value
    return result


# ---------------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------------
MODELS = {
    "res.partner": {"id", "name", "vat", "is_company", "street", "email", "write_date", "create_date"},
    "res.currency": {"id", "name", "symbol", "active"},
    "account.tax": {"id", "name", "amount", "amount_type", "type_tax_use", "active"},
    "account.move": {
        "id",
        "name",
        "move_type",
        "state",
        "partner_id",
        "invoice_date",
        "ref",
        "invoice_origin",
        "payment_reference",
        "narration",
        "currency_id",
        "journal_id",
        "reversed_entry_id",
        "invoice_line_ids",
        "amount_untaxed",
        "amount_tax",
        "amount_total",
        "amount_total_signed",
        "write_date",
        "create_date",
    },
}
_READONLY = {
    "account.move": {
        "id",
        "name",
        "state",
        "amount_untaxed",
        "amount_tax",
        "amount_total",
        "amount_total_signed",
    },
    "res.partner": {"id"},
    "res.currency": {"id"},
    "account.tax": {"id"},
}
_MANY2ONE = {"partner_id": "res.partner", "currency_id": "res.currency", "reversed_entry_id": "account.move"}


class OdooDB:
    def __init__(self) -> None:
        self.tables: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in MODELS}
        self.next_id: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.sequence: Counter[str] = Counter()
        for code, symbol in (("CNY", "¥"), ("EUR", "€"), ("USD", "$")):
            self._insert("res.currency", {"name": code, "symbol": symbol, "active": True})
        for rate in ("13", "9", "6", "5", "3", "1", "0"):
            self._insert(
                "account.tax",
                {
                    "name": f"VAT {rate}%",
                    "amount": Decimal(rate),
                    "amount_type": "percent",
                    "type_tax_use": "sale",
                    "active": True,
                },
            )

    def _insert(self, model: str, vals: dict[str, Any]) -> int:
        self.next_id[model] += 1
        rid = self.next_id[model]
        now = _now()
        record = {"id": rid, "create_date": now, "write_date": now, **vals}
        self.tables[model][rid] = record
        return rid

    # -- reading --------------------------------------------------------------------------------------
    def display_name(self, model: str, rid: int) -> str:
        record = self.tables[model].get(rid)
        return str(record.get("name")) if record else str(rid)

    def present(self, model: str, record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        wanted = fields or sorted(MODELS[model])
        out: dict[str, Any] = {}
        for field in wanted:
            if field not in MODELS[model]:
                raise OdooError(400, "builtins.ValueError", f"Invalid field {field!r} on model {model!r}")
            value = record.get(field, False)
            if field in _MANY2ONE and value:
                value = [value, self.display_name(_MANY2ONE[field], value)]
            elif field == "invoice_line_ids":
                value = [line["id"] for line in record.get("_lines", [])]
            out[field] = False if value is None else value
        out["id"] = record["id"]
        return out

    def search(
        self,
        model: str,
        domain: list[Any],
        offset: int = 0,
        limit: int | None = None,
        order: str | None = None,
    ) -> list[dict[str, Any]]:
        records = [r for r in self.tables[model].values() if _matches(r, domain)]
        for part in reversed([p.strip() for p in (order or "id").split(",") if p.strip()]):
            name, _, direction = part.partition(" ")
            if name not in MODELS[model]:
                raise OdooError(400, "builtins.ValueError", f"Invalid field {name!r} in order")
            records.sort(
                key=lambda r: (r.get(name) is None, r.get(name) or 0), reverse=direction.lower() == "desc"
            )
        records = records[offset:]
        return records[:limit] if limit else records

    # -- writing --------------------------------------------------------------------------------------
    def create(self, model: str, vals: dict[str, Any]) -> int:
        if not isinstance(vals, dict):
            raise OdooError(400, "builtins.TypeError", "vals_list must be a list of objects")
        for field in vals:
            if field not in MODELS[model] or field in _READONLY[model]:
                raise OdooError(422, "builtins.ValueError", f"Invalid field {field!r} on model {model!r}")
        if model == "res.partner":
            if not vals.get("name"):
                raise _validation_error("Contacts require a name")
            return self._insert(model, dict(vals))
        if model == "account.move":
            return self._insert(model, self._move_vals(vals, {"state": "draft", "name": "/"}))
        return self._insert(model, dict(vals))

    def write(self, model: str, rid: int, vals: dict[str, Any]) -> None:
        record = self._get(model, rid)
        for field in vals:
            if field not in MODELS[model] or field in _READONLY[model]:
                raise OdooError(422, "builtins.ValueError", f"Invalid field {field!r} on model {model!r}")
        if model == "account.move":
            if record["state"] != "draft" and set(vals) - {"ref", "narration", "payment_reference"}:
                raise _user_error("You cannot modify a posted entry of this journal.")
            record.update(self._move_vals({**record, **vals}, {}))
        else:
            record.update(vals)
        record["write_date"] = _now()

    def _get(self, model: str, rid: int) -> dict[str, Any]:
        record = self.tables[model].get(rid)
        if record is None:
            raise OdooError(
                404,
                "odoo.exceptions.MissingError",
                f"Record does not exist or has been deleted. ({model}({rid},))",
            )
        return record

    def _move_vals(self, vals: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        out = {**base, **{k: v for k, v in vals.items() if k != "invoice_line_ids"}}
        move_type = out.get("move_type") or "entry"
        if move_type not in {"out_invoice", "out_refund", "in_invoice", "in_refund", "entry"}:
            raise _validation_error(f"Wrong value for account.move.move_type: {move_type!r}")
        out["move_type"] = move_type
        for field, target in _MANY2ONE.items():
            if out.get(field) and out[field] not in self.tables[target]:
                raise _validation_error(
                    f"The record {target}({out[field]}) referenced by {field} does not exist"
                )
        if out.get("invoice_date"):
            try:
                datetime.strptime(str(out["invoice_date"]), "%Y-%m-%d")
            except ValueError:
                raise _validation_error(
                    f"invoice_date: {out['invoice_date']!r} is not a date (YYYY-MM-DD)"
                ) from None
        lines = list(vals.get("_lines", [])) if "_lines" in vals else []
        for command in vals.get("invoice_line_ids") or []:
            if not isinstance(command, list) or len(command) != 3 or command[0] != 0:
                raise _validation_error(
                    "invoice_line_ids: only (0, 0, values) create commands are supported here"
                )
            lines.append(self._line(command[2], len(lines) + 1))
        out["_lines"] = lines
        untaxed = sum((line["price_subtotal"] for line in lines), Decimal(0))
        tax = sum((line["_tax"] for line in lines), Decimal(0))
        out["amount_untaxed"] = untaxed
        out["amount_tax"] = tax
        out["amount_total"] = untaxed + tax
        sign = -1 if move_type in {"out_refund", "in_invoice"} else 1
        out["amount_total_signed"] = sign * (untaxed + tax)
        return out

    def _line(self, vals: dict[str, Any], sequence: int) -> dict[str, Any]:
        known = {"name", "quantity", "price_unit", "tax_ids", "product_id", "account_id", "discount"}
        for field in vals:
            if field not in known:
                raise OdooError(
                    422, "builtins.ValueError", f"Invalid field {field!r} on model 'account.move.line'"
                )
        quantity = _dec(vals.get("quantity", 1), "quantity")
        price = _dec(vals.get("price_unit", 0), "price_unit")
        subtotal = (quantity * price).quantize(CENT, ROUND_HALF_UP)
        tax_ids: list[int] = []
        for command in vals.get("tax_ids") or []:
            if isinstance(command, list) and command and command[0] == 6:
                tax_ids = list(command[2])
            elif isinstance(command, list) and command and command[0] == 4:
                tax_ids.append(command[1])
            elif isinstance(command, int):
                tax_ids.append(command)
        tax = Decimal(0)
        for tid in tax_ids:
            rate = self.tables["account.tax"].get(tid)
            if rate is None:
                raise _validation_error(f"The record account.tax({tid}) referenced by tax_ids does not exist")
            tax += (subtotal * rate["amount"] / 100).quantize(CENT, ROUND_HALF_UP)
        self.next_id["account.move.line"] += 1
        return {
            "id": self.next_id["account.move.line"],
            "sequence": sequence,
            "name": vals.get("name") or "",
            "quantity": quantity,
            "price_unit": price,
            "price_subtotal": subtotal,
            "tax_ids": tax_ids,
            "_tax": tax,
        }

    def action_post(self, rid: int) -> None:
        move = self._get("account.move", rid)
        if move["state"] != "draft":
            raise _user_error("Only draft journal entries can be posted.")
        if move["move_type"] in {"out_invoice", "out_refund"}:
            if not move.get("partner_id"):
                raise _user_error(
                    "The field 'Customer' is required, please complete it to validate the Customer Invoice."
                )
            if not move["_lines"]:
                raise _user_error("You need to add a line before posting.")
        if not move.get("invoice_date"):
            move["invoice_date"] = datetime.now(UTC).strftime("%Y-%m-%d")
        if move["name"] in ("/", False, None):
            prefix = {"out_invoice": "INV", "out_refund": "RINV"}.get(move["move_type"], "MISC")
            year = str(move["invoice_date"])[:4]
            self.sequence[f"{prefix}/{year}"] += 1
            move["name"] = f"{prefix}/{year}/{self.sequence[f'{prefix}/{year}']:05d}"
        move["state"] = "posted"
        move["write_date"] = _now()

    def button_draft(self, rid: int) -> None:
        move = self._get("account.move", rid)
        if move["state"] not in {"posted", "cancel"}:
            raise _user_error("Only posted/cancelled journal entries can be reset to draft.")
        move["state"] = "draft"
        move["write_date"] = _now()

    def button_cancel(self, rid: int) -> None:
        move = self._get("account.move", rid)
        if move["state"] != "draft":
            raise _user_error("Only draft journal entries can be cancelled.")
        move["state"] = "cancel"
        move["write_date"] = _now()

    def stats(self) -> dict[str, Any]:
        return {
            "records": {model: len(rows) for model, rows in self.tables.items()},
            "calls": dict(self.calls),
            "moves": [
                self.present("account.move", m, ["id", "name", "state", "ref", "move_type"])
                for m in self.tables["account.move"].values()
            ],
        }


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------
def _error(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"name": name, "message": message, "arguments": [message, status], "context": {}, "debug": ""},
        status_code=status,
    )


def create_app(
    api_keys: list[str] | tuple[str, ...] = ("sandbox-odoo-key",),
    database: str | None = None,
    faults: dict[str, Any] | None = None,
) -> Starlette:
    """An Odoo 19 JSON-2 endpoint with in-memory data. ``api_keys`` are the keys accepted as bearer
    tokens; ``database``, when set, is the only ``X-Odoo-Database`` accepted."""
    db = OdooDB()
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
    keys = set(api_keys)

    async def call(request: Request) -> Response:
        state["requests"] += 1
        if state["latency"]:
            await asyncio.sleep(float(state["latency"]))
        if state["force_429"] > 0:
            state["force_429"] -= 1
            return JSONResponse(
                {"name": "werkzeug.exceptions.TooManyRequests", "message": "Too Many Requests"},
                status_code=429,
                headers={"Retry-After": str(state["retry_after"])},
            )
        if state["force_5xx"] > 0:
            state["force_5xx"] -= 1
            return _error(503, "werkzeug.exceptions.ServiceUnavailable", "Service Unavailable")
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() not in keys:
            state["refused_auth"] += 1
            return _error(401, "werkzeug.exceptions.Unauthorized", "Invalid apikey")
        wanted_db = request.headers.get("x-odoo-database")
        if database and wanted_db and wanted_db != database:
            return _error(404, "werkzeug.exceptions.NotFound", f"Database {wanted_db!r} not found")
        model = request.path_params["model"]
        method = request.path_params["method"]
        if model not in MODELS:
            return _error(404, "werkzeug.exceptions.NotFound", f"The model {model!r} does not exist.")
        try:
            params = json.loads(await request.body() or b"{}", parse_float=Decimal)
        except ValueError:
            return _error(400, "werkzeug.exceptions.BadRequest", "The body is not valid JSON")
        if not isinstance(params, dict):
            return _error(400, "werkzeug.exceptions.BadRequest", "The body must be a JSON object")
        db.calls[f"{model}/{method}"] += 1
        if state["refuse_creates"] and model == "account.move" and method == "create":
            return _error(
                422,
                "odoo.exceptions.ValidationError",
                "The journal of this invoice is locked for the period (sandbox fault refuse_creates).",
            )
        try:
            result = _dispatch(db, model, method, params)
        except OdooError as exc:
            return _error(exc.status, exc.name, exc.message)
        if model == "account.move" and method == "create" and state["hang_after_create"] > 0:
            state["hang_after_create"] -= 1
            await asyncio.sleep(float(state["hang_seconds"]))
        return JSONResponse(_json_ready(result))

    async def stats(request: Request) -> Response:
        out = db.stats()
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
        nonlocal db
        db = OdooDB()
        return JSONResponse({"ok": True})

    async def version(request: Request) -> Response:
        return JSONResponse({"version": "19.0", "version_info": [19, 0, 0, "final", 0, ""]})

    return Starlette(
        routes=[
            Route("/json/2/{model}/{method}", call, methods=["POST"]),
            Route("/web/version", version, methods=["GET"]),
            Route("/_sandbox/stats", stats, methods=["GET"]),
            Route("/_sandbox/faults", set_faults, methods=["GET", "POST"]),
            Route("/_sandbox/reset", reset, methods=["POST"]),
        ]
    )


def _dispatch(db: OdooDB, model: str, method: str, params: dict[str, Any]) -> Any:
    ids = params.pop("ids", None) or []
    params.pop("context", None)

    def take(*names: str) -> dict[str, Any]:
        unknown = set(params) - set(names)
        if unknown:
            raise OdooError(
                422,
                "builtins.TypeError",
                f"{method}() got an unexpected keyword argument {sorted(unknown)[0]!r}",
            )
        return params

    if method in {"search", "search_read"}:
        p = take("domain", "fields", "offset", "limit", "order")
        records = db.search(
            model, p.get("domain") or [], int(p.get("offset") or 0), p.get("limit"), p.get("order")
        )
        if method == "search":
            return [r["id"] for r in records]
        return [db.present(model, r, p.get("fields")) for r in records]
    if method == "search_count":
        p = take("domain", "limit")
        return len(db.search(model, p.get("domain") or []))
    if method == "read":
        p = take("fields")
        return [db.present(model, db._get(model, rid), p.get("fields")) for rid in ids]
    if method == "create":
        p = take("vals_list")
        vals_list = p.get("vals_list")
        if isinstance(vals_list, dict):
            vals_list = [vals_list]
        if not isinstance(vals_list, list):
            raise OdooError(
                422, "builtins.TypeError", "create() missing 1 required positional argument: 'vals_list'"
            )
        return [db.create(model, vals) for vals in vals_list]
    if method == "write":
        p = take("vals")
        for rid in ids:
            db.write(model, rid, p.get("vals") or {})
        return True
    if method == "unlink":
        take()
        for rid in ids:
            record = db._get(model, rid)
            if model == "account.move" and record["state"] == "posted":
                raise _user_error("You cannot delete an entry which has been posted once.")
            del db.tables[model][rid]
        return True
    if model == "account.move" and method in {"action_post", "button_draft", "button_cancel"}:
        take()
        if not ids:
            raise OdooError(422, "builtins.TypeError", f"{method}() needs ids")
        for rid in ids:
            getattr(db, method)(rid)
        return True
    raise OdooError(
        404, "werkzeug.exceptions.NotFound", f"The method {method!r} does not exist on {model!r}."
    )
