"""``einvoice.nuonuo``: issue invoices through the Nuonuo open platform (诺诺开放平台).

Wire protocol (public docs, id 100607; public SDKs): ``POST /open/v1/services?senid&nonce&timestamp&appkey``
with headers ``X-Nuonuo-Sign``, ``accessToken``, ``userTax``, ``method``; the sign is
``Base64(HMAC-SHA1(appSecret, "a=services&l=v1&p=open&k={appKey}&i={senid}&n={nonce}&t={ts}&f={body}"))``
over the exact body bytes sent. Success is ``code == "E0000"``. Tokens come from ``POST /accessToken``
(client credentials), last 24 h, and their fetches are capped, so the base caches them.
Issuing status: 20 issuing, 21 signing, 2 done, 22 failed, 24 signing failed, 3 void.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

import click
import orjson

from hub import hookimpl
from hub.connectors import Connector
from hub.errors import PermanentError, TransientError
from hub.models import SHANGHAI, Invoice

from ._einvoice import (
    EInvoiceConnector,
    EInvoiceSettings,
    PlatformInvoice,
    RedForm,
    _Resend,
    money,
    parse_decimal,
    plain,
    register_commands,
)

_STATES = {"20": "issuing", "21": "issuing", "2": "issued", "22": "failed", "24": "failed", "3": "void"}
_TOKEN_CODES = frozenset({"070303"})
_CLOCK_CODES = frozenset({"070302"})
_DUPLICATE = frozenset({"E9106"})


def sign(app_secret: str, app_key: str, senid: str, nonce: str, timestamp: str, body: bytes) -> str:
    """``X-Nuonuo-Sign`` for one request."""
    message = f"a=services&l=v1&p=open&k={app_key}&i={senid}&n={nonce}&t={timestamp}&f=".encode() + body
    return base64.b64encode(hmac.new(app_secret.encode(), message, hashlib.sha1).digest()).decode()


class NuonuoSettings(EInvoiceSettings):
    auth_path: str = "/accessToken"
    services_path: str = "/open/v1/services"


class NuonuoConnector(EInvoiceConnector):
    """Issue, query, red-letter and void invoices through Nuonuo; list issued invoices."""

    type_name: ClassVar[str] = "einvoice.nuonuo"
    Settings = NuonuoSettings
    platform: ClassVar[str] = "nuonuo"
    order_no_max: ClassVar[int] = 20
    settings: NuonuoSettings

    # -- protocol ---------------------------------------------------------------------------------------
    def _fetch_token(self) -> tuple[str, float]:
        s = self.settings
        response = self._http(
            "POST",
            s.auth_path,
            what="access token",
            data={
                "client_id": self.app_key,
                "client_secret": s.app_secret.get_secret_value(),
                "grant_type": "client_credentials",
            },
        )
        payload = self._json(response, "access token")
        if response.status_code != 200 or "access_token" not in payload:
            code = str(payload.get("error", response.status_code))
            message = str(payload.get("error_description", "token refused"))
            if response.status_code == 403:  # the fetch cap: waiting is the only remedy
                raise TransientError(
                    f"nuonuo access token: [{code}] {message}",
                    remote_status=403,
                    remote_body=response.text[:2000],
                    connector=self.name,
                )
            raise self.refusal("access token", code, message, response.text)
        return str(payload["access_token"]), float(payload.get("expires_in", 86400))

    def _rpc(self, method: str, body: dict[str, Any], *, accept: frozenset[str] = frozenset()) -> Any:
        s = self.settings
        raw = orjson.dumps(body)
        token = self.access_token()
        senid = uuid.uuid4().hex
        nonce = f"{secrets.randbelow(10**8):08d}"
        timestamp = str(int(self._now()))
        response = self._http(
            "POST",
            s.services_path,
            what=method,
            params={"senid": senid, "nonce": nonce, "timestamp": timestamp, "appkey": self.app_key},
            content=raw,
            headers={
                "Content-Type": "application/json;charset=utf-8",
                "X-Nuonuo-Sign": sign(
                    s.app_secret.get_secret_value(), self.app_key, senid, nonce, timestamp, raw
                ),
                "accessToken": token,
                "userTax": s.user_tax,
                "method": f"nuonuo.OpeMplatform.{method}",
            },
        )
        payload = self._json(response, method)
        code = str(payload.get("code", ""))
        if code == "E0000":
            return payload.get("result")
        if code in accept:
            return code, payload.get("result")
        if code in _TOKEN_CODES:
            self._drop_token(token)
            raise _Resend("token")
        if code in _CLOCK_CODES:
            raise _Resend("clock")
        raise self.refusal(method, code, str(payload.get("describe", "")), response.text)

    # -- issuing ----------------------------------------------------------------------------------------
    def _line(self, invoice: Invoice) -> str:
        special = self.special(invoice)
        if self.settings.digital:
            return "bs" if special else "pc"
        return "s" if special else "p"

    def _submit(self, order_no: str, invoice: Invoice) -> None:
        seller, buyer = invoice.seller, invoice.buyer
        details = []
        for line in invoice.lines:
            tax = self.line_tax(line.amount, line.tax_rate, line.tax_amount)
            details.append(
                {
                    "goodsName": line.name,
                    "goodsCode": line.tax_code or "",
                    "specType": line.spec or "",
                    "unit": line.unit or "",
                    "num": plain(line.quantity),
                    "price": plain(line.unit_price),
                    "withTaxFlag": "0",
                    "taxRate": plain(line.tax_rate) or "0",
                    "tax": money(tax),
                    "taxExcludedAmount": money(line.amount),
                    "taxIncludedAmount": money(line.amount + tax),
                }
            )
        order = {
            "orderNo": order_no,
            "invoiceDate": datetime.fromtimestamp(self._now(), SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
            "clerk": self.settings.drawer,
            "salerTaxNum": self.settings.user_tax,
            "salerName": seller.name,
            "salerTel": seller.phone or "",
            "salerAddress": seller.address or "",
            "salerAccount": " ".join(x for x in (seller.bank_name, seller.bank_account) if x),
            "buyerName": buyer.name,
            "buyerTaxNum": buyer.tax_id or "",
            "buyerTel": buyer.phone or "",
            "buyerAddress": buyer.address or "",
            "buyerAccount": " ".join(x for x in (buyer.bank_name, buyer.bank_account) if x),
            "invoiceType": "1",
            "invoiceLine": self._line(invoice),
            "pushMode": "-1",
            "remark": str(invoice.extra.get("remark") or ""),
            "invoiceDetail": details,
        }
        if self.settings.callback_url:
            order["callBackUrl"] = self.settings.callback_url
        self._call("requestBillingNew", {"order": order}, accept=_DUPLICATE)

    def _submit_red(self, order_no: str, blue_number: str, form: RedForm, invoice: Invoice | None) -> None:
        body = {
            "orderNo": order_no,
            "taxNum": self.settings.user_tax,
            "invoiceNumber": blue_number,
            "billNo": form.form_no,
            "billId": form.form_id,
            "orderTime": datetime.fromtimestamp(self._now(), SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
        }
        if self.settings.callback_url:
            body["callBackUrl"] = self.settings.callback_url
        self._call("fastInvoiceRed", body, accept=_DUPLICATE)

    def _query(self, *, order_no: str | None = None, serial: str | None = None) -> PlatformInvoice | None:
        body: dict[str, Any] = {"isOfferInvoiceDetail": "0"}
        if serial:
            body["serialNos"] = [serial]
        else:
            body["orderNos"] = [order_no]
        result = self._call("queryInvoiceResult", body)
        if not result:
            return None
        return self._read(result[0])

    def _read(self, row: dict[str, Any]) -> PlatformInvoice:
        status = str(row.get("status", ""))
        line = str(row.get("invoiceLine", ""))
        digital = line in {"bs", "pc"}
        number = row.get("allElectronicInvoiceNumber") if digital else row.get("invoiceNo")
        millis = row.get("invoiceTime")
        return PlatformInvoice(
            order_no=str(row.get("orderNo", "")),
            serial=str(row.get("serialNo", "")),
            state=_STATES.get(status, "issuing"),  # type: ignore[arg-type]
            status_code=status,
            message=str(row.get("failCause") or row.get("statusMsg") or ""),
            number=str(number) if number else None,
            code=str(row.get("invoiceCode")) if row.get("invoiceCode") else None,
            issued_at=datetime.fromtimestamp(int(millis) / 1000, SHANGHAI) if millis else None,
            urls={k: str(row[f"{k}Url"]) for k in ("ofd", "xml", "pdf") if row.get(f"{k}Url")},
            net=parse_decimal(row.get("exTaxAmount")),
            tax=parse_decimal(row.get("taxAmount")),
            gross=parse_decimal(row.get("orderAmount")),
            seller_tax=row.get("salerTaxNum") or None,
            buyer_tax=row.get("buyerTaxNum") or None,
            digital=digital,
            special=line in {"bs", "s"},
            red=str(row.get("invoiceType", "1")) == "2",
            blue_number=row.get("oldInvoiceNo") or None,
            raw=row,
        )

    def _apply_red_form(self, blue_number: str, reason: str) -> RedForm:
        existing = self._call("queryInvoiceRedConfirm", {"blueInvoiceNumber": blue_number}) or []
        live = [f for f in existing if str(f.get("billStatus")) in {"01", "02", "03", "04"}]
        if live:
            row = live[0]
        else:
            row = self._call(
                "saveInvoiceRedConfirm",
                {
                    "taxNum": self.settings.user_tax,
                    "blueInvoiceNumber": blue_number,
                    "redReason": reason,
                    "applySource": "0",
                },
            )
        return RedForm(
            str(row["billId"]),
            str(row["billNo"]),
            str(row["billStatus"]),
            blue_number,
            parse_decimal(row.get("amount")),
            parse_decimal(row.get("taxAmount")),
        )

    def _void(self, serial: str, number: str, code: str | None) -> None:
        self._call(
            "invoiceCancellation", {"invoiceId": serial, "invoiceNo": number, "invoiceCode": code or ""}
        )

    def _list(self, start: datetime, end: datetime) -> Iterator[PlatformInvoice]:
        page, size = 1, self.settings.inventory_page_size
        while True:
            result = self._call(
                "queryInvoiceList",
                {
                    "startTime": start.strftime("%Y-%m-%d %H:%M:%S"),
                    "endTime": end.strftime("%Y-%m-%d %H:%M:%S"),
                    "pageNo": page,
                    "pageSize": size,
                },
            )
            rows = result.get("list") or []
            for row in rows:
                yield self._read(row)
            if not rows or page * size >= int(result.get("total") or 0):
                return
            page += 1

    def verify_callback(self, body: bytes, headers: Mapping[str, str]) -> PlatformInvoice:
        given = next((v for k, v in headers.items() if k.lower() == "x-nuonuo-sign"), "")
        digest = hmac.new(self.settings.app_secret.get_secret_value().encode(), body, hashlib.sha1).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode().encode(), given.encode()):
            raise PermanentError("nuonuo callback: signature does not match", code="bad_callback_signature")
        try:
            content = orjson.loads(body)["content"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise PermanentError(
                "nuonuo callback: body is not {operater, content}", code="bad_callback"
            ) from exc
        return self._read(content)


@hookimpl
def hub_register_connector_types() -> list[type[Connector]]:
    return [NuonuoConnector]


@hookimpl
def hub_register_commands(cli: click.Group) -> None:
    register_commands(cli)
