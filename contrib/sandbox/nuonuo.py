"""A sandbox of the Nuonuo open platform (诺诺开放平台), for trying the hub and for tests over sockets.

Protocol, as the platform documents it (DOMAIN.md):

* ``POST /accessToken`` (form: ``client_id``, ``client_secret``, ``grant_type=client_credentials``)
  → ``{"access_token": ..., "expires_in": 86400}``; fetches are capped (``token_cap``, 50 by default).
* ``POST /open/v1/services?senid=<32 random>&nonce=<8 digits>&timestamp=<s>&appkey=<appKey>`` with headers
  ``X-Nuonuo-Sign``, ``accessToken``, ``userTax``, ``method`` and the JSON body. The sign is
  ``Base64(HMAC-SHA1(appSecret, "a=services&l=v1&p=open&k={appKey}&i={senid}&n={nonce}&t={ts}&f={body}"))``
  over the exact body bytes. Answers are ``{"code": "E0000", "describe": ..., "result": ...}``.

Codes this sandbox answers with (the gateway codes are the sandbox's choice; see README.md):
``E0000`` ok, ``070301`` bad signature, ``070302`` timestamp outside the window, ``070303`` access token
invalid or expired, ``070304`` unknown appkey, ``070305`` missing parameter or unknown method,
``070306`` replayed senid, ``E9106`` order number exists (the existing serial is in ``result``),
``E9500``/``E952x`` invalid request, ``E9601`` invoice not found, ``E9603`` already red-lettered,
``E9604`` no confirmed red-letter form, ``E9605`` a 数电 invoice cannot be voided.
"""

from __future__ import annotations

import asyncio
import base64
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
    split_bank,
)

DEFAULT_PORT = 8765
PREFIX = "nuonuo.OpeMplatform."
ORDER_NO_MAX = 20
_LINES = {
    "bs": (True, True),
    "pc": (True, False),
    "s": (False, True),
    "p": (False, False),
    "c": (False, False),
}


def sign(app_secret: str, app_key: str, senid: str, nonce: str, timestamp: str, body: bytes) -> str:
    """The Nuonuo request signature."""
    message = f"a=services&l=v1&p=open&k={app_key}&i={senid}&n={nonce}&t={timestamp}&f=".encode() + body
    digest = hmac.new(app_secret.encode(), message, hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _answer(code: str, describe: str, result: Any = None) -> JSONResponse:
    return JSONResponse({"code": code, "describe": describe, "result": result})


def _status(platform: Platform, order: Order, request_time: float) -> tuple[str, str]:
    if order.status == "issued":
        return "2", "开票完成（最终状态）"
    if order.status == "failed":
        return ("24", "签章失败") if order.fail_code == "E9803" else ("22", "开票失败")
    if order.status == "void":
        return "3", "已作废"
    half_way = order.ready_at - platform.issue_delay / 2
    return ("21", "开票成功签章中") if request_time >= half_way else ("20", "开票中")


def _invoice_view(
    platform: Platform, order: Order, base: str, loop_time: float, detail: bool
) -> dict[str, Any]:
    d = order.data
    status, message = _status(platform, order, loop_time)
    out: dict[str, Any] = {
        "serialNo": order.serial,
        "orderNo": order.order_no,
        "status": status,
        "statusMsg": message,
        "failCause": order.fail_message or "",
        "invoiceLine": _line_of(d),
        "invoiceType": "2" if d.red else "1",
        "buyerName": d.buyer_name,
        "buyerTaxNum": d.buyer_tax or "",
        "salerTaxNum": d.seller_tax,
        "salerName": d.seller_name,
        "orderAmount": format(d.gross, "f"),
        "exTaxAmount": format(d.net, "f"),
        "taxAmount": format(d.tax, "f"),
        "invoiceCode": order.code or "",
        "invoiceNo": order.number if (order.number and not d.digital) else "",
        "allElectronicInvoiceNumber": order.number if (order.number and d.digital) else "",
        "invoiceTime": int(order.issued_at.timestamp() * 1000) if order.issued_at else None,
        "oldInvoiceNo": d.blue_number or "",
        "redConfirmBillNo": d.red_form_no or "",
    }
    if order.status in {"issued", "void"}:
        out["pdfUrl"] = platform.file_url(order, "pdf", base)
        out["ofdUrl"] = platform.file_url(order, "ofd", base) if d.digital else ""
        out["xmlUrl"] = platform.file_url(order, "xml", base) if d.digital else ""
    if detail:
        out["invoiceItems"] = [
            {
                "itemName": i.name,
                "itemSpec": i.spec or "",
                "itemUnit": i.unit or "",
                "itemNum": "" if i.quantity is None else format(i.quantity, "f"),
                "itemPrice": "" if i.price is None else format(i.price, "f"),
                "itemAmount": format(i.amount, "f"),
                "itemTaxRate": format(i.rate, "f"),
                "itemTaxAmount": format(i.tax, "f"),
                "itemCode": i.code or "",
            }
            for i in d.items
        ]
    return out


def _line_of(d: IssueData) -> str:
    if d.digital:
        return "bs" if d.special else "pc"
    return "s" if d.special else "p"


def _read_order(body: dict[str, Any], user_tax: str, platform: Platform) -> tuple[str, IssueData, str | None]:
    order = body.get("order")
    if not isinstance(order, dict):
        raise SandboxRefusal("E9500", 'body must be {"order": {...}}')
    order_no = str(order.get("orderNo") or "")
    if not order_no or len(order_no) > ORDER_NO_MAX:
        raise SandboxRefusal("E9500", f"orderNo is required, at most {ORDER_NO_MAX} characters")
    line = str(order.get("invoiceLine") or "")
    if line not in _LINES:
        raise SandboxRefusal("E9500", f"invoiceLine {line!r} is not one of {sorted(_LINES)}")
    if str(order.get("invoiceType", "1")) != "1":
        raise SandboxRefusal("E9500", "red-letter invoices are issued with fastInvoiceRed")
    if order.get("salerTaxNum") != user_tax:
        raise SandboxRefusal("E9500", "salerTaxNum does not match the userTax header")
    details = order.get("invoiceDetail")
    if not isinstance(details, list):
        raise SandboxRefusal("E9500", "invoiceDetail must be a list")
    items = []
    for n, row in enumerate(details, 1):
        if not isinstance(row, dict) or not row.get("goodsName"):
            raise SandboxRefusal("E9500", f"invoiceDetail[{n}].goodsName is required")
        if str(row.get("withTaxFlag", "0")) != "0":
            raise SandboxRefusal(
                "E9500", f"invoiceDetail[{n}]: this sandbox takes prices without tax (withTaxFlag 0)"
            )
        items.append(
            Item(
                name=str(row["goodsName"]),
                amount=decimal_field(row.get("taxExcludedAmount"), f"invoiceDetail[{n}].taxExcludedAmount"),
                rate=decimal_field(row.get("taxRate"), f"invoiceDetail[{n}].taxRate"),
                tax=decimal_field(row.get("tax"), f"invoiceDetail[{n}].tax"),
                quantity=decimal_field(row["num"], "num") if row.get("num") not in (None, "") else None,
                price=decimal_field(row["price"], "price") if row.get("price") not in (None, "") else None,
                spec=row.get("specType") or None,
                unit=row.get("unit") or None,
                code=row.get("goodsCode") or None,
            )
        )
    digital, special = _LINES[line]
    data = IssueData(
        seller_tax=user_tax,
        seller_name=str(order.get("salerName") or platform.seller_name),
        seller_addr=order.get("salerAddress") or None,
        seller_tel=order.get("salerTel") or None,
        seller_bank=split_bank(order.get("salerAccount"))[0],
        seller_account=split_bank(order.get("salerAccount"))[1],
        buyer_name=str(order.get("buyerName") or ""),
        buyer_tax=order.get("buyerTaxNum") or None,
        buyer_addr=order.get("buyerAddress") or None,
        buyer_tel=order.get("buyerTel") or None,
        buyer_bank=split_bank(order.get("buyerAccount"))[0],
        buyer_account=split_bank(order.get("buyerAccount"))[1],
        remark=order.get("remark") or None,
        drawer=str(order.get("clerk") or "开票员"),
        items=items,
        special=special,
        digital=digital,
    )
    return order_no, data, order.get("callBackUrl") or None


def _parse_time(value: Any, where: str) -> datetime:
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
    except ValueError:
        raise SandboxRefusal("E9500", f"{where} must be 'YYYY-MM-DD HH:MM:SS', got {value!r}") from None


def create_app(
    *,
    app_key: str = "sandbox-app-key",
    app_secret: str = "sandbox-app-secret",
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
    """The Nuonuo sandbox as an ASGI app; ``app.state.platform`` is its ``Platform``."""
    platform = Platform(
        name="nuonuo",
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
        base = platform.base_url or ""
        view = _invoice_view(platform, order, base, order.ready_at if stage == "final" else 0.0, False)
        if stage == "issuing":
            view.update(status="20", statusMsg="开票中")
            for key in ("pdfUrl", "ofdUrl", "xmlUrl", "allElectronicInvoiceNumber", "invoiceNo"):
                view.pop(key, None)
        body = json.dumps({"operater": "callback", "content": view}, ensure_ascii=False).encode()
        digest = hmac.new(platform.app_secret.encode(), body, hashlib.sha1).digest()
        return body, {"Content-Type": "application/json", "X-Nuonuo-Sign": base64.b64encode(digest).decode()}

    platform.callback_builder = callback

    async def access_token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if form.get("client_id") != platform.app_key or not hmac.compare_digest(
            form.get("client_secret", "").encode(), platform.app_secret.encode()
        ):
            return JSONResponse(
                {"error": "invalid_client", "error_description": "client_id or client_secret is wrong"},
                status_code=401,
            )
        issued = platform.fetch_token()
        if issued is None:
            return JSONResponse(
                {"error": "070101", "error_description": "获取accessToken次数超过限制"}, status_code=403
            )
        token, ttl = issued
        return JSONResponse({"access_token": token, "expires_in": int(ttl)})

    async def services(request: Request) -> Response:
        return await guarded(platform, lambda: _services(request))

    async def _services(request: Request) -> Response:
        platform.base_url = str(request.base_url).rstrip("/")
        q = request.query_params
        senid, nonce, ts, appkey = (q.get(k, "") for k in ("senid", "nonce", "timestamp", "appkey"))
        method = request.headers.get("method", "")
        given_sign = request.headers.get("X-Nuonuo-Sign", "")
        body = await request.body()
        if not (senid and nonce and ts and appkey and method and given_sign):
            return _answer("070305", "缺少必要参数 senid/nonce/timestamp/appkey/method/X-Nuonuo-Sign")
        if appkey != platform.app_key:
            return _answer("070304", "appkey不存在")
        if not ts.isdigit() or not platform.check_timestamp(int(ts)):
            return _answer("070302", "timestamp超出允许范围")
        expected = sign(platform.app_secret, appkey, senid, nonce, ts, body)
        if not hmac.compare_digest(expected.encode(), given_sign.encode()):
            platform.counters["bad_signatures"] += 1
            return _answer("070301", "签名校验失败")
        if not platform.remember_nonce(senid):
            return _answer("070306", "重复请求（senid已使用）")
        if not platform.token_valid(request.headers.get("accessToken")):
            return _answer("070303", "accessToken无效或已过期")
        user_tax = request.headers.get("userTax", "")
        if not method.startswith(PREFIX) or method[len(PREFIX) :] not in handlers:
            return _answer("070305", f"方法不存在: {method}")
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            return _answer("E9500", "请求体不是JSON对象")
        try:
            return await handlers[method[len(PREFIX) :]](payload, user_tax)
        except SandboxRefusal as refusal:
            return _answer(refusal.code, refusal.message)

    async def request_billing(body: dict[str, Any], user_tax: str) -> Response:
        order_no, data, callback_url = _read_order(body, user_tax, platform)
        order, created = platform.submit(order_no, data, callback_url)
        if not created:
            return _answer("E9106", "订单编号重复", {"invoiceSerialNum": order.serial})
        return await platform.after_issue(
            _answer("E0000", "开票提交成功", {"invoiceSerialNum": order.serial})
        )

    async def query_result(body: dict[str, Any], user_tax: str) -> Response:
        serials = body.get("serialNos") or []
        order_nos = body.get("orderNos") or []
        if not isinstance(serials, list) or not isinstance(order_nos, list) or not (serials or order_nos):
            raise SandboxRefusal("E9500", "serialNos or orderNos (lists) is required")
        if len(serials) + len(order_nos) > 50:
            raise SandboxRefusal("E9500", "at most 50 serialNos/orderNos per query")
        found = [platform.by_serial.get(str(s)) for s in serials] + [
            platform.orders.get(str(o)) for o in order_nos
        ]
        now = asyncio.get_running_loop().time()
        detail = str(body.get("isOfferInvoiceDetail", "0")) == "1"
        result = [
            _invoice_view(platform, platform.refresh(o), platform.base_url or "", now, detail)
            for o in found
            if o is not None and o.data.seller_tax == user_tax
        ]
        return _answer("E0000", "查询成功", result)

    async def query_list(body: dict[str, Any], user_tax: str) -> Response:
        start = _parse_time(body.get("startTime"), "startTime")
        end = _parse_time(body.get("endTime"), "endTime")
        page_no = int(body.get("pageNo") or 1)
        page_size = min(int(body.get("pageSize") or 50), 100)
        if page_no < 1 or page_size < 1:
            raise SandboxRefusal("E9500", "pageNo and pageSize must be positive")
        now = asyncio.get_running_loop().time()
        rows = [o for o in platform.issued_between(start, end) if o.data.seller_tax == user_tax]
        page = rows[(page_no - 1) * page_size : page_no * page_size]
        views = [_invoice_view(platform, o, platform.base_url or "", now, False) for o in page]
        return _answer("E0000", "查询成功", {"total": len(rows), "list": views})

    async def red_confirm(body: dict[str, Any], user_tax: str) -> Response:
        blue = str(body.get("blueInvoiceNumber") or "")
        blue_order = platform.by_number.get(blue)
        if blue_order is None or blue_order.data.seller_tax != user_tax:
            raise SandboxRefusal("E9601", f"蓝字发票 {blue} 不存在")
        form, _created = platform.red_form(blue, str(body.get("redReason") or ""))
        return _answer(
            "E0000",
            "红字确认单提交成功",
            {
                "billId": form.form_id,
                "billNo": form.form_no,
                "billStatus": form.status,
                "amount": format(form.amount, "f"),
                "taxAmount": format(form.tax, "f"),
            },
        )

    async def red_confirm_query(body: dict[str, Any], user_tax: str) -> Response:
        bill_id, blue = body.get("billId"), body.get("blueInvoiceNumber")
        forms = [
            f
            for f in platform.red_forms.values()
            if (bill_id and f.form_id == bill_id) or (blue and f.blue_number == blue)
        ]
        return _answer(
            "E0000",
            "查询成功",
            [
                {
                    "billId": f.form_id,
                    "billNo": f.form_no,
                    "billStatus": f.status,
                    "blueInvoiceNumber": f.blue_number,
                    "redReason": f.reason,
                    "amount": format(f.amount, "f"),
                    "taxAmount": format(f.tax, "f"),
                }
                for f in forms
            ],
        )

    async def fast_red(body: dict[str, Any], user_tax: str) -> Response:
        order_no = str(body.get("orderNo") or "")
        if not order_no or len(order_no) > ORDER_NO_MAX:
            raise SandboxRefusal("E9500", f"orderNo is required, at most {ORDER_NO_MAX} characters")
        blue = platform.by_number.get(str(body.get("invoiceNumber") or ""))
        if blue is None or blue.data.seller_tax != user_tax:
            raise SandboxRefusal("E9601", f"蓝字发票 {body.get('invoiceNumber')} 不存在")
        bill_no = str(body.get("billNo") or "")
        if blue.data.digital and not any(f.form_no == bill_no for f in platform.red_forms.values()):
            raise SandboxRefusal("E9604", f"红字确认单 {bill_no} 不存在")
        b = blue.data
        data = IssueData(
            **{k: getattr(b, k) for k in b.__dataclass_fields__ if k not in {"items", "red", "blue_number"}},
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
        data.red_form_no = bill_no or None
        order, created = platform.submit(order_no, data, body.get("callBackUrl") or None)
        if not created:
            return _answer("E9106", "订单编号重复", {"invoiceSerialNum": order.serial})
        return await platform.after_issue(
            _answer("E0000", "红冲提交成功", {"invoiceSerialNum": order.serial})
        )

    async def cancel(body: dict[str, Any], user_tax: str) -> Response:
        order = platform.by_serial.get(str(body.get("invoiceId") or ""))
        number = str(body.get("invoiceNo") or "")
        if order is None or order.number != number or order.data.seller_tax != user_tax:
            raise SandboxRefusal("E9601", f"发票 {number} 不存在")
        platform.void(number)
        return _answer("E0000", "作废成功", {"invoiceId": order.serial})

    handlers = {
        "requestBillingNew": request_billing,
        "queryInvoiceResult": query_result,
        "queryInvoiceList": query_list,
        "saveInvoiceRedConfirm": red_confirm,
        "queryInvoiceRedConfirm": red_confirm_query,
        "fastInvoiceRed": fast_red,
        "invoiceCancellation": cancel,
    }

    app = Starlette(
        routes=[
            Route("/accessToken", access_token, methods=["POST"]),
            Route("/open/v1/services", services, methods=["POST"]),
            platform.files_route(),
            *platform.admin_routes(),
        ],
        middleware=[Middleware(PlatformClock, platform=platform)],
    )
    app.state.platform = platform
    app.state.sends_date_header = True
    return app
