"""What every e-invoice platform sandbox shares: the issuing ledger, fault injection, callbacks,
20-digit invoice numbers and the issued files (数电 XML, an OFD zip with the XML as its attachment, a PDF).

A platform module (``nuonuo``, ``baiwang``) speaks its platform's protocol (paths, signatures, field
names, codes) and maps it onto a ``Platform``. The ``Platform`` is the part that must never issue twice:
an order number that exists answers with the order that exists, and ``stats()`` counts real issues per
order number, so a test (or an integrator) can prove there was no double issue.

Everything is in memory and runs on one event loop; restart the sandbox to start from nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import secrets
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email.utils import formatdate
from typing import Any, Literal
from xml.sax.saxutils import escape

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
CENT = Decimal("0.01")
#: VAT rates a 数电 invoice may carry (13/9/6/5/3/1/0 %).
ALLOWED_RATES = {Decimal(x) for x in ("0.13", "0.09", "0.06", "0.05", "0.03", "0.01", "0")}


class SandboxRefusal(Exception):
    """A business refusal: the platform answers with its own ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------
class Faults(BaseModel):
    """What the sandbox is told to get wrong. Rates are fractions of API calls (0..1); ``force_*``
    counters hit the next N calls, for deterministic tests. ``POST /_sandbox/faults`` sets any subset."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency: float = Field(0.0, ge=0, description="seconds added to every API call")
    latency_jitter: float = Field(0.0, ge=0, description="extra random seconds, uniform 0..jitter")
    error_rate: float = Field(0.0, ge=0, le=1, description="503 before processing")
    rate_429: float = Field(0.0, ge=0, le=1, description="chance that a call starts a 429 burst")
    burst_length: int = Field(3, ge=1, description="calls answered 429 in one burst")
    retry_after: float = Field(1.0, ge=0, description="Retry-After seconds on a 429")
    timeout_after_issue_rate: float = Field(
        0.0, ge=0, le=1, description="an issuing call is processed, then the answer never comes in time"
    )
    timeout_mode: Literal["hang", "drop"] = "hang"
    hang_seconds: float = Field(30.0, ge=0, description="how long a 'hang' holds the answer back")
    duplicate_callbacks: bool = False
    out_of_order_callbacks: bool = False
    clock_offset: float = Field(0.0, description="seconds the platform's clock is ahead of the real one")
    force_5xx: int = Field(0, ge=0)
    force_429: int = Field(0, ge=0)
    force_timeout_after_issue: int = Field(0, ge=0)
    force_refusal: int = Field(0, ge=0, description="the next N issuing calls fail at the tax bureau (22)")
    force_sign_failure: int = Field(0, ge=0, description="the next N issuing calls fail at signing (24)")
    seed: int | None = None


class ConnectionDropped(Exception):
    """Raised after the response started, so the server closes the connection mid-answer."""


class DroppedResponse(Response):
    """Starts an answer and drops the connection: the client cannot know what happened."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"code":', "more_body": True})
        raise ConnectionDropped("sandbox dropped the connection after issuing (fault injection)")


# ---------------------------------------------------------------------------------------------------
# Issued data
# ---------------------------------------------------------------------------------------------------
@dataclass
class Item:
    name: str
    amount: Decimal
    rate: Decimal
    tax: Decimal
    quantity: Decimal | None = None
    price: Decimal | None = None
    spec: str | None = None
    unit: str | None = None
    code: str | None = None


@dataclass
class IssueData:
    """The platform-neutral content of an issuing request."""

    seller_tax: str
    seller_name: str
    buyer_name: str
    items: list[Item]
    buyer_tax: str | None = None
    buyer_addr: str | None = None
    buyer_tel: str | None = None
    buyer_bank: str | None = None
    buyer_account: str | None = None
    seller_addr: str | None = None
    seller_tel: str | None = None
    seller_bank: str | None = None
    seller_account: str | None = None
    remark: str | None = None
    drawer: str = "开票员"
    special: bool = False  # 专票 (LabelCode 01) or 普票 (02)
    digital: bool = True  # 数电 (20-digit number) or legacy (code + 8 digits)
    red: bool = False
    blue_number: str | None = None
    red_form_no: str | None = None

    @property
    def net(self) -> Decimal:
        return sum((i.amount for i in self.items), Decimal(0))

    @property
    def tax(self) -> Decimal:
        return sum((i.tax for i in self.items), Decimal(0))

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax


@dataclass
class Order:
    order_no: str
    serial: str
    data: IssueData
    created_at: datetime
    ready_at: float  # loop time when issuing finishes
    callback_url: str | None = None
    status: Literal["issuing", "issued", "failed", "void"] = "issuing"
    number: str | None = None
    code: str | None = None  # legacy invoice code
    issued_at: datetime | None = None
    fail_code: str | None = None
    fail_message: str | None = None
    will_fail: bool = False
    will_fail_signing: bool = False
    red_lettered: bool = False
    file_key: str = field(default_factory=lambda: secrets.token_urlsafe(12))


@dataclass
class RedForm:
    """红字信息确认单."""

    form_id: str
    form_no: str
    blue_number: str
    reason: str
    status: str  # 01 no confirmation needed, 02/03 waiting, 04 confirmed, ...
    created_at: datetime
    amount: Decimal
    tax: Decimal


def decimal_field(value: Any, where: str) -> Decimal:
    """Read a money/quantity field sent as string or number; refuse floats-in-disguise nothing else."""
    if value is None or value == "":
        raise SandboxRefusal("E9500", f"{where} is required")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise SandboxRefusal("E9500", f"{where} is not a number: {value!r}") from None


def split_bank(value: Any) -> tuple[str | None, str | None]:
    """``"招商银行上海分行 121909876510201"`` (开户行及账号 in one field) → (bank name, account number)."""
    text = str(value or "").strip()
    if not text:
        return None, None
    name, _, account = text.rpartition(" ")
    return (name.strip() or None), account


_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_valid(code: str) -> bool:
    """GB 32100-2015 check character (letters allowed in the first positions)."""
    if len(code) != 18 or any(c not in _USCC_ALPHABET for c in code):
        return False
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(code[:17], _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total % 31) % 31] == code[17]


# ---------------------------------------------------------------------------------------------------
# The platform
# ---------------------------------------------------------------------------------------------------
CallbackBuilder = Callable[["Order", str], tuple[bytes, dict[str, str]]]


class Platform:
    """The issuing ledger of one sandbox platform (one event loop, no locks needed)."""

    def __init__(
        self,
        *,
        name: str,
        app_key: str,
        app_secret: str,
        base_url: str | None = None,
        issue_delay: float = 0.2,
        province: str = "32",
        channel: str = "1",
        skew: float = 600.0,
        token_ttl: float = 86400.0,
        token_cap: int = 50,
        seller_name: str = "沙箱测试销售方有限公司",
        callback_url: str | None = None,
        red_confirm_status: str = "04",
        faults: Faults | None = None,
    ) -> None:
        if len(province) != 2 or not province.isdigit():
            raise ValueError(f"province must be two digits (GB/T 2260), got {province!r}")
        if len(channel) != 1 or not channel.isdigit():
            raise ValueError(f"channel must be one digit, got {channel!r}")
        self.name = name
        self.app_key = app_key
        self.app_secret = app_secret
        self.base_url = base_url
        self.issue_delay = issue_delay
        self.province = province
        self.channel = channel
        self.skew = skew
        self.token_ttl = token_ttl
        self.token_cap = token_cap
        self.seller_name = seller_name
        self.callback_url = callback_url
        self.red_confirm_status = red_confirm_status
        self.faults = faults or Faults()
        self.callback_builder: CallbackBuilder | None = None
        self.reset()

    def reset(self) -> None:
        self.orders: dict[str, Order] = {}
        self.by_serial: dict[str, Order] = {}
        self.by_number: dict[str, Order] = {}
        self.issues: Counter[str] = Counter()
        self.red_forms: dict[str, RedForm] = {}
        self.tokens: dict[str, float] = {}
        self.token_fetches = 0
        self.seen_nonces: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.callbacks: list[dict[str, Any]] = []
        self._burst_left = 0
        self._rng = random.Random(self.faults.seed)
        # A sequence base that differs per start, so restarting the sandbox does not reuse numbers.
        self._sequence = (time.time_ns() // 1_000_000) % 10**11 * 1000
        self._legacy_sequence = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def set_faults(self, changes: dict[str, Any]) -> Faults:
        merged = self.faults.model_dump() | changes
        self.faults = Faults.model_validate(merged)
        if "seed" in changes:
            self._rng = random.Random(self.faults.seed)
        if not self.faults.rate_429 and not self.faults.force_429:
            self._burst_left = 0
        return self.faults

    # -- clock, tokens, nonces ----------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.faults.clock_offset

    def check_timestamp(self, seconds: float) -> bool:
        return abs(self.now() - seconds) <= self.skew

    def remember_nonce(self, nonce: str) -> bool:
        """False when ``nonce`` was already used inside the skew window (a replayed request)."""
        now = time.monotonic()
        if len(self.seen_nonces) > 10000:
            self.seen_nonces = {n: t for n, t in self.seen_nonces.items() if now - t < self.skew}
        if nonce in self.seen_nonces and now - self.seen_nonces[nonce] < self.skew:
            return False
        self.seen_nonces[nonce] = now
        return True

    def fetch_token(self) -> tuple[str, float] | None:
        """A new access token, or None when the fetch cap is used up."""
        if self.token_fetches >= self.token_cap:
            self.counters["token_refused_cap"] += 1
            return None
        self.token_fetches += 1
        token = secrets.token_hex(16)
        self.tokens[token] = time.monotonic() + self.token_ttl
        return token, self.token_ttl

    def token_valid(self, token: str | None) -> bool:
        return token is not None and self.tokens.get(token, 0) > time.monotonic()

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # -- faults around one API call ---------------------------------------------------------------------
    async def before_call(self) -> Response | None:
        """Latency, 503s and 429 bursts, applied before the call is processed (nothing happened)."""
        f = self.faults
        self.counters["api_calls"] += 1
        delay = f.latency + (self._rng.uniform(0, f.latency_jitter) if f.latency_jitter else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if f.force_429 or self._burst_left or (f.rate_429 and self._rng.random() < f.rate_429):
            if f.force_429:
                self.faults.force_429 -= 1
            elif self._burst_left:
                self._burst_left -= 1
            else:
                self._burst_left = f.burst_length - 1
            self.counters["fault_429"] += 1
            return JSONResponse(
                {"code": "429", "describe": "too many requests"},
                status_code=429,
                headers={"Retry-After": _retry_after(f.retry_after)},
            )
        if f.force_5xx or (f.error_rate and self._rng.random() < f.error_rate):
            if f.force_5xx:
                self.faults.force_5xx -= 1
            self.counters["fault_5xx"] += 1
            return JSONResponse({"code": "503", "describe": "service unavailable"}, status_code=503)
        return None

    async def after_issue(self, response: Response) -> Response:
        """The call was processed (an invoice may be issuing); maybe the answer never arrives."""
        f = self.faults
        if not (
            f.force_timeout_after_issue
            or (f.timeout_after_issue_rate and self._rng.random() < f.timeout_after_issue_rate)
        ):
            return response
        if f.force_timeout_after_issue:
            self.faults.force_timeout_after_issue -= 1
        self.counters["fault_timeout_after_issue"] += 1
        if f.timeout_mode == "drop":
            return DroppedResponse()
        await asyncio.sleep(f.hang_seconds)
        return response

    # -- issuing -----------------------------------------------------------------------------------------
    def submit(self, order_no: str, data: IssueData, callback_url: str | None) -> tuple[Order, bool]:
        """Record an issuing request. An existing order number returns the existing order (created=False)."""
        existing = self.orders.get(order_no)
        if existing is not None:
            self.counters["duplicate_submissions"] += 1
            return existing, False
        self.validate(data)
        serial = datetime.now(SHANGHAI).strftime("%y%m%d%H%M%S") + f"{len(self.orders) + 1:08d}"
        loop = asyncio.get_running_loop()
        order = Order(
            order_no=order_no,
            serial=serial,
            data=data,
            created_at=datetime.fromtimestamp(self.now(), SHANGHAI),
            ready_at=loop.time() + self.issue_delay,
            callback_url=callback_url or self.callback_url,
        )
        if self.faults.force_refusal:
            self.faults.force_refusal -= 1
            order.will_fail = True
        elif self.faults.force_sign_failure:
            self.faults.force_sign_failure -= 1
            order.will_fail_signing = True
        self.orders[order_no] = order
        self.by_serial[serial] = order
        self.counters["submissions"] += 1
        loop.call_later(self.issue_delay, self.finish, order)
        self._notify(order, "issuing")
        return order, True

    def validate(self, data: IssueData) -> None:
        if not data.items:
            raise SandboxRefusal("E9500", "invoice has no lines (invoiceDetail is empty)")
        if not data.buyer_name.strip():
            raise SandboxRefusal("E9500", "buyer name is required")
        for n, item in enumerate(data.items, 1):
            if item.rate not in ALLOWED_RATES:
                raise SandboxRefusal("E9521", f"line {n}: tax rate {item.rate} is not allowed")
            expected = (item.amount * item.rate).quantize(CENT, ROUND_HALF_UP)
            if abs(expected - item.tax) > CENT:
                raise SandboxRefusal(
                    "E9522", f"line {n}: tax {item.tax} does not match {item.amount} × {item.rate}"
                )
        if data.red:
            blue = self.by_number.get(data.blue_number or "")
            if blue is None:
                raise SandboxRefusal("E9601", f"blue invoice {data.blue_number} not found")
            if blue.red_lettered:
                raise SandboxRefusal("E9603", f"blue invoice {data.blue_number} is already red-lettered")
            if data.digital and not any(
                f.blue_number == blue.number and f.status in {"01", "04"} for f in self.red_forms.values()
            ):
                raise SandboxRefusal("E9604", f"no confirmed red-letter form for {data.blue_number}")

    def refresh(self, order: Order) -> Order:
        """Issuing finishes on the loop's timer; a query that comes first finishes it on the spot."""
        if order.status == "issuing" and asyncio.get_running_loop().time() >= order.ready_at:
            self.finish(order)
        return order

    def finish(self, order: Order) -> None:
        if order.status != "issuing":
            return
        data = order.data
        if order.will_fail_signing:
            order.status = "failed"
            order.fail_code, order.fail_message = "E9803", "开票成功但签章失败"
        elif order.will_fail:
            order.status = "failed"
            order.fail_code, order.fail_message = "E9801", "税局开票失败：购方信息与税局登记不一致"
        elif data.buyer_tax and len(data.buyer_tax) == 18 and not uscc_valid(data.buyer_tax):
            order.status = "failed"
            order.fail_code, order.fail_message = "E9802", f"购方税号 {data.buyer_tax} 校验不通过"
        else:
            order.status = "issued"
            order.issued_at = datetime.fromtimestamp(self.now(), SHANGHAI)
            if data.digital:
                self._sequence += 1
                order.number = (
                    f"{order.issued_at:%y}{self.province}{self.channel}{self._sequence % 10**15:015d}"
                )
            else:
                self._legacy_sequence += 1
                order.code = f"0{self.province}00{order.issued_at:%y}1100"[:12].ljust(12, "0")
                order.number = f"{self._legacy_sequence:08d}"
            self.by_number[order.number] = order
            self.issues[order.order_no] += 1
            self.counters["issued"] += 1
            if data.red:
                self.by_number[data.blue_number or ""].red_lettered = True
        self._notify(order, "final")

    # -- red letter and void ---------------------------------------------------------------------------
    def red_form(self, blue_number: str, reason: str) -> tuple[RedForm, bool]:
        """Apply for a red-letter confirmation form; one active form per blue invoice."""
        blue = self.by_number.get(blue_number)
        if blue is None or blue.status != "issued":
            raise SandboxRefusal("E9601", f"blue invoice {blue_number} not found")
        if reason not in {"01", "02", "03", "04"}:
            raise SandboxRefusal("E9500", f"red-letter reason must be 01-04, got {reason!r}")
        for form in self.red_forms.values():
            if form.blue_number == blue_number and form.status in {"01", "02", "03", "04"}:
                return form, False
        if blue.red_lettered:
            raise SandboxRefusal("E9603", f"blue invoice {blue_number} is already red-lettered")
        self._sequence += 1
        now = datetime.fromtimestamp(self.now(), SHANGHAI)
        form = RedForm(
            form_id=uuid.uuid4().hex,
            form_no=f"{now:%y}{self.province}{self.channel}{self._sequence % 10**15:015d}",
            blue_number=blue_number,
            reason=reason,
            status=self.red_confirm_status,
            created_at=now,
            amount=-blue.data.net,
            tax=-blue.data.tax,
        )
        self.red_forms[form.form_id] = form
        return form, True

    def void(self, number: str) -> Order:
        order = self.by_number.get(number)
        if order is None:
            raise SandboxRefusal("E9601", f"invoice {number} not found")
        if order.data.digital:
            raise SandboxRefusal("E9605", "数电发票不能作废，请开具红字发票")
        if order.status == "void":
            return order
        order.status = "void"
        return order

    # -- lookups ----------------------------------------------------------------------------------------
    def issued_between(self, start: datetime, end: datetime) -> list[Order]:
        out = [o for o in self.by_number.values() if o.issued_at is not None and start <= o.issued_at <= end]
        return sorted(out, key=lambda o: (o.issued_at, o.number))  # type: ignore[arg-type,return-value]

    def stats(self) -> dict[str, Any]:
        issues = dict(self.issues)
        return {
            "platform": self.name,
            "orders": len(self.orders),
            "issued": sum(issues.values()),
            "issues_per_order": issues,
            "double_issued": sorted(k for k, v in issues.items() if v > 1),
            "token_fetches": self.token_fetches,
            "callbacks_sent": len(self.callbacks),
            "counters": dict(self.counters),
            "faults": self.faults.model_dump(),
        }

    # -- callbacks --------------------------------------------------------------------------------------
    def _notify(self, order: Order, stage: str) -> None:
        if not order.callback_url or self.callback_builder is None:
            return
        f = self.faults
        if stage == "issuing" and f.out_of_order_callbacks:
            return  # held back: sent after the final one
        stages = ["final", "issuing"] if stage == "final" and f.out_of_order_callbacks else [stage]
        payloads = [self.callback_builder(order, s) for s in stages]
        if f.duplicate_callbacks:
            payloads = [p for p in payloads for _ in range(2)]
        task = asyncio.get_running_loop().create_task(self._post(order.callback_url, payloads))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, payloads: list[tuple[bytes, dict[str, str]]]) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            for body, headers in payloads:
                entry: dict[str, Any] = {"url": url, "at": time.time()}
                try:
                    response = await client.post(url, content=body, headers=headers)
                    entry["status"] = response.status_code
                except httpx.HTTPError as exc:
                    entry["error"] = type(exc).__name__
                self.callbacks.append(entry)

    # -- files ------------------------------------------------------------------------------------------
    def file_url(self, order: Order, kind: str, base: str) -> str:
        return f"{base.rstrip('/')}/_files/{order.serial}/{order.file_key}.{kind}"

    def files_route(self) -> Route:
        async def serve(request: Request) -> Response:
            # The file server fails like the API does (latency, 503s, 429 bursts): the invoice is issued
            # by then, so a client must fetch again without issuing again.
            early = await self.before_call()
            if early is not None:
                return early
            order = self.by_serial.get(request.path_params["serial"])
            key, _, kind = request.path_params["name"].partition(".")
            if order is None or order.status not in {"issued", "void"} or key != order.file_key:
                return JSONResponse({"error": "not found"}, status_code=404)
            if kind == "xml":
                return Response(render_xml(order), media_type="application/xml")
            if kind == "ofd":
                return Response(render_ofd(order), media_type="application/ofd")
            if kind == "pdf":
                return Response(render_pdf(order), media_type="application/pdf")
            return JSONResponse({"error": "not found"}, status_code=404)

        return Route("/_files/{serial}/{name}", serve, methods=["GET"])

    def admin_routes(self) -> list[Route]:
        async def stats(request: Request) -> Response:
            return JSONResponse(self.stats())

        async def faults(request: Request) -> Response:
            if request.method == "POST":
                try:
                    changes = json.loads(await request.body() or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("body must be a JSON object")
                    self.set_faults(changes)
                except ValueError as exc:
                    return JSONResponse({"error": str(exc)}, status_code=422)
            return JSONResponse(self.faults.model_dump())

        async def reset(request: Request) -> Response:
            self.faults = Faults()
            self.reset()
            return JSONResponse({"ok": True})

        async def expire(request: Request) -> Response:
            self.expire_tokens()
            return JSONResponse({"ok": True})

        async def order(request: Request) -> Response:
            o = self.orders.get(request.path_params["order_no"])
            if o is None:
                return JSONResponse({"error": "not found"}, status_code=404)
            return JSONResponse(
                {
                    "order_no": o.order_no,
                    "serial": o.serial,
                    "status": o.status,
                    "number": o.number,
                    "issues": self.issues[o.order_no],
                }
            )

        async def callbacks(request: Request) -> Response:
            return JSONResponse(self.callbacks)

        return [
            Route("/_sandbox/stats", stats, methods=["GET"]),
            Route("/_sandbox/faults", faults, methods=["GET", "POST"]),
            Route("/_sandbox/reset", reset, methods=["POST"]),
            Route("/_sandbox/expire-tokens", expire, methods=["POST"]),
            Route("/_sandbox/orders/{order_no}", order, methods=["GET"]),
            Route("/_sandbox/callbacks", callbacks, methods=["GET"]),
        ]


class PlatformClock:
    """ASGI middleware: every answer carries ``Date`` from the platform's clock (which a fault can set
    ahead or behind), as a real platform's does; clients learn the skew from it. Serve the app with the
    server's own Date header off (``app.state.sends_date_header`` says so)."""

    def __init__(self, app: Any, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: Any) -> None:
            if message["type"] == "http.response.start":
                stamp = formatdate(self.platform.now(), usegmt=True).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                message = {**message, "headers": [*headers, (b"date", stamp)]}
            await send(message)

        await self.app(scope, receive, send_with_date)


def _retry_after(seconds: float) -> str:
    # Retry-After is whole seconds in HTTP; keep fractions for fast tests (clients parse floats).
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


async def guarded(platform: Platform, handler: Callable[[], Awaitable[Response]]) -> Response:
    """Run one API call with the platform's faults around it."""
    early = await platform.before_call()
    if early is not None:
        return early
    return await handler()


# ---------------------------------------------------------------------------------------------------
# Files: 数电 XML, OFD, PDF
# ---------------------------------------------------------------------------------------------------
_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_UNITS = ("", "拾", "佰", "仟")
_GROUPS = ("", "万", "亿", "万亿")


def _four(group: int) -> str:
    out, zero = "", False
    for pos in (3, 2, 1, 0):
        digit = group // 10**pos % 10
        if digit == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += _DIGITS[digit] + _UNITS[pos]
    return out


def amount_in_chinese(value: Decimal) -> str:
    """Money in capital Chinese numerals (价税合计大写): 1130.50 → 壹仟壹佰叁拾圆伍角整."""
    negative = value < 0
    value = abs(value).quantize(CENT, ROUND_HALF_UP)
    integer = int(value)
    cents = int((value - integer) * 100)
    jiao, fen = divmod(cents, 10)
    text = ""
    if integer:
        groups = []
        while integer:
            integer, g = divmod(integer, 10000)
            groups.append(g)
        pending_zero = False
        for index in range(len(groups) - 1, -1, -1):
            g = groups[index]
            if g == 0:
                pending_zero = bool(text)
                continue
            if text and (g < 1000 or pending_zero):
                text += "零"
            text += _four(g) + _GROUPS[index]
            pending_zero = False
        text += "圆"
    if jiao:
        text += _DIGITS[jiao] + "角"
    elif fen and text:
        text += "零"
    if fen:
        text += _DIGITS[fen] + "分"
    else:
        text += "整"
    if text == "整":
        text = "零圆整"
    return ("负" if negative else "") + text


def _money(value: Decimal) -> str:
    return format(value.quantize(CENT, ROUND_HALF_UP), "f")


def _rate(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _el(name: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    return f"<{name}>{escape(str(value))}</{name}>"


def render_xml(order: Order) -> bytes:
    """The issued invoice as 数电 XML (EInvoice layout, see DOMAIN.md)."""
    d = order.data
    issued = order.issued_at or order.created_at
    items = "".join(
        "<IssuItemInformation>"
        + _el("ItemName", item.name)
        + _el("SpecMod", item.spec)
        + _el("MeaUnits", item.unit)
        + _el("Quantity", None if item.quantity is None else format(item.quantity, "f"))
        + _el("UnPrice", None if item.price is None else format(item.price, "f"))
        + _el("Amount", _money(item.amount))
        + _el("TaxRate", _rate(item.rate))
        + _el("ComTaxAm", _money(item.tax))
        + _el("TaxClassificationCode", item.code)
        + "</IssuItemInformation>"
        for item in d.items
    )
    red = ""
    if d.red:
        red = (
            "<SpecificInformation><RedEInvoice>"
            + _el("OriginalInvoiceNumber", d.blue_number)
            + _el("RedInvoiceConfirmationNumber", d.red_form_no)
            + "</RedEInvoice></SpecificInformation>"
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<EInvoice>"
        "<Header>"
        + _el("EIid", order.number)
        + _el("EInvoiceTag", f"SWEI{(order.number or '0000')[2:4]}00")
        + "<Version>0.1</Version>"
        "<InherentLabel><GeneralOrSpecialVAT>"
        + _el("LabelCode", "01" if d.special else "02")
        + _el("LabelName", "增值税专用发票" if d.special else "普通发票")
        + "</GeneralOrSpecialVAT></InherentLabel>"
        "</Header>"
        "<EInvoiceData>"
        "<SellerInformation>"
        + _el("SellerIdNum", d.seller_tax)
        + _el("SellerName", d.seller_name)
        + _el("SellerAddr", d.seller_addr)
        + _el("SellerTelNum", d.seller_tel)
        + _el("SellerBankName", d.seller_bank)
        + _el("SellerBankAccNum", d.seller_account)
        + "</SellerInformation>"
        "<BuyerInformation>"
        + _el("BuyerIdNum", d.buyer_tax)
        + _el("BuyerName", d.buyer_name)
        + _el("BuyerAddr", d.buyer_addr)
        + _el("BuyerTelNum", d.buyer_tel)
        + _el("BuyerBankName", d.buyer_bank)
        + _el("BuyerBankAccNum", d.buyer_account)
        + "</BuyerInformation>"
        "<BasicInformation>"
        + _el("TotalAmWithoutTax", _money(d.net))
        + _el("TotalTaxAm", _money(d.tax))
        + _el("TotalTax-includedAmount", _money(d.gross))
        + _el("TotalTax-includedAmountInChinese", amount_in_chinese(d.gross))
        + _el("Drawer", d.drawer)
        + _el("RequestTime", f"{order.created_at:%Y-%m-%d %H:%M:%S}")
        + _el("Remark", d.remark)
        + "</BasicInformation>"
        + items
        + red
        + "</EInvoiceData>"
        "<TaxSupervisionInfo>"
        + _el("InvoiceNumber", order.number)
        + _el("IssueTime", f"{issued:%Y-%m-%d %H:%M:%S}")
        + _el("TaxBureauCode", f"1{(order.number or '0000')[2:4]}00000000")
        + "</TaxSupervisionInfo>"
        "</EInvoice>"
    )
    return xml.encode("utf-8")


_OFD_NS = "http://www.ofdspec.org/2016"


def render_ofd(order: Order) -> bytes:
    """An OFD container (GB/T 33190) with the 数电 XML at ``Doc_0/Attachs/original_invoice.xml``."""
    d = order.data
    issued = order.issued_at or order.created_at
    texts = [
        ("电子发票（增值税专用发票）" if d.special else "电子发票（普通发票）", 70, 8),
        (f"发票号码：{order.number}", 140, 16),
        (f"开票日期：{issued:%Y年%m月%d日}", 140, 22),
        (f"购买方：{d.buyer_name} {d.buyer_tax or ''}", 10, 35),
        (f"销售方：{d.seller_name} {d.seller_tax}", 110, 35),
        (f"合计：¥{_money(d.net)}  税额：¥{_money(d.tax)}", 10, 100),
        (f"价税合计（大写）：{amount_in_chinese(d.gross)}  （小写）¥{_money(d.gross)}", 10, 110),
        (f"开票人：{d.drawer}", 10, 130),
    ]
    objects = "".join(
        f'<ofd:TextObject ID="{i + 10}" Boundary="{x} {y} 120 6" Font="3" Size="3.5">'
        f'<ofd:TextCode X="0" Y="4">{escape(t)}</ofd:TextCode></ofd:TextObject>'
        for i, (t, x, y) in enumerate(texts)
    )
    files = {
        "OFD.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<ofd:OFD xmlns:ofd="{_OFD_NS}" Version="1.1" DocType="OFD">'
            f"<ofd:DocBody><ofd:DocInfo><ofd:DocID>{uuid.uuid4().hex}</ofd:DocID>"
            "<ofd:Creator>invoice-hub sandbox</ofd:Creator>"
            f"<ofd:CreationDate>{issued:%Y-%m-%d}</ofd:CreationDate>"
            f'<ofd:CustomDatas><ofd:CustomData Name="发票号码">{order.number}</ofd:CustomData>'
            f'<ofd:CustomData Name="开票日期">{issued:%Y年%m月%d日}</ofd:CustomData>'
            f'<ofd:CustomData Name="合计金额">{_money(d.net)}</ofd:CustomData>'
            f'<ofd:CustomData Name="合计税额">{_money(d.tax)}</ofd:CustomData>'
            f'<ofd:CustomData Name="购买方纳税人识别号">{escape(d.buyer_tax or "")}</ofd:CustomData>'
            f'<ofd:CustomData Name="销售方纳税人识别号">{escape(d.seller_tax)}</ofd:CustomData>'
            "</ofd:CustomDatas></ofd:DocInfo>"
            "<ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>"
        ),
        "Doc_0/Document.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><ofd:Document xmlns:ofd="{_OFD_NS}">'
            "<ofd:CommonData><ofd:MaxUnitID>100</ofd:MaxUnitID>"
            "<ofd:PageArea><ofd:PhysicalBox>0 0 210 140</ofd:PhysicalBox></ofd:PageArea>"
            "<ofd:PublicRes>PublicRes.xml</ofd:PublicRes></ofd:CommonData>"
            '<ofd:Pages><ofd:Page ID="1" BaseLoc="Pages/Page_0/Content.xml"/></ofd:Pages>'
            "<ofd:Attachments>Attachs/Attachments.xml</ofd:Attachments></ofd:Document>"
        ),
        "Doc_0/PublicRes.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><ofd:Res xmlns:ofd="{_OFD_NS}" BaseLoc="Res">'
            '<ofd:Fonts><ofd:Font ID="3" FontName="SimSun" FamilyName="SimSun"/></ofd:Fonts></ofd:Res>'
        ),
        "Doc_0/Pages/Page_0/Content.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><ofd:Page xmlns:ofd="{_OFD_NS}">'
            '<ofd:Content><ofd:Layer ID="2">' + objects + "</ofd:Layer></ofd:Content></ofd:Page>"
        ),
        "Doc_0/Attachs/Attachments.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><ofd:Attachments xmlns:ofd="{_OFD_NS}">'
            '<ofd:Attachment ID="90" Name="original_invoice" Format="xml" Visible="false">'
            "<ofd:FileLoc>original_invoice.xml</ofd:FileLoc></ofd:Attachment></ofd:Attachments>"
        ),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text.encode("utf-8"))
        archive.writestr("Doc_0/Attachs/original_invoice.xml", render_xml(order))
    return buffer.getvalue()


def _pdf_text(text: str) -> str:
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def render_pdf(order: Order) -> bytes:
    """A one-page PDF view of the invoice (Latin text only; the OFD is the legal original)."""
    d = order.data
    issued = order.issued_at or order.created_at
    lines = [
        f"E-Invoice ({'special VAT' if d.special else 'ordinary'}){' RED-LETTER' if d.red else ''}",
        f"Invoice number: {order.number}",
        f"Issue date: {issued:%Y-%m-%d}",
        f"Seller tax id: {d.seller_tax}",
        f"Buyer tax id: {d.buyer_tax or '-'}",
        f"Net: {_money(d.net)}  Tax: {_money(d.tax)}  Gross: {_money(d.gross)} CNY",
    ]
    if d.red:
        lines.append(f"Reverses: {d.blue_number}")
    ops = "BT /F1 11 Tf 50 780 Td 16 TL " + " ".join(f"({_pdf_text(t)}) Tj T*" for t in lines) + " ET"
    stream = ops.encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def shanghai_date(value: str | None) -> date | None:
    if not value:
        return None
    return datetime.strptime(value[:10], "%Y-%m-%d").date()
