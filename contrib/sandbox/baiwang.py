"""A sandbox of the Baiwang open platform (百望云), on the same issuing core as the Nuonuo sandbox.

Protocol (public Ruby SDK, DOMAIN.md): ``POST {base}/router/rest?method&appKey&token&timestamp&format=json
&version=3.0&requestId&sign`` with a JSON body; ``sign = upper(MD5(secret + sorted(k + v for every query
parameter but sign) + body + secret))``; ``timestamp`` in milliseconds. Answers are
``{"method", "requestId", "success": true, "response": ...}`` or ``{"success": false, "errorResponse":
{"code", "message", "subCode", "subMessage"}}``. The token comes from method ``baiwang.oauth.token``
(form ``grant_type=password&client_id&client_secret&username&password``).

Methods: ``baiwang.output.invoice.issue`` (``data.serialNo`` is the caller's order number: a known one
answers with the existing record), ``baiwang.output.invoice.query`` (by ``serialNo``, ``invoiceId`` or a
date range), ``baiwang.output.invoice.cancel``, ``baiwang.output.redinfo.add`` / ``.query``.
Record status (``invoiceStatus``): ``00`` issuing, ``01`` issued, ``02`` failed, ``03`` void.
Gateway codes (the sandbox's choice): 100002 bad signature, 100003 timestamp outside the window,
100004 token invalid, 100005 unknown appKey, 100006 missing parameter / unknown method, 100007 replayed
requestId; business refusals carry the shared codes (``E9500`` ...) described in README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contrib.sandbox.common import (
    SHANGHAI,
    Faults,
    IssueData,
    Item,
    Order,
    Platform,
    PlatformClock,
    SandboxRefusal,
    decimal_field,
    guarded,
)

DEFAULT_PORT = 8766
SERIAL_MAX = 50
_TYPES = {"01": (True, True), "02": (True, False), "004": (False, True), "026": (False, False)}


def sign(secret: str, params: dict[str, str], body: bytes) -> str:
    """The Baiwang request signature over the query parameters (``sign`` excluded) and the body."""
    pairs = "".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "sign")
    return hashlib.md5(secret.encode() + pairs.encode() + body + secret.encode()).hexdigest().upper()


def callback_sign(secret: str, body: bytes) -> str:
    return hashlib.md5(secret.encode() + body + secret.encode()).hexdigest().upper()


def _ok(method: str, request_id: str, response: Any) -> JSONResponse:
    return JSONResponse({"method": method, "requestId": request_id, "success": True, "response": response})


def _error(method: str, request_id: str, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "method": method,
            "requestId": request_id,
            "success": False,
            "errorResponse": {"code": code, "message": message, "subCode": code, "subMessage": message},
        }
    )


def _type_code(d: IssueData) -> str:
    if d.digital:
        return "01" if d.special else "02"
    return "004" if d.special else "026"


def _record(platform: Platform, order: Order, base: str) -> dict[str, Any]:
    d = order.data
    status = {"issuing": "00", "issued": "01", "failed": "02", "void": "03"}[order.status]
    out: dict[str, Any] = {
        "invoiceId": order.serial,
        "serialNo": order.order_no,
        "invoiceStatus": status,
        "statusMessage": order.fail_message
        or {"00": "开具中", "01": "开具成功", "03": "已作废"}.get(status, ""),
        "errorCode": order.fail_code or "",
        "invoiceTypeCode": _type_code(d),
        "invoiceType": "1" if d.red else "0",
        "einvoiceNo": order.number if (order.number and d.digital) else "",
        "invoiceCode": order.code or "",
        "invoiceNo": order.number if (order.number and not d.digital) else "",
        "invoiceDate": f"{order.issued_at:%Y-%m-%d %H:%M:%S}" if order.issued_at else "",
        "sellerTaxNo": d.seller_tax,
        "buyerTaxNo": d.buyer_tax or "",
        "buyerName": d.buyer_name,
        "invoiceTotalPrice": format(d.net, "f"),
        "invoiceTotalTax": format(d.tax, "f"),
        "invoiceTotalPriceTax": format(d.gross, "f"),
        "originalInvoiceNo": d.blue_number or "",
        "redInfoNo": d.red_form_no or "",
    }
    if order.status in {"issued", "void"}:
        out["pdfUrl"] = platform.file_url(order, "pdf", base)
        if d.digital:
            out["ofdUrl"] = platform.file_url(order, "ofd", base)
            out["xmlUrl"] = platform.file_url(order, "xml", base)
    return out


def _read_data(body: dict[str, Any], platform: Platform) -> tuple[str, IssueData, str | None]:
    tax_no = str(body.get("taxNo") or "")
    data = body.get("data")
    if not isinstance(data, dict):
        raise SandboxRefusal("E9500", 'body must be {"taxNo": ..., "data": {...}}')
    serial_no = str(data.get("serialNo") or "")
    if not serial_no or len(serial_no) > SERIAL_MAX:
        raise SandboxRefusal("E9500", f"data.serialNo is required, at most {SERIAL_MAX} characters")
    type_code = str(data.get("invoiceTypeCode") or "")
    if type_code not in _TYPES:
        raise SandboxRefusal("E9500", f"invoiceTypeCode {type_code!r} is not one of {sorted(_TYPES)}")
    rows = data.get("invoiceDetailsList")
    if not isinstance(rows, list):
        raise SandboxRefusal("E9500", "data.invoiceDetailsList must be a list")
    items = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("goodsName"):
            raise SandboxRefusal("E9500", f"invoiceDetailsList[{n}].goodsName is required")
        if str(row.get("priceTaxMark", "0")) != "0":
            raise SandboxRefusal("E9500", f"invoiceDetailsList[{n}]: the sandbox takes prices without tax")
        items.append(
            Item(
                name=str(row["goodsName"]),
                amount=decimal_field(row.get("goodsTotalPrice"), f"invoiceDetailsList[{n}].goodsTotalPrice"),
                rate=decimal_field(row.get("goodsTaxRate"), f"invoiceDetailsList[{n}].goodsTaxRate"),
                tax=decimal_field(row.get("goodsTotalTax"), f"invoiceDetailsList[{n}].goodsTotalTax"),
                quantity=decimal_field(row["goodsQuantity"], "goodsQuantity")
                if row.get("goodsQuantity")
                else None,
                price=decimal_field(row["goodsPrice"], "goodsPrice") if row.get("goodsPrice") else None,
                spec=row.get("goodsSpecification") or None,
                unit=row.get("goodsUnit") or None,
                code=row.get("goodsCode") or None,
            )
        )
    digital, special = _TYPES[type_code]
    issue = IssueData(
        seller_tax=tax_no,
        seller_name=str(data.get("sellerName") or platform.seller_name),
        seller_addr=data.get("sellerAddress") or None,
        seller_tel=data.get("sellerPhone") or None,
        seller_bank=data.get("sellerBankName") or None,
        seller_account=data.get("sellerBankNumber") or None,
        buyer_name=str(data.get("buyerName") or ""),
        buyer_tax=data.get("buyerTaxNo") or None,
        buyer_addr=data.get("buyerAddress") or None,
        buyer_tel=data.get("buyerPhone") or None,
        buyer_bank=data.get("buyerBankName") or None,
        buyer_account=data.get("buyerBankNumber") or None,
        remark=data.get("remarks") or None,
        drawer=str(data.get("drawer") or "开票员"),
        items=items,
        special=special,
        digital=digital,
    )
    return serial_no, issue, data.get("callbackUrl") or None


def create_app(
    *,
    app_key: str = "sandbox-app-key",
    app_secret: str = "sandbox-app-secret",
    tax_no: str | None = None,
    issue_delay: float = 0.2,
    province: str = "32",
    channel: str = "1",
    skew: float = 600.0,
    token_ttl: float = 86400.0,
    token_cap: int = 50,
    callback_url: str | None = None,
    red_confirm_status: str = "04",
    faults: dict[str, Any] | None = None,
) -> Starlette:
    """The Baiwang sandbox as an ASGI app; ``app.state.platform`` is its ``Platform``.
    ``tax_no``: the only seller tax id the account may issue for (default: any)."""
    platform = Platform(
        name="baiwang",
        app_key=app_key,
        app_secret=app_secret,
        issue_delay=issue_delay,
        province=province,
        channel=channel,
        skew=skew,
        token_ttl=token_ttl,
        token_cap=token_cap,
        callback_url=callback_url,
        red_confirm_status=red_confirm_status,
        faults=Faults.model_validate(faults or {}),
    )

    def callback(order: Order, stage: str) -> tuple[bytes, dict[str, str]]:
        record = _record(platform, order, platform.base_url or "")
        if stage == "issuing":
            record.update(invoiceStatus="00", statusMessage="开具中", einvoiceNo="", invoiceNo="")
            for key in ("pdfUrl", "ofdUrl", "xmlUrl"):
                record.pop(key, None)
        body = json.dumps(record, ensure_ascii=False).encode()
        return body, {
            "Content-Type": "application/json",
            "X-Bw-Sign": callback_sign(platform.app_secret, body),
        }

    platform.callback_builder = callback

    async def router(request: Request) -> Response:
        if request.query_params.get("method") == "baiwang.oauth.token":
            return _token(dict(request.query_params), await request.body())
        return await guarded(platform, lambda: _router(request))

    async def _router(request: Request) -> Response:
        platform.base_url = str(request.base_url).rstrip("/")
        params = dict(request.query_params)
        method = params.get("method", "")
        request_id = params.get("requestId", "")
        body = await request.body()
        for name in ("appKey", "token", "timestamp", "version", "requestId", "sign"):
            if not params.get(name):
                return _error(method, request_id, "100006", f"缺少参数 {name}")
        if params["appKey"] != platform.app_key:
            return _error(method, request_id, "100005", "appKey不存在")
        if not params["timestamp"].isdigit() or not platform.check_timestamp(int(params["timestamp"]) / 1000):
            return _error(method, request_id, "100003", "timestamp超出允许范围")
        if not hmac.compare_digest(sign(platform.app_secret, params, body).encode(), params["sign"].encode()):
            platform.counters["bad_signatures"] += 1
            return _error(method, request_id, "100002", "签名错误")
        if not platform.remember_nonce(request_id):
            return _error(method, request_id, "100007", "重复请求（requestId已使用）")
        if not platform.token_valid(params["token"]):
            return _error(method, request_id, "100004", "token无效或已过期")
        handler = handlers.get(method)
        if handler is None:
            return _error(method, request_id, "100006", f"方法不存在: {method}")
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            return _error(method, request_id, "E9500", "请求体不是JSON对象")
        if tax_no is not None and payload.get("taxNo") != tax_no:
            return _error(method, request_id, "E9500", f"taxNo {payload.get('taxNo')!r} 不属于该应用")
        try:
            result, issuing = await handler(payload)
        except SandboxRefusal as refusal:
            return _error(method, request_id, refusal.code, refusal.message)
        answer = _ok(method, request_id, result)
        return await platform.after_issue(answer) if issuing else answer

    def _token(params: dict[str, str], body: bytes) -> Response:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "password":
            return _error("baiwang.oauth.token", "", "100006", "grant_type must be password")
        if form.get("client_id") != platform.app_key or not hmac.compare_digest(
            form.get("client_secret", "").encode(), platform.app_secret.encode()
        ):
            return _error("baiwang.oauth.token", "", "100008", "client_id或client_secret错误")
        issued = platform.fetch_token()
        if issued is None:
            return _error("baiwang.oauth.token", "", "100009", "获取token次数超过限制")
        token, ttl = issued
        return _ok(
            "baiwang.oauth.token",
            params.get("requestId", ""),
            {"access_token": token, "expires_in": int(ttl), "token_type": "bearer"},
        )

    async def issue(body: dict[str, Any]) -> tuple[Any, bool]:
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        if str(data.get("invoiceType", "0")) == "1":
            return await _issue_red(body, data)
        serial_no, issue_data, callback_url = _read_data(body, platform)
        order, created = platform.submit(serial_no, issue_data, callback_url)
        return _record(platform, order, platform.base_url or "") | {"duplicate": not created}, created

    async def _issue_red(body: dict[str, Any], data: dict[str, Any]) -> tuple[Any, bool]:
        serial_no = str(data.get("serialNo") or "")
        if not serial_no or len(serial_no) > SERIAL_MAX:
            raise SandboxRefusal("E9500", f"data.serialNo is required, at most {SERIAL_MAX} characters")
        if serial_no in platform.orders:
            order = platform.orders[serial_no]
            return _record(platform, order, platform.base_url or "") | {"duplicate": True}, False
        blue = platform.by_number.get(str(data.get("originalInvoiceNo") or ""))
        if blue is None or blue.data.seller_tax != body.get("taxNo"):
            raise SandboxRefusal("E9601", f"蓝字发票 {data.get('originalInvoiceNo')} 不存在")
        red_info = str(data.get("redInfoNo") or "")
        if blue.data.digital and not any(f.form_no == red_info for f in platform.red_forms.values()):
            raise SandboxRefusal("E9604", f"红字信息表 {red_info} 不存在")
        b = blue.data
        fields = {
            k: getattr(b, k) for k in b.__dataclass_fields__ if k not in {"items", "red", "blue_number"}
        }
        red = IssueData(
            **fields,
            items=[
                Item(
                    i.name,
                    -i.amount,
                    i.rate,
                    -i.tax,
                    None if i.quantity is None else -i.quantity,
                    i.price,
                    i.spec,
                    i.unit,
                    i.code,
                )
                for i in b.items
            ],
            red=True,
            blue_number=blue.number,
        )
        red.red_form_no = red_info or None
        order, created = platform.submit(serial_no, red, data.get("callbackUrl") or None)
        return _record(platform, order, platform.base_url or "") | {"duplicate": not created}, created

    async def query(body: dict[str, Any]) -> tuple[Any, bool]:
        tax = body.get("taxNo")
        if body.get("serialNo") or body.get("invoiceId"):
            order = platform.orders.get(str(body.get("serialNo"))) or platform.by_serial.get(
                str(body.get("invoiceId"))
            )
            rows = [platform.refresh(order)] if order is not None and order.data.seller_tax == tax else []
            return {
                "total": len(rows),
                "list": [_record(platform, o, platform.base_url or "") for o in rows],
            }, False
        try:
            start = datetime.strptime(str(body.get("startDate")), "%Y-%m-%d %H:%M:%S").replace(
                tzinfo=SHANGHAI
            )
            end = datetime.strptime(str(body.get("endDate")), "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
        except ValueError:
            raise SandboxRefusal("E9500", "serialNo, invoiceId or startDate/endDate is required") from None
        page_no, page_size = int(body.get("pageNo") or 1), min(int(body.get("pageSize") or 50), 100)
        rows = [o for o in platform.issued_between(start, end) if o.data.seller_tax == tax]
        page = rows[(page_no - 1) * page_size : page_no * page_size]
        return {
            "total": len(rows),
            "list": [_record(platform, o, platform.base_url or "") for o in page],
        }, False

    async def cancel(body: dict[str, Any]) -> tuple[Any, bool]:
        order = platform.by_serial.get(str(body.get("invoiceId") or ""))
        number = str(body.get("invoiceNo") or "")
        if order is None or order.number != number or order.data.seller_tax != body.get("taxNo"):
            raise SandboxRefusal("E9601", f"发票 {number} 不存在")
        platform.void(number)
        return {"invoiceId": order.serial, "invoiceStatus": "03"}, False

    def _form_view(form: Any) -> dict[str, Any]:
        return {
            "redInfoId": form.form_id,
            "redInfoNo": form.form_no,
            "redInfoStatus": form.status,
            "originalInvoiceNo": form.blue_number,
            "redReason": form.reason,
            "redTotalPrice": format(form.amount, "f"),
            "redTotalTax": format(form.tax, "f"),
        }

    async def redinfo_add(body: dict[str, Any]) -> tuple[Any, bool]:
        blue = platform.by_number.get(str(body.get("originalInvoiceNo") or ""))
        if blue is None or blue.data.seller_tax != body.get("taxNo"):
            raise SandboxRefusal("E9601", f"蓝字发票 {body.get('originalInvoiceNo')} 不存在")
        form, _created = platform.red_form(blue.number or "", str(body.get("redReason") or ""))
        return _form_view(form), False

    async def redinfo_query(body: dict[str, Any]) -> tuple[Any, bool]:
        blue, form_id = body.get("originalInvoiceNo"), body.get("redInfoId")
        forms = [
            f
            for f in platform.red_forms.values()
            if (form_id and f.form_id == form_id) or (blue and f.blue_number == blue)
        ]
        return [_form_view(f) for f in forms], False

    handlers = {
        "baiwang.output.invoice.issue": issue,
        "baiwang.output.invoice.query": query,
        "baiwang.output.invoice.cancel": cancel,
        "baiwang.output.redinfo.add": redinfo_add,
        "baiwang.output.redinfo.query": redinfo_query,
    }

    app = Starlette(
        routes=[
            Route("/router/rest", router, methods=["POST"]),
            platform.files_route(),
            *platform.admin_routes(),
        ],
        middleware=[Middleware(PlatformClock, platform=platform)],
    )
    app.state.platform = platform
    app.state.sends_date_header = True
    return app
