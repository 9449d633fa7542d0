"""The shared base of the e-invoice platform connectors (``einvoice.nuonuo``, ``einvoice.baiwang``).

Issuing to the tax authority must happen at most once per invoice, whatever the network does. The
rules this base keeps, for every platform:

* The order number sent to the platform is derived from the delivery's idempotency key (the content
  hash): the same invoice content always gets the same order number, and the platform refuses (or
  answers with the existing serial for) an order number it has seen.
* Every ``deliver`` **queries by order number first** and submits only when the platform has never
  seen the order. A query costs one request; a double issue costs a red-letter procedure with the tax
  bureau. A time-out after the platform issued is therefore harmless: the retry finds the issued invoice.
* Issuing is asynchronous: after the submit, poll until issued or refused within ``poll_budget``
  seconds; still issuing at the end is a ``TransientError`` (the worker retries later, and the retry
  queries first). A refusal is a ``PermanentError`` with the platform's own code and message.
* 429 → ``RateLimited`` (``Retry-After``), 5xx / time-outs / dropped connections → ``TransientError``.
  Only a request the platform provably refused before processing it (stale token, clock skew) is
  re-sent at once, once.
* The access token is cached for its lifetime in memory and in ``context.data_dir`` (token fetches are
  capped by the platforms), and is never logged; neither is the secret.

A platform subclass supplies the wire protocol: token fetch, request signing (``_rpc``), the mapping of
an ``Invoice`` to the platform's issuing request, and of the platform's answers to ``PlatformInvoice``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import click
import httpx
from pydantic import Field, SecretStr, field_validator

from hub.connectors import (
    ConnectorContext,
    ConnectorSettings,
    DeliveryRequest,
    Health,
    Incoming,
    Inventory,
    InventoryItem,
    Receipt,
    Sink,
)
from hub.errors import ConfigError, HubError, PermanentError, RateLimited, TransientError
from hub.models import SHANGHAI, Document, Invoice, InvoiceKind, InvoiceStatus

CENT = Decimal("0.01")
MEDIA_TYPES = {"ofd": "application/ofd", "xml": "application/xml", "pdf": "application/pdf"}


class EInvoiceSettings(ConnectorSettings):
    """Settings every e-invoice platform connector takes (``connectors.<name>`` in hub.yaml)."""

    base_url: str = Field(description="the platform's API root, e.g. https://sdk.nuonuo.com")
    app_key: SecretStr = Field(description="the platform's appKey / client_id (kept out of logs too)")
    app_secret: SecretStr
    user_tax: str = Field(min_length=1, description="the seller's tax id the platform account issues for")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(20.0, gt=0)
    rate_limit: float = Field(5.0, gt=0, description="requests per second (token bucket refill)")
    rate_burst: int = Field(10, ge=1, description="token bucket size")
    rate_max_wait: float = Field(2.0, ge=0, description="longer than this for a slot → RateLimited")
    poll_interval: float = Field(1.0, gt=0, description="seconds between issuing-status queries")
    poll_budget: float = Field(30.0, ge=0, description="seconds to wait for issued/refused per delivery")
    callback_url: str | None = Field(None, description="where the platform posts issuing results")
    invoice_line: Literal["auto", "special", "ordinary"] = "auto"
    digital: bool = Field(True, description="issue 数电 invoices (20-digit number); false: legacy e-invoices")
    drawer: str = Field("开票员", description="开票人")
    order_prefix: str = Field("", pattern=r"^[0-9A-Za-z]{0,6}$")
    red_reason: Literal["01", "02", "03", "04"] = "01"
    default_retry_after: float = Field(5.0, ge=0, description="when a 429 carries no Retry-After")
    max_documents_bytes: int = Field(20 * 1024 * 1024, gt=0)
    inventory_page_size: int = Field(100, ge=1, le=100, description="invoices per inventory page")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"callback_url must be an http(s) URL, got {value!r}")
        return value


@dataclass
class PlatformInvoice:
    """One issuing order as the platform reports it, in platform-neutral terms."""

    order_no: str
    serial: str
    state: Literal["issuing", "issued", "failed", "void"]
    status_code: str  # the platform's own status code
    message: str = ""
    number: str | None = None
    code: str | None = None  # legacy invoice code
    issued_at: datetime | None = None
    urls: dict[str, str] = field(default_factory=dict)  # ofd / xml / pdf
    net: Decimal | None = None
    tax: Decimal | None = None
    gross: Decimal | None = None
    seller_tax: str | None = None
    buyer_tax: str | None = None
    digital: bool = True
    special: bool = False
    red: bool = False
    blue_number: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str | None:
        if not self.number:
            return None
        return f"CN:{self.number}" if self.digital else f"CN:{self.code}:{self.number}"


@dataclass
class RedForm:
    """A red-letter confirmation form (红字信息确认单)."""

    form_id: str
    form_no: str
    status: str
    blue_number: str
    #: What the form reverses (negative amounts), when the platform says.
    net: Decimal | None = None
    tax: Decimal | None = None

    @property
    def usable(self) -> bool:
        # 01 no confirmation needed, 04 confirmed
        return self.status in {"01", "04"}


class _Resend(Exception):
    """The platform refused the request before processing it (stale token, clock skew): safe to re-send."""

    def __init__(self, reason: Literal["token", "clock"]) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenBucket:
    """A thread-safe token bucket; ``take`` waits up to ``max_wait`` for a slot, else ``RateLimited``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, max_wait: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            if wait > max_wait:
                raise RateLimited(f"local rate limit ({self.rate}/s) reached", retry_after=wait)
            self._tokens -= 1  # a reservation: the slot is ours once the wait is over
        if wait:
            time.sleep(wait)


def money(value: Decimal) -> str:
    return format(value.quantize(CENT, ROUND_HALF_UP), "f")


def plain(value: Decimal | None) -> str:
    if value is None:
        return ""
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class EInvoiceConnector(Sink, Inventory):
    """Issue invoices through a third-party e-invoice platform, exactly once (see module docstring)."""

    wants_documents = False  # sends the invoice's data, not its files

    Settings: ClassVar[type[ConnectorSettings]] = EInvoiceSettings
    platform: ClassVar[str] = ""
    #: The longest order number the platform takes.
    order_no_max: ClassVar[int] = 20
    settings: EInvoiceSettings

    def __init__(self, settings: ConnectorSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        s = self.settings
        if not s.app_key.get_secret_value():
            raise ConfigError("app_key is empty", location=f"connectors.{context.name}.settings.app_key")
        #: The app key as sent on the wire (query strings, forms); never logged.
        self.app_key = s.app_key.get_secret_value()
        self._client = httpx.Client(
            base_url=s.base_url,
            timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            headers={"User-Agent": "invoice-hub"},
        )
        self._bucket = TokenBucket(s.rate_limit, s.rate_burst)
        self._token_lock = threading.Lock()
        self._token: tuple[str, float] | None = None  # (token, expires_at epoch)
        self._clock_offset = 0.0
        fingerprint = hashlib.sha256(f"{s.base_url}\0{self.app_key}".encode()).hexdigest()[:16]
        self._token_path = Path(context.data_dir) / f"{self.platform}-token-{fingerprint}.json"

    # ---------------------------------------------------------------------------------------------
    # What a platform subclass provides
    # ---------------------------------------------------------------------------------------------
    def _fetch_token(self) -> tuple[str, float]:
        """Fetch a new access token from the platform: ``(token, lifetime seconds)``."""
        raise NotImplementedError

    def _rpc(self, method: str, body: dict[str, Any], *, accept: frozenset[str] = frozenset()) -> Any:
        """Call one platform method; return its result. Codes in ``accept`` are returned as
        ``(code, result)`` instead of raising. Raises ``_Resend`` for refusals that are safe to re-send."""
        raise NotImplementedError

    def _submit(self, order_no: str, invoice: Invoice) -> None:
        raise NotImplementedError

    def _submit_red(self, order_no: str, blue_number: str, form: RedForm, invoice: Invoice | None) -> None:
        raise NotImplementedError

    def _query(self, *, order_no: str | None = None, serial: str | None = None) -> PlatformInvoice | None:
        raise NotImplementedError

    def _apply_red_form(self, blue_number: str, reason: str) -> RedForm:
        raise NotImplementedError

    def _void(self, serial: str, number: str, code: str | None) -> None:
        raise NotImplementedError

    def _list(self, start: datetime, end: datetime) -> Iterator[PlatformInvoice]:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------
    # HTTP, clock, token
    # ---------------------------------------------------------------------------------------------
    def _http(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """One HTTP exchange with the platform, errors translated at the seam. ``what`` names it in
        errors and logs (never the URL: it may carry the token)."""
        self._bucket.take(self.settings.rate_max_wait)
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"{self.platform} {what}: timed out ({type(exc).__name__}); the outcome is unknown",
                connector=self.name,
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"{self.platform} {what}: connection failed ({type(exc).__name__})", connector=self.name
            ) from exc
        self._learn_clock(response)
        status = response.status_code
        if status == 429:
            raise RateLimited(
                f"{self.platform} {what}: rate limited (429)",
                retry_after=self._retry_after(response.headers.get("Retry-After")),
                remote_status=429,
                remote_body=response.text[:2000],
                connector=self.name,
            )
        if status >= 500:
            raise TransientError(
                f"{self.platform} {what}: server error {status}",
                remote_status=status,
                remote_body=response.text[:2000],
                connector=self.name,
            )
        return response

    def _retry_after(self, header: str | None) -> float:
        if not header:
            return self.settings.default_retry_after
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return self.settings.default_retry_after
        return max(0.0, when.timestamp() - time.time())

    def _learn_clock(self, response: httpx.Response) -> None:
        """Keep the offset of the platform's clock (from ``Date``) so timestamps fall in its window."""
        header = response.headers.get("Date")
        if not header:
            return
        with contextlib.suppress(TypeError, ValueError):
            offset = parsedate_to_datetime(header).timestamp() - time.time()
            # Date has 1 s resolution: ignore what it cannot tell apart from no skew.
            self._clock_offset = offset if abs(offset) > 2 else 0.0

    def _now(self) -> float:
        """The platform's idea of now (epoch seconds)."""
        return time.time() + self._clock_offset

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError as exc:
            # A 4xx page that is not the platform's JSON: a wrong base_url or path, which retrying
            # cannot fix. Anything else (a proxy's error page on a 200) may pass.
            kind = PermanentError if 400 <= response.status_code < 500 else TransientError
            raise kind(
                f"{self.platform} {what}: answer is not JSON (HTTP {response.status_code})",
                remote_status=response.status_code,
                remote_body=response.text[:2000],
                connector=self.name,
            ) from exc
        if not isinstance(payload, dict):
            raise PermanentError(
                f"{self.platform} {what}: answer is not a JSON object",
                remote_status=response.status_code,
                remote_body=response.text[:2000],
                connector=self.name,
            )
        return payload

    def access_token(self) -> str:
        """The cached access token; fetched only when none is valid (fetches are capped).

        Cached in memory and in ``data_dir``; hub processes on one machine share the file, and an
        exclusive lock around the fetch makes one of them fetch while the others wait and read it."""
        with self._token_lock:
            if self._token and self._token[1] > time.time():
                return self._token[0]
            self._token_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._token_path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                stored = self._load_token()
                if stored and stored[1] > time.time():
                    self._token = stored
                    self.log.debug("einvoice_token_loaded", platform=self.platform)
                    return stored[0]
                token, lifetime = self._fetch_token()
                # Renew a little early (5 minutes, or a tenth of a short lifetime) so no call carries a
                # token that expires on the way.
                self._token = (token, time.time() + lifetime - min(300.0, lifetime / 10))
                self._store_token(*self._token)
            self.log.info("einvoice_token_fetched", platform=self.platform, lifetime=lifetime)
            return token

    def _drop_token(self, token: str) -> None:
        with self._token_lock:
            if self._token and self._token[0] == token:
                self._token = None
            stored = self._load_token()
            if stored and stored[0] == token:  # another process may have stored a newer one
                with contextlib.suppress(FileNotFoundError):
                    self._token_path.unlink()
            self.log.info("einvoice_token_dropped", platform=self.platform)

    def _load_token(self) -> tuple[str, float] | None:
        try:
            data = json.loads(self._token_path.read_text())
            return str(data["token"]), float(data["expires_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _store_token(self, token: str, expires_at: float) -> None:
        self._token_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._token_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"token": token, "expires_at": expires_at}, fh)
        os.replace(tmp, self._token_path)

    def _call(self, method: str, body: dict[str, Any], *, accept: frozenset[str] = frozenset()) -> Any:
        """``_rpc`` with the one safe re-send: after a refusal for a stale token or a skewed clock."""
        try:
            return self._rpc(method, body, accept=accept)
        except _Resend as resend:
            self.log.info("einvoice_resend", platform=self.platform, method=method, reason=resend.reason)
        try:
            return self._rpc(method, body, accept=accept)
        except _Resend as resend:
            raise TransientError(
                f"{self.platform} {method}: refused twice ({resend.reason}); "
                + ("check the platform's clock" if resend.reason == "clock" else "token rejected"),
                connector=self.name,
            ) from None

    def refusal(self, what: str, code: str, message: str, body: str) -> PermanentError:
        return PermanentError(
            f"{self.platform} {what} refused: [{code}] {message}",
            code=code,
            remote_body=body[:2000],
            connector=self.name,
        )

    # ---------------------------------------------------------------------------------------------
    # Orders
    # ---------------------------------------------------------------------------------------------
    def order_number(self, key: str) -> str:
        """The platform order number for an idempotency key: deterministic, alphanumeric, within the
        platform's length limit. A bare content hash is used as it is (its first characters); any other
        key (``<hash>:<status>``) is hashed first, so it never collides with the plain hash's number."""
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            key = hashlib.sha256(key.encode()).hexdigest()
        prefix = self.settings.order_prefix
        return prefix + key[: self.order_no_max - len(prefix)]

    def status(self, *, order_no: str | None = None, serial: str | None = None) -> PlatformInvoice | None:
        """What the platform knows of an order (by order number or platform serial); None: never seen."""
        if not (order_no or serial):
            raise ValueError("status() needs order_no or serial")
        return self._query(order_no=order_no, serial=serial)

    def _wait(self, order_no: str, found: PlatformInvoice | None) -> PlatformInvoice:
        """Poll until issued or refused, within the poll budget."""
        deadline = time.monotonic() + self.settings.poll_budget
        while True:
            if found is not None:
                if found.state == "issued":
                    return found
                if found.state == "failed":
                    self.log.warning(
                        "einvoice_refused",
                        platform=self.platform,
                        order_no=order_no,
                        code=found.status_code,
                        reason=found.message,
                    )
                    raise PermanentError(
                        f"{self.platform} refused to issue order {order_no}: "
                        f"[{found.status_code}] {found.message}",
                        code=found.status_code,
                        remote_body=json.dumps(found.raw, ensure_ascii=False, default=str)[:2000],
                        connector=self.name,
                    )
                if found.state == "void":
                    raise PermanentError(
                        f"{self.platform} order {order_no} was issued and voided ({found.number})",
                        code=found.status_code,
                        connector=self.name,
                    )
            if time.monotonic() + self.settings.poll_interval > deadline:
                state = found.state if found else "submitted, not yet visible"
                self.log.info(
                    "einvoice_still_issuing", platform=self.platform, order_no=order_no, state=state
                )
                raise TransientError(
                    f"{self.platform} order {order_no} still {state} after {self.settings.poll_budget:g}s; "
                    "the next attempt queries it by order number first",
                    remote_body=json.dumps(found.raw, ensure_ascii=False, default=str)[:2000]
                    if found
                    else None,
                    connector=self.name,
                )
            time.sleep(self.settings.poll_interval)
            found = self._query(order_no=order_no)

    # ---------------------------------------------------------------------------------------------
    # Sink
    # ---------------------------------------------------------------------------------------------
    def deliver(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        if request.event.type == "invoice.status_changed":
            return self._status_change(request)
        if request.amends is not None:
            raise PermanentError(
                f"{invoice.identity} was already issued through {self.platform} with other content; "
                "an issued invoice cannot be changed: red-letter it and issue a new one",
                code="amendment_requires_red_letter",
                connector=self.name,
            )
        order_no = self.order_number(request.idempotency_key)
        log = self.log.bind(platform=self.platform, order_no=order_no, attempt=request.attempt)
        found = self._query(order_no=order_no)
        if found is not None:
            log.info("einvoice_order_exists", serial=found.serial, state=found.state)
        elif invoice.is_red_letter:
            form = self._red_form(invoice.reverses or "", invoice.reversal_reason or self.settings.red_reason)
            totals = invoice.totals
            if form.net is not None and (form.net != totals.net or form.tax != totals.tax):
                raise PermanentError(
                    f"red-letter request {invoice.identity} reverses {totals.net}/{totals.tax} (net/tax) "
                    f"but the confirmation form {form.form_no} for {invoice.reverses} covers "
                    f"{form.net}/{form.tax}: this connector issues full reversals only",
                    code="partial_red_letter",
                    connector=self.name,
                )
            self._submit_red(order_no, invoice.reverses or "", form, invoice)
            log.info("einvoice_submitted", red_letter=True, reverses=invoice.reverses)
        else:
            self._check(invoice)
            self._submit(order_no, invoice)
            log.info("einvoice_submitted")
        issued = self._wait(order_no, found)
        receipt = self._receipt(invoice, issued)
        log.info("einvoice_issued", number=issued.number, serial=issued.serial)
        return receipt

    def _check(self, invoice: Invoice) -> None:
        """What the hub can tell before the platform does; each problem names the field."""
        if invoice.extra.get("platform_serial") or (
            invoice.kind.is_cn_digital
            and re.fullmatch(r"\d{20}", invoice.number)
            and not invoice.extra.get("issue_request")
        ):
            raise PermanentError(
                f"{invoice.identity} is an issued invoice already (a route sends issued invoices back to "
                f"{self.platform}?); only issue requests are issued",
                code="already_issued",
                connector=self.name,
            )
        problems = []
        if (invoice.seller.tax_id or "") != self.settings.user_tax:
            problems.append(
                f"seller.tax_id {invoice.seller.tax_id!r} is not this platform account's "
                f"({self.settings.user_tax})"
            )
        if not invoice.lines:
            problems.append("lines: an invoice to issue needs at least one line")
        if invoice.currency != "CNY":
            problems.append(f"currency: platforms issue in CNY, not {invoice.currency}")
        if problems:
            raise PermanentError(
                f"cannot issue {invoice.identity} through {self.platform}: " + "; ".join(problems),
                code="invalid_invoice",
                connector=self.name,
            )

    def line_tax(self, amount: Decimal, rate: Decimal | None, tax: Decimal | None) -> Decimal:
        if tax is not None:
            return tax
        return (amount * (rate or Decimal(0))).quantize(CENT, ROUND_HALF_UP)

    def special(self, invoice: Invoice) -> bool:
        if self.settings.invoice_line != "auto":
            return self.settings.invoice_line == "special"
        return invoice.kind in (InvoiceKind.CN_DIGITAL_SPECIAL, InvoiceKind.CN_LEGACY_SPECIAL)

    def _receipt(self, invoice: Invoice | None, issued: PlatformInvoice) -> Receipt:
        documents = self._documents(issued)
        outputs = []
        detail = {
            "platform": self.platform,
            "serial": issued.serial,
            "order_no": issued.order_no,
            "number": issued.number,
            "code": issued.code,
            "status": issued.status_code,
            "issued_at": issued.issued_at.isoformat() if issued.issued_at else None,
            "documents": {d.media_type: d.sha256 for d in documents},
        }
        if invoice is not None:
            copy = self._issued_invoice(invoice, issued)
            original = next((d for d in documents if d.media_type == MEDIA_TYPES["ofd"]), None)
            original = original or (documents[0] if documents else None)
            detail["identity"] = copy.identity
            outputs.append(
                Incoming(documents=documents, key=f"{self.name}:{issued.number}", invoices=[(copy, original)])
            )
        return Receipt(remote_ref=issued.number, detail=detail, outputs=outputs)

    def _issued_invoice(self, invoice: Invoice, issued: PlatformInvoice) -> Invoice:
        special = issued.special
        if issued.digital:
            kind = InvoiceKind.CN_DIGITAL_SPECIAL if special else InvoiceKind.CN_DIGITAL_ORDINARY
        else:
            kind = InvoiceKind.CN_LEGACY_SPECIAL if special else InvoiceKind.CN_LEGACY_ORDINARY
        data = invoice.model_dump(mode="json")
        data.update(
            kind=kind.value,
            number=issued.number,
            code=issued.code if not issued.digital else None,
            status=InvoiceStatus.ISSUED.value,
            issue_date=(issued.issued_at or datetime.now(SHANGHAI)).astimezone(SHANGHAI).date().isoformat(),
            extra={
                **invoice.extra,
                "platform": self.platform,
                "platform_serial": issued.serial,
                "platform_order_no": issued.order_no,
                "requested_as": invoice.identity,
            },
        )
        if issued.red and issued.blue_number:
            data["reverses"] = issued.blue_number
        if not data["seller"].get("country"):
            data["seller"]["country"] = "CN"  # as the platform's OFD/XML say it, so both hash the same
        return Invoice.model_validate(data)

    def _documents(self, issued: PlatformInvoice) -> list[Document]:
        out = []
        total = 0
        for kind in ("ofd", "xml", "pdf"):
            url = issued.urls.get(kind)
            if not url:
                continue
            response = self._http("GET", url, what=f"download {kind} of {issued.number}")
            if response.status_code != 200:
                raise TransientError(
                    f"{self.platform}: {kind} of issued invoice {issued.number} not available "
                    f"(HTTP {response.status_code}); the next attempt fetches it again",
                    remote_status=response.status_code,
                    connector=self.name,
                )
            total += len(response.content)
            if total > self.settings.max_documents_bytes:
                raise PermanentError(
                    f"{self.platform}: documents of {issued.number} exceed "
                    f"{self.settings.max_documents_bytes} bytes",
                    code="documents_too_large",
                    connector=self.name,
                )
            out.append(
                Document(
                    content=response.content,
                    media_type=MEDIA_TYPES[kind],
                    filename=f"{issued.number}.{kind}",
                    source=self.name,
                    origin=f"{self.platform}:{issued.serial}:{kind}",
                )
            )
        return out

    # ---------------------------------------------------------------------------------------------
    # Red letter and void
    # ---------------------------------------------------------------------------------------------
    def _red_form(self, blue_number: str, reason: str) -> RedForm:
        if not blue_number:
            raise PermanentError(
                "a red-letter invoice must name the invoice it reverses", code="invalid_invoice"
            )
        form = self._apply_red_form(blue_number, reason)
        if not form.usable:
            raise TransientError(
                f"red-letter form {form.form_no} for {blue_number} is awaiting confirmation "
                f"(status {form.status})",
                connector=self.name,
            )
        return form

    def red_letter(self, blue: Invoice, *, key: str, reason: str | None = None) -> Receipt:
        """Reverse ``blue`` in full: confirmation form (reused if one exists), then the red invoice.
        ``key`` makes it idempotent: the same key never issues a second red invoice."""
        if not blue.kind.is_cn:
            raise PermanentError(
                f"{blue.identity} is not a Chinese invoice; nothing to red-letter", code="not_cn"
            )
        order_no = self.order_number(key)
        found = self._query(order_no=order_no)
        if found is None:
            form = self._red_form(blue.number, reason or blue.reversal_reason or self.settings.red_reason)
            self._submit_red(order_no, blue.number, form, None)
            self.log.info(
                "einvoice_submitted", platform=self.platform, order_no=order_no, reverses=blue.number
            )
        issued = self._wait(order_no, found)
        red = self._negated(blue)
        return self._receipt(red, issued)

    def _negated(self, blue: Invoice) -> Invoice:
        data = blue.model_dump(mode="json")
        for line in data["lines"]:
            for name in ("amount", "tax_amount", "quantity"):
                if line.get(name) is not None:
                    line[name] = str(-Decimal(line[name]))
        for name in ("net", "tax", "gross", "payable"):
            if data["totals"].get(name) is not None:
                data["totals"][name] = str(-Decimal(data["totals"][name]))
        data["reverses"] = blue.number
        data["reversal_reason"] = blue.reversal_reason or self.settings.red_reason
        return Invoice.model_validate(data)

    def void(self, invoice: Invoice) -> Receipt:
        """Void an issued invoice. 数电 invoices cannot be voided (only red-lettered)."""
        if invoice.kind.is_cn_digital:
            raise PermanentError(
                f"{invoice.identity} is a fully digitalised e-invoice: it cannot be voided, only reversed "
                "by a red-letter invoice",
                code="void_not_allowed",
                connector=self.name,
            )
        if not invoice.kind.is_cn_legacy:
            raise PermanentError(f"{invoice.identity} is not a Chinese invoice", code="void_not_allowed")
        serial = invoice.extra.get("platform_serial")
        if not serial:
            raise PermanentError(
                f"{invoice.identity}: no platform serial (extra.platform_serial) to void it by",
                code="serial_unknown",
                connector=self.name,
            )
        self._void(str(serial), invoice.number, invoice.code)
        self.log.info("einvoice_voided", platform=self.platform, number=invoice.number)
        return Receipt(remote_ref=invoice.number, detail={"platform": self.platform, "voided": True})

    def _status_change(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        if invoice.status is InvoiceStatus.VOID:
            return self.void(invoice)
        if invoice.status in (InvoiceStatus.RED_LETTERED, InvoiceStatus.PARTLY_RED_LETTERED):
            if invoice.status is InvoiceStatus.PARTLY_RED_LETTERED:
                raise PermanentError(
                    f"{invoice.identity}: a partial red-letter needs the red invoice itself, "
                    "not a status change",
                    code="partial_red_letter",
                    connector=self.name,
                )
            return self.red_letter(invoice, key=request.idempotency_key)
        return Receipt(detail={"platform": self.platform, "ignored_status": str(invoice.status)})

    # ---------------------------------------------------------------------------------------------
    # Inventory and health
    # ---------------------------------------------------------------------------------------------
    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        """Invoices the platform issued for this account between ``since`` and ``until`` (inclusive)."""
        today = datetime.now(SHANGHAI).date()
        start_day = since or (today - timedelta(days=365))
        end_day = until or today
        start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=SHANGHAI)
        end = datetime(end_day.year, end_day.month, end_day.day, 23, 59, 59, tzinfo=SHANGHAI)
        for found in self._list(start, end):
            if not found.number or found.state not in {"issued", "void"}:
                continue
            yield InventoryItem(
                identity=found.identity or "",
                content_hash=None,
                issue_date=found.issued_at.astimezone(SHANGHAI).date() if found.issued_at else None,
                gross=found.gross,
                currency="CNY",
                seller_tax_id=found.seller_tax,
                buyer_tax_id=found.buyer_tax,
                number=found.number,
                remote_ref=found.serial,
            )

    def health(self) -> Health:
        try:
            self.access_token()
            self._query(order_no=self.order_number("health"))
        except HubError as exc:
            return Health(False, f"{self.platform}: {exc}")
        return Health(True, f"{self.platform}: token valid, API answers")

    def verify_callback(self, body: bytes, headers: Mapping[str, str]) -> PlatformInvoice:
        """Check a platform callback's signature and read it. Raises ``PermanentError`` when forged.
        A callback only tells what to look at: the connector's own query stays the authority."""
        raise NotImplementedError

    def close(self) -> None:
        self._client.close()


def parse_decimal(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    return Decimal(str(value))


# ---------------------------------------------------------------------------------------------------
# CLI: `hub einvoice ...` (registered by whichever e-invoice plugin loads first)
# ---------------------------------------------------------------------------------------------------
def _json_out(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def register_commands(cli: click.Group) -> None:
    """``hub einvoice status|inventory|red-letter|void``: what ops do with an issuing platform by hand."""
    if "einvoice" in cli.commands:
        return

    @cli.group("einvoice")
    def einvoice() -> None:
        """E-invoice platform connectors (einvoice.*): status, inventory, red letter, void."""

    def connector(state: Any, name: str) -> EInvoiceConnector:
        conn = state.hub().connectors.get(name)
        if not isinstance(conn, EInvoiceConnector):
            known = sorted(n for n, c in state.hub().connectors.items() if isinstance(c, EInvoiceConnector))
            raise click.UsageError(f"{name!r} is not an e-invoice connector in hub.yaml (e-invoice: {known})")
        return conn

    def issued_invoice(state: Any, number: str) -> tuple[Invoice, str]:
        import sqlalchemy as sa

        from hub.ledger import schema as t

        v = t.invoice_versions
        with state.hub().ledger.begin() as conn:
            row = conn.execute(
                sa.select(v.c.invoice_json, v.c.content_hash)
                .where(v.c.number == number, v.c.identity.like("CN:%"))
                .order_by(v.c.id.desc())
                .limit(1)
            ).first()
        if row is None:
            raise click.UsageError(f"the ledger holds no Chinese invoice numbered {number}")
        return Invoice.model_validate_json(row.invoice_json), str(row.content_hash)

    def record(state: Any, name: str, receipt: Receipt, changed: Invoice) -> list[str]:
        """Hand the platform's outputs and the status change to intake, as the worker would."""
        items = [
            *receipt.outputs,
            Incoming(documents=[], key=f"{name}:{changed.number}", invoices=[(changed, None)]),
        ]
        outcomes = state.hub().ingest(items, source=name)
        return [identity for outcome in outcomes for identity in outcome.identities]

    @einvoice.command("status")
    @click.argument("name")
    @click.option("--order-no", help="the platform order number (derived from the content hash)")
    @click.option("--serial", help="the platform's serial")
    @click.pass_obj
    def status_command(state: Any, name: str, order_no: str | None, serial: str | None) -> None:
        """What connector NAME's platform says of an order (JSON)."""
        if not (order_no or serial):
            raise click.UsageError("give --order-no or --serial")
        found = connector(state, name).status(order_no=order_no, serial=serial)
        if found is None:
            raise click.ClickException(f"the platform knows no such order ({order_no or serial})")
        _json_out({k: v for k, v in dataclasses.asdict(found).items() if k != "raw"})

    @einvoice.command("inventory")
    @click.argument("name")
    @click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="first issue day (YYYY-MM-DD)")
    @click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="last issue day (YYYY-MM-DD)")
    @click.pass_obj
    def inventory_command(state: Any, name: str, since: datetime | None, until: datetime | None) -> None:
        """Invoices connector NAME's platform issued in the date range (JSON lines)."""
        for item in connector(state, name).inventory(since and since.date(), until and until.date()):
            click.echo(json.dumps(dataclasses.asdict(item), ensure_ascii=False, default=str))

    @einvoice.command("red-letter")
    @click.argument("name")
    @click.argument("number")
    @click.option("--reason", type=click.Choice(["01", "02", "03", "04"]), default=None)
    @click.pass_obj
    def red_letter_command(state: Any, name: str, number: str, reason: str | None) -> None:
        """Reverse issued invoice NUMBER in full through connector NAME (form, then red invoice).

        Idempotent with a routed status change: the key is the invoice's content hash plus
        ``red_lettered``, so doing it twice, or here and through a route, issues one red invoice."""
        blue, content = issued_invoice(state, number)
        receipt = connector(state, name).red_letter(
            blue, key=f"{content}:{InvoiceStatus.RED_LETTERED.value}", reason=reason
        )
        changed = blue.model_copy(update={"status": InvoiceStatus.RED_LETTERED})
        _json_out(
            {
                "red_number": receipt.remote_ref,
                "detail": receipt.detail,
                "recorded": record(state, name, receipt, changed),
            }
        )

    @einvoice.command("void")
    @click.argument("name")
    @click.argument("number")
    @click.pass_obj
    def void_command(state: Any, name: str, number: str) -> None:
        """Void issued (legacy) invoice NUMBER through connector NAME; 数电 invoices are refused."""
        invoice, _ = issued_invoice(state, number)
        try:
            receipt = connector(state, name).void(invoice)
        except PermanentError as exc:
            raise click.ClickException(f"{exc} [{exc.code}]") from exc
        changed = invoice.model_copy(update={"status": InvoiceStatus.VOID})
        _json_out({"voided": number, "recorded": record(state, name, receipt, changed)})
