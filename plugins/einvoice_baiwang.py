"""``einvoice.baiwang``: issue invoices through the Baiwang open platform (百望云), on the shared base.

Wire protocol (public Ruby SDK): ``POST {base}/router/rest?method&appKey&token&timestamp&format=json
&version=3.0&requestId&sign``; ``sign = upper(MD5(secret + sorted k+v pairs + body + secret))``,
timestamp in milliseconds; answers ``{"success": true, "response": ...}`` or ``{"success": false,
"errorResponse": {"code", "message", ...}}``. Our order number is Baiwang's ``serialNo``.
Everything else (idempotency, polling, documents, red letter, inventory) is the base's.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

import click
import orjson
from pydantic import SecretStr

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
    plain,
    register_commands,
)
from ._einvoice import parse_decimal as dec

_STATES = {"00": "issuing", "01": "issued", "02": "failed", "03": "void"}
_TYPES = {(True, True): "01", (True, False): "02", (False, True): "004", (False, False): "026"}


def sign(secret: str, params: Mapping[str, str], body: bytes) -> str:
    pairs = "".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "sign")
    return hashlib.md5(secret.encode() + pairs.encode() + body + secret.encode()).hexdigest().upper()


class BaiwangSettings(EInvoiceSettings):
    username: str = ""
    password: SecretStr = SecretStr("")
    router_path: str = "/router/rest"


class BaiwangConnector(EInvoiceConnector):
    type_name: ClassVar[str] = "einvoice.baiwang"
    Settings = BaiwangSettings
    platform: ClassVar[str] = "baiwang"
    order_no_max: ClassVar[int] = 32
    settings: BaiwangSettings

    def _post(self, method: str, params: dict[str, str], **kwargs: Any) -> dict[str, Any]:
        response = self._http("POST", self.settings.router_path, what=method, params=params, **kwargs)
        return self._json(response, method) | {"_text": response.text}

    def _fetch_token(self) -> tuple[str, float]:
        s = self.settings
        form = {
            "grant_type": "password",
            "client_id": self.app_key,
            "client_secret": s.app_secret.get_secret_value(),
        }
        form |= {"username": s.username, "password": s.password.get_secret_value()}
        params = {
            "method": "baiwang.oauth.token",
            "version": "3.0",
            "timestamp": str(int(self._now() * 1000)),
        }
        payload = self._post("baiwang.oauth.token", params, data=form)
        if not payload.get("success"):
            error = payload.get("errorResponse") or {}
            if str(error.get("code")) == "100009":  # the fetch cap
                raise TransientError(f"baiwang access token: {error.get('message')}", connector=self.name)
            raise self.refusal(
                "access token", str(error.get("code")), str(error.get("message")), payload["_text"]
            )
        return str(payload["response"]["access_token"]), float(payload["response"].get("expires_in", 86400))

    def _rpc(self, method: str, body: dict[str, Any], *, accept: frozenset[str] = frozenset()) -> Any:
        s = self.settings
        raw = orjson.dumps({"taxNo": s.user_tax} | body)
        token = self.access_token()
        params = {
            "method": method,
            "appKey": self.app_key,
            "token": token,
            "timestamp": str(int(self._now() * 1000)),
            "format": "json",
            "version": "3.0",
            "requestId": uuid.uuid4().hex,
        }
        params["sign"] = sign(s.app_secret.get_secret_value(), params, raw)
        payload = self._post(method, params, content=raw, headers={"Content-Type": "application/json"})
        if payload.get("success"):
            return payload.get("response")
        error = payload.get("errorResponse") or {}
        code = str(error.get("code", ""))
        if code == "100004":
            self._drop_token(token)
            raise _Resend("token")
        if code == "100003":
            raise _Resend("clock")
        raise self.refusal(method, code, str(error.get("message", "")), payload["_text"])

    def _submit(self, order_no: str, invoice: Invoice) -> None:
        seller, buyer = invoice.seller, invoice.buyer
        rows = []
        for n, line in enumerate(invoice.lines, 1):
            tax = self.line_tax(line.amount, line.tax_rate, line.tax_amount)
            rows.append(
                {
                    "goodsLineNo": n,
                    "goodsName": line.name,
                    "goodsCode": line.tax_code or "",
                    "goodsSpecification": line.spec or "",
                    "goodsUnit": line.unit or "",
                    "goodsQuantity": plain(line.quantity),
                    "goodsPrice": plain(line.unit_price),
                    "goodsTotalPrice": money(line.amount),
                    "goodsTaxRate": plain(line.tax_rate) or "0",
                    "goodsTotalTax": money(tax),
                    "priceTaxMark": "0",
                }
            )
        data = {
            "serialNo": order_no,
            "invoiceTypeCode": _TYPES[(self.settings.digital, self.special(invoice))],
            "invoiceType": "0",
            "sellerName": seller.name,
            "sellerAddress": seller.address or "",
            "sellerPhone": seller.phone or "",
            "sellerBankName": seller.bank_name or "",
            "sellerBankNumber": seller.bank_account or "",
            "buyerName": buyer.name,
            "buyerTaxNo": buyer.tax_id or "",
            "buyerAddress": buyer.address or "",
            "buyerPhone": buyer.phone or "",
            "buyerBankName": buyer.bank_name or "",
            "buyerBankNumber": buyer.bank_account or "",
            "drawer": self.settings.drawer,
            "remarks": str(invoice.extra.get("remark") or ""),
            "callbackUrl": self.settings.callback_url or "",
            "invoiceDetailsList": rows,
        }
        self._call("baiwang.output.invoice.issue", {"data": data})

    def _submit_red(self, order_no: str, blue_number: str, form: RedForm, invoice: Invoice | None) -> None:
        data = {"serialNo": order_no, "invoiceType": "1", "originalInvoiceNo": blue_number}
        data |= {"redInfoNo": form.form_no, "callbackUrl": self.settings.callback_url or ""}
        self._call("baiwang.output.invoice.issue", {"data": data})

    def _query(self, *, order_no: str | None = None, serial: str | None = None) -> PlatformInvoice | None:
        key = {"invoiceId": serial} if serial else {"serialNo": order_no}
        rows = self._call("baiwang.output.invoice.query", key)["list"]
        return self._read(rows[0]) if rows else None

    def _read(self, row: dict[str, Any]) -> PlatformInvoice:
        status, type_code = str(row.get("invoiceStatus")), str(row.get("invoiceTypeCode"))
        digital = type_code in {"01", "02"}
        number = row.get("einvoiceNo") if digital else row.get("invoiceNo")
        issued = row.get("invoiceDate")
        return PlatformInvoice(
            order_no=str(row.get("serialNo", "")),
            serial=str(row.get("invoiceId", "")),
            state=_STATES.get(status, "issuing"),  # type: ignore[arg-type]
            status_code=str(row.get("errorCode") or status),
            message=str(row.get("statusMessage") or ""),
            number=str(number) if number else None,
            code=row.get("invoiceCode") or None,
            issued_at=datetime.strptime(issued, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
            if issued
            else None,
            urls={k: str(row[f"{k}Url"]) for k in ("ofd", "xml", "pdf") if row.get(f"{k}Url")},
            net=dec(row.get("invoiceTotalPrice")),
            tax=dec(row.get("invoiceTotalTax")),
            gross=dec(row.get("invoiceTotalPriceTax")),
            seller_tax=row.get("sellerTaxNo") or None,
            buyer_tax=row.get("buyerTaxNo") or None,
            digital=digital,
            special=type_code in {"01", "004"},
            red=str(row.get("invoiceType")) == "1",
            blue_number=row.get("originalInvoiceNo") or None,
            raw=row,
        )

    def _apply_red_form(self, blue_number: str, reason: str) -> RedForm:
        forms = self._call("baiwang.output.redinfo.query", {"originalInvoiceNo": blue_number}) or []
        live = [f for f in forms if str(f.get("redInfoStatus")) in {"01", "02", "03", "04"}]
        row = live[0] if live else None
        if row is None:
            body = {"originalInvoiceNo": blue_number, "redReason": reason}
            row = self._call("baiwang.output.redinfo.add", body)
        status, net, tax = (
            str(row["redInfoStatus"]),
            dec(row.get("redTotalPrice")),
            dec(row.get("redTotalTax")),
        )
        return RedForm(str(row["redInfoId"]), str(row["redInfoNo"]), status, blue_number, net, tax)

    def _void(self, serial: str, number: str, code: str | None) -> None:
        self._call(
            "baiwang.output.invoice.cancel", {"invoiceId": serial, "invoiceNo": number, "invoiceCode": code}
        )

    def _list(self, start: datetime, end: datetime) -> Iterator[PlatformInvoice]:
        page, size, fmt = 1, self.settings.inventory_page_size, "%Y-%m-%d %H:%M:%S"
        while True:
            body = {
                "startDate": start.strftime(fmt),
                "endDate": end.strftime(fmt),
                "pageNo": page,
                "pageSize": size,
            }
            result = self._call("baiwang.output.invoice.query", body)
            yield from (self._read(row) for row in result["list"])
            if not result["list"] or page * size >= int(result["total"]):
                return
            page += 1

    def verify_callback(self, body: bytes, headers: Mapping[str, str]) -> PlatformInvoice:
        secret = self.settings.app_secret.get_secret_value().encode()
        expected = hashlib.md5(secret + body + secret).hexdigest().upper()
        given = next((v for k, v in headers.items() if k.lower() == "x-bw-sign"), "")
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise PermanentError("baiwang callback: signature does not match", code="bad_callback_signature")
        try:
            return self._read(orjson.loads(body))
        except (orjson.JSONDecodeError, AttributeError, ValueError) as exc:
            raise PermanentError(
                "baiwang callback: body is not an invoice record", code="bad_callback"
            ) from exc


@hookimpl
def hub_register_connector_types() -> list[type[Connector]]:
    return [BaiwangConnector]


@hookimpl
def hub_register_commands(cli: click.Group) -> None:
    register_commands(cli)
