"""``erp.rest``: a REST ERP as a sink (and inventory), with presets for Odoo 19 and ERPNext.

* **generic** (``preset: generic``): endpoints and a field mapping in hub.yaml — ``fields`` maps a
  dotted path in the ERP's JSON to a dotted path of the invoice (``customer.vat: buyer.tax_id``;
  ``=text`` is a constant, ``identity`` / ``content_hash`` / ``idempotency_key`` are known too), and
  ``lines`` maps each invoice line the same way. Inventory pages through a list endpoint in ``page``,
  ``offset`` or ``cursor`` style.
* **odoo** (``preset: odoo``): the JSON-2 API of Odoo 19, ``POST /json/2/account.move/<method>`` with
  ``Authorization: bearer <API key>``; ``search_read`` / ``create`` / ``action_post`` on
  ``account.move`` (``move_type`` ``out_invoice`` / ``out_refund``), partners by VAT number on
  ``res.partner``, taxes by rate on ``account.tax``.
* **erpnext** (``preset: erpnext``): Frappe's REST API, ``Authorization: token key:secret``,
  ``GET/POST /api/resource/Sales Invoice`` with ``fields``, ``filters``, ``limit_start``,
  ``limit_page_length``; returns as ``is_return`` + ``return_against``; ``docstatus`` 0/1/2.

Exactly once: every preset stores the delivery's idempotency key on the record (``key_field``) and
**searches for it before creating**, so a retry after a time-out finds the record the first attempt
made instead of creating a second one. Auth: bearer, basic, Frappe token, or OAuth2 client credentials
(the token is cached until shortly before it expires). Errors at the seam: 429 → ``RateLimited`` with
``Retry-After``; 5xx, 408 and network errors/time-outs → ``TransientError``; other 4xx →
``PermanentError`` with the ERP's own error code and body. One pooled ``httpx.Client`` per connector.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Literal
from urllib.parse import urljoin

import httpx
import structlog
from invoice_hub_plugins import _erp_mapping as mapping
from pydantic import Field, SecretStr, field_validator, model_validator

from hub import (
    Capabilities,
    ConnectorContext,
    ConnectorSettings,
    DeliveryRequest,
    Health,
    Inventory,
    InventoryItem,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    PermanentError,
    RateLimited,
    Receipt,
    Sink,
    TransientError,
    hookimpl,
)

log = structlog.get_logger()

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------
class BearerAuth(ConnectorSettings):
    type: Literal["bearer"]
    token: SecretStr


class BasicAuth(ConnectorSettings):
    type: Literal["basic"]
    username: str
    password: SecretStr


class TokenAuth(ConnectorSettings):
    """Frappe / ERPNext: ``Authorization: token <api_key>:<api_secret>``."""

    type: Literal["token"]
    key: str
    secret: SecretStr


class OAuth2Auth(ConnectorSettings):
    """OAuth2 client credentials (RFC 6749 §4.4); the client authenticates with HTTP basic."""

    type: Literal["oauth2"]
    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    #: Renew this many seconds before ``expires_in`` runs out.
    leeway: float = Field(30.0, ge=0)


Auth = Annotated[BearerAuth | BasicAuth | TokenAuth | OAuth2Auth, Field(discriminator="type")]


class Pagination(ConnectorSettings):
    style: Literal["page", "offset", "cursor", "none"] = "page"
    size: int = Field(100, ge=1, le=10_000)
    size_param: str = "page_size"
    page_param: str = "page"
    first_page: int = 1
    offset_param: str = "offset"
    cursor_param: str = "cursor"
    #: Where the next cursor is in the response (dotted path); empty/missing ends the listing.
    next_cursor_path: str = "next_cursor"


class GenericApi(ConnectorSettings):
    """Endpoints and mapping of a REST ERP without a preset."""

    create_path: str = "/invoices"
    create_method: Literal["POST", "PUT"] = "POST"
    #: Dotted path of the created record in the create response ("" = the body itself).
    record_path: str = ""
    search_path: str = "/invoices"
    #: Query parameter the search endpoint filters the key field by.
    search_param: str = "idempotency_key"
    list_path: str = "/invoices"
    #: Where the records are in a search/list response ("" = the body is the list).
    items_path: str = "items"
    since_param: str | None = "issue_date_from"
    until_param: str | None = "issue_date_to"
    pagination: Pagination = Field(default_factory=Pagination)
    id_path: str = "id"
    #: ERP JSON path → invoice path (or ``=constant``).
    fields: dict[str, str] = Field(
        default_factory=lambda: {
            "idempotency_key": "idempotency_key",
            "identity": "identity",
            "number": "number",
            "issue_date": "issue_date",
            "currency": "currency",
            "seller.name": "seller.name",
            "seller.tax_id": "seller.tax_id",
            "buyer.name": "buyer.name",
            "buyer.tax_id": "buyer.tax_id",
            "net": "totals.net",
            "tax": "totals.tax",
            "gross": "totals.gross",
        }
    )
    lines_path: str | None = "lines"
    line_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "description": "name",
            "quantity": "quantity",
            "unit_price": "unit_price",
            "amount": "amount",
            "tax_rate": "tax_rate",
            "tax_amount": "tax_amount",
        }
    )
    #: InventoryItem field → ERP JSON path, for ``inventory()``.
    inventory_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "identity": "identity",
            "content_hash": "idempotency_key",
            "issue_date": "issue_date",
            "gross": "gross",
            "currency": "currency",
            "number": "number",
            "seller_tax_id": "seller.tax_id",
            "buyer_tax_id": "buyer.tax_id",
        }
    )

    @field_validator("fields", "line_fields")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for erp_path, source in value.items():
            if not erp_path or not source:
                raise ValueError(f"empty path in mapping {erp_path!r}: {source!r}")
        return value

    @model_validator(mode="after")
    def _key_is_stored(self) -> GenericApi:
        if "idempotency_key" not in self.fields.values():
            raise ValueError(
                "fields: map 'idempotency_key' to a field of the ERP's record (it is searched before every "
                "create, so a retry never creates a second record)"
            )
        return self

    @field_validator("inventory_fields")
    @classmethod
    def _inventory_keys(cls, value: dict[str, str]) -> dict[str, str]:
        known = set(InventoryItem.__dataclass_fields__)
        for key in value:
            if key not in known:
                raise ValueError(f"{key!r} is not an inventory field (known: {', '.join(sorted(known))})")
        if "identity" not in value:
            raise ValueError("inventory_fields needs 'identity'")
        return value


class OdooOptions(ConnectorSettings):
    #: Sent as ``X-Odoo-Database`` (needed when the server hosts several databases).
    database: str | None = None
    #: account.move field holding the delivery's idempotency key (searched before every create).
    key_field: str = "ref"
    #: account.move field holding the hub identity (``CN:<number>``), used for returns and status changes.
    identity_field: str = "invoice_origin"
    #: Post (``action_post``) the created move: the invoice is issued already.
    post: bool = True
    journal_id: int | None = None
    page_size: int = Field(200, ge=1, le=10_000)
    context: dict[str, Any] = Field(default_factory=dict)


class ErpNextOptions(ConnectorSettings):
    key_field: str = "remarks"
    identity_field: str = "po_no"
    company: str | None = None
    #: The (non-stock, service) Item every invoice line is booked on; the line text goes to description.
    item_code: str = "HUB-SERVICE"
    #: Account head of the VAT rows (one "Actual" row per tax rate, with the invoice's own tax amount).
    tax_account: str = "VAT - HUB"
    #: Submit (docstatus 1) on create: the invoice is issued already.
    submit: bool = True
    customer_group: str | None = None
    territory: str | None = None
    page_size: int = Field(100, ge=1, le=10_000)


class ErpRestSettings(ConnectorSettings):
    """``erp.rest`` settings (``connectors.<name>.settings`` in hub.yaml)."""

    base_url: str
    preset: Literal["generic", "odoo", "erpnext"] = "generic"
    auth: Auth | None = None
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_connections: int = Field(10, ge=1, le=1000)
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True
    api: GenericApi | None = None
    odoo: OdooOptions | None = None
    erpnext: ErpNextOptions | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _preset_options(self) -> ErpRestSettings:
        if self.preset == "odoo":
            if not isinstance(self.auth, BearerAuth):
                raise ValueError("auth: preset odoo needs 'type: bearer' with the user's API key as token")
            self.odoo = self.odoo or OdooOptions()
        elif self.preset == "erpnext":
            if not isinstance(self.auth, TokenAuth):
                raise ValueError("auth: preset erpnext needs 'type: token' with the API key and secret")
            self.erpnext = self.erpnext or ErpNextOptions()
        else:
            self.api = self.api or GenericApi()
        other = {"odoo": self.odoo, "erpnext": self.erpnext, "api": self.api}
        for name, value in other.items():
            wanted = {"odoo": "odoo", "erpnext": "erpnext", "api": "generic"}[name]
            if value is not None and wanted != self.preset:
                raise ValueError(
                    f"{name}: only used with preset {wanted}, this connector is preset {self.preset}"
                )
        return self


#: The settings model of this connector type (``connectors.<name>.settings`` in hub.yaml).
Settings = ErpRestSettings


# ---------------------------------------------------------------------------------------------------
# HTTP seam: auth, error classification
# ---------------------------------------------------------------------------------------------------
def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After")
    if not value:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 1.0


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("exc_type", "name", "code", "error_code", "error"):
            value = body.get(key)
            if isinstance(value, str | int) and value != "":
                return str(value)
    return None


def _body_text(response: httpx.Response) -> str:
    return response.text[:4000]


class _OAuth2Token:
    """Client-credentials token cache (thread safe; one fetch at a time)."""

    def __init__(self, auth: OAuth2Auth) -> None:
        self.auth = auth
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.fetches = 0

    def get(self, client: httpx.Client) -> str:
        with self._lock:
            if self._token and time.monotonic() < self._expires:
                return self._token
            secret = self.auth.client_secret.get_secret_value()
            basic = base64.b64encode(f"{self.auth.client_id}:{secret}".encode()).decode()
            data = {"grant_type": "client_credentials"}
            if self.auth.scope:
                data["scope"] = self.auth.scope
            url = urljoin(str(client.base_url), self.auth.token_url)
            response = _send(client, "POST", url, data=data, headers={"Authorization": f"Basic {basic}"})
            payload = response.json()
            token = payload.get("access_token") if isinstance(payload, dict) else None
            if not token:
                raise PermanentError(
                    "OAuth2 token response has no access_token", remote_body=_body_text(response)
                )
            self.fetches += 1
            expires_in = float(payload.get("expires_in") or 3600)
            self._token = str(token)
            self._expires = time.monotonic() + max(0.0, expires_in - self.auth.leeway)
            return self._token

    def forget(self) -> None:
        with self._lock:
            self._token = None


def _send(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One HTTP call with errors translated into the hub's classes (no retry here)."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientError(f"{method} {url}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code < 400:
        return response
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    text = _body_text(response)
    status = response.status_code
    where = f"{method} {response.request.url.path}"
    if status == 429:
        raise RateLimited(
            f"{where}: 429 too many requests", retry_after=_retry_after(response), remote_body=text
        )
    if status >= 500 or status == 408:
        raise TransientError(f"{where}: HTTP {status}", remote_status=status, remote_body=text)
    message = _remote_message(body) or response.reason_phrase
    raise PermanentError(
        f"{where}: HTTP {status}: {message}", code=_error_code(body), remote_status=status, remote_body=text
    )


def _remote_message(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    messages = body.get("_server_messages")  # Frappe: a JSON list of JSON objects
    if isinstance(messages, str):
        try:
            texts = [json.loads(m).get("message", m) for m in json.loads(messages)]
            return "; ".join(str(t) for t in texts)
        except (ValueError, AttributeError):
            return messages
    for key in ("message", "exception", "error_description", "detail", "error"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return None


def _jsonable(value: Any) -> Any:
    """Decimals as JSON numbers (ERPs expect numbers); dates ISO."""
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        integral = isinstance(exponent, int) and exponent >= 0
        return int(value) if integral else float(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def _hash_of(key: Any) -> str | None:
    """The content hash inside an idempotency key (``<hash>`` or ``<hash>:<status>``)."""
    if not isinstance(key, str):
        return None
    head = key.split(":", 1)[0]
    return head if _HEX64.match(head) else None


def _number_of(identity: str | None) -> str | None:
    return identity.rsplit(":", 1)[-1] if identity else None


def _date(value: Any) -> date | None:
    if not value:
        return None
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


# ---------------------------------------------------------------------------------------------------
# The connector
# ---------------------------------------------------------------------------------------------------
class ErpRestConnector(Sink, Inventory):
    """A REST ERP: deliver invoices exactly once (search, then create) and list what it holds."""

    wants_documents = False  # sends the invoice's data, not its files

    type_name = "erp.rest"
    Settings = ErpRestSettings
    #: Chinese invoices and their red-letter reversals are what every preset books as is (the Odoo
    #: preset books a line on the sale tax of its rate, and a rate the ERP has no tax for is refused).
    capabilities = Capabilities(formats=frozenset({"cn"}), red_letter=True)

    def __init__(self, settings: ErpRestSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self.settings: ErpRestSettings = settings
        headers = {"Accept": "application/json", "User-Agent": "invoice-hub erp.rest"}
        headers.update(settings.headers)
        auth = settings.auth
        httpx_auth: httpx.Auth | None = None
        if isinstance(auth, BearerAuth):
            headers["Authorization"] = f"bearer {auth.token.get_secret_value()}"
        elif isinstance(auth, TokenAuth):
            headers["Authorization"] = f"token {auth.key}:{auth.secret.get_secret_value()}"
        elif isinstance(auth, BasicAuth):
            httpx_auth = httpx.BasicAuth(auth.username, auth.password.get_secret_value())
        if settings.preset == "odoo" and settings.odoo and settings.odoo.database:
            headers["X-Odoo-Database"] = settings.odoo.database
        self._oauth = _OAuth2Token(auth) if isinstance(auth, OAuth2Auth) else None
        self._client = httpx.Client(
            base_url=settings.base_url,
            headers=headers,
            auth=httpx_auth,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(
                max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
            ),
            verify=settings.verify_tls,
        )
        self._cache: dict[tuple[str, str], Any] = {}
        self._cache_lock = threading.RLock()
        self._key_locks = [threading.Lock() for _ in range(64)]
        if settings.preset == "odoo":
            self._preset: _Preset = _Odoo(self)
        elif settings.preset == "erpnext":
            self._preset = _ErpNext(self)
        else:
            self._preset = _Generic(self)

    # -- plumbing -----------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request (auth applied, errors translated) and return the decoded JSON body."""
        if self._oauth is not None:
            headers = dict(kwargs.pop("headers", None) or {})
            headers["Authorization"] = f"Bearer {self._oauth.get(self._client)}"
            kwargs["headers"] = headers
        if "json" in kwargs:
            kwargs["json"] = _jsonable(kwargs["json"])
        try:
            response = _send(self._client, method, path, **kwargs)
        except PermanentError as exc:
            if self._oauth is not None and exc.remote_status == 401:
                self._oauth.forget()  # expired or revoked early: the next attempt fetches a new token
                raise TransientError(str(exc), remote_status=401, remote_body=exc.remote_body) from exc
            raise
        if not response.content:
            return None
        try:
            return response.json(parse_float=Decimal)
        except ValueError as exc:
            raise PermanentError(
                f"{method} {path}: the ERP answered {response.headers.get('content-type')}, not JSON",
                remote_status=response.status_code,
                remote_body=_body_text(response),
            ) from exc

    def cached(self, kind: str, key: str, load: Any) -> Any:
        """Look-ups that do not change (tax ids, currency ids, partners) once per connector.

        One look-up at a time, so two worker threads delivering for the same new customer do not both
        find nothing and both create it."""
        with self._cache_lock:
            if (kind, key) in self._cache:
                return self._cache[(kind, key)]
            value = load()
            if value is not None:
                self._cache[(kind, key)] = value
            return value

    @property
    def token_fetches(self) -> int:
        """How many OAuth2 tokens this connector fetched (0 without OAuth2)."""
        return self._oauth.fetches if self._oauth else 0

    def close(self) -> None:
        self._client.close()

    # -- roles --------------------------------------------------------------------------------------
    def health(self) -> Health:
        try:
            detail = self._preset.health()
        except (TransientError, PermanentError) as exc:
            return Health(False, f"{self.settings.base_url}: {exc}")
        return Health(True, f"{self.settings.base_url}: {detail}")

    def deliver(self, request: DeliveryRequest) -> Receipt:
        # Search-then-create is only safe when nobody else creates the same key in between: within this
        # process, deliveries of one key take turns (the hub's delivery lease covers other processes).
        lock = self._key_locks[hash(request.idempotency_key) % len(self._key_locks)]
        with lock:
            if request.event.type == "invoice.status_changed":
                receipt = self._preset.status_changed(request)
            else:
                existing = self._preset.find(request.idempotency_key)
                if existing is not None:
                    receipt = self._preset.resume(existing, request)
                    receipt.detail.setdefault("created", False)
                else:
                    receipt = self._preset.create(request)
                    receipt.detail.setdefault("created", True)
        self.log.info(
            "erp_rest_delivered",
            preset=self.settings.preset,
            identity=request.invoice.identity,
            remote_ref=receipt.remote_ref,
            **{k: v for k, v in receipt.detail.items() if isinstance(v, str | int | bool)},
        )
        return receipt

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        return self._preset.inventory(since, until)


# ---------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------
class _Preset:
    def __init__(self, connector: ErpRestConnector) -> None:
        self.c = connector
        self.settings = connector.settings

    def health(self) -> str:
        raise NotImplementedError

    def find(self, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def create(self, request: DeliveryRequest) -> Receipt:
        raise NotImplementedError

    def resume(self, record: dict[str, Any], request: DeliveryRequest) -> Receipt:
        """The record exists already (a retry): finish what the first attempt may not have."""
        raise NotImplementedError

    def status_changed(self, request: DeliveryRequest) -> Receipt:
        raise NotImplementedError

    def inventory(self, since: date | None, until: date | None) -> Iterator[InventoryItem]:
        raise NotImplementedError


def _is_refund(invoice: Invoice) -> bool:
    return invoice.kind is InvoiceKind.CREDIT_NOTE or invoice.is_red_letter or invoice.totals.gross < 0


def _reversed_identity(invoice: Invoice) -> str | None:
    """The identity of the invoice a red-letter invoice reverses (same identity scheme)."""
    if not invoice.reverses:
        return None
    if invoice.kind.is_cn_digital:
        return f"CN:{invoice.reverses}"
    if invoice.kind.is_cn_legacy:
        return f"CN:{invoice.code}:{invoice.reverses}"
    return f"{invoice.country}:{invoice.seller.tax_id or '-'}:INV:{invoice.reverses}"


class _Odoo(_Preset):
    """Odoo 19 JSON-2: ``POST /json/2/<model>/<method>`` with the method's parameters as a JSON object."""

    MODEL = "account.move"
    FIELDS = (
        "id",
        "name",
        "move_type",
        "state",
        "invoice_date",
        "amount_untaxed",
        "amount_tax",
        "amount_total",
        "currency_id",
        "partner_id",
        "write_date",
    )

    @property
    def opts(self) -> OdooOptions:
        assert self.settings.odoo is not None
        return self.settings.odoo

    def call(self, model: str, method: str, **params: Any) -> Any:
        if self.opts.context:
            params.setdefault("context", self.opts.context)
        return self.c.request("POST", f"/json/2/{model}/{method}", json=params)

    def health(self) -> str:
        count = self.call(
            self.MODEL, "search_count", domain=[["move_type", "in", ["out_invoice", "out_refund"]]]
        )
        return f"odoo ok, {count} customer invoices"

    def _fields(self) -> list[str]:
        return [*self.FIELDS, self.opts.key_field, self.opts.identity_field]

    def find(self, key: str) -> dict[str, Any] | None:
        records = self.call(
            self.MODEL,
            "search_read",
            domain=[[self.opts.key_field, "=", key], ["move_type", "in", ["out_invoice", "out_refund"]]],
            fields=self._fields(),
            limit=1,
        )
        return records[0] if records else None

    def _by_identity(self, identity: str, move_type: str | None = None) -> dict[str, Any] | None:
        domain: list[Any] = [[self.opts.identity_field, "=", identity]]
        domain.append(
            ["move_type", "=", move_type] if move_type else ["move_type", "in", ["out_invoice", "out_refund"]]
        )
        records = self.call(
            self.MODEL, "search_read", domain=domain, fields=self._fields(), limit=1, order="id desc"
        )
        return records[0] if records else None

    def _partner(self, invoice: Invoice) -> int:
        buyer = invoice.buyer
        lookup = buyer.tax_id or buyer.name

        def load() -> int:
            field = "vat" if buyer.tax_id else "name"
            found = self.call(
                "res.partner", "search_read", domain=[[field, "=", lookup]], fields=["id"], limit=1
            )
            if found:
                return int(found[0]["id"])
            vals = {"name": buyer.name, "vat": buyer.tax_id, "is_company": True}
            if buyer.address:
                vals["street"] = buyer.address
            ids = self.call("res.partner", "create", vals_list=[vals])
            return int(ids[0])

        return int(self.c.cached("partner", lookup, load))

    def _currency(self, code: str) -> int:
        def load() -> int | None:
            found = self.call(
                "res.currency", "search_read", domain=[["name", "=", code]], fields=["id"], limit=1
            )
            return int(found[0]["id"]) if found else None

        currency = self.c.cached("currency", code, load)
        if currency is None:
            raise PermanentError(f"Odoo has no currency {code!r} (res.currency)", code="currency")
        return int(currency)

    def _tax(self, rate: Decimal) -> int:
        percent = rate * 100

        def load() -> int | None:
            found = self.call(
                "account.tax",
                "search_read",
                domain=[
                    ["type_tax_use", "=", "sale"],
                    ["amount_type", "=", "percent"],
                    ["amount", "=", percent],
                ],
                fields=["id", "amount"],
                limit=1,
            )
            return int(found[0]["id"]) if found else None

        tax = self.c.cached("tax", str(percent.normalize()), load)
        if tax is None:
            raise PermanentError(
                f"Odoo has no sale tax of {format(percent.normalize(), 'f')}% (account.tax, percent)",
                code="tax",
            )
        return int(tax)

    def create(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        refund = _is_refund(invoice)
        lines = []
        for line in invoice.lines:
            quantity = abs(line.quantity) if line.quantity else Decimal(1)
            price = abs(line.unit_price) if line.unit_price is not None else abs(line.amount) / quantity
            vals: dict[str, Any] = {"name": line.name, "quantity": quantity, "price_unit": price}
            vals["tax_ids"] = (
                [[6, 0, [self._tax(line.tax_rate)]]] if line.tax_rate is not None else [[6, 0, []]]
            )
            lines.append([0, 0, vals])
        move: dict[str, Any] = {
            "move_type": "out_refund" if refund else "out_invoice",
            "partner_id": self._partner(invoice),
            "invoice_date": invoice.issue_date,
            "currency_id": self._currency(invoice.currency),
            self.opts.key_field: request.idempotency_key,
            self.opts.identity_field: invoice.identity,
            "invoice_line_ids": lines,
        }
        if self.opts.journal_id is not None:
            move["journal_id"] = self.opts.journal_id
        original = _reversed_identity(invoice)
        if refund and original:
            found = self._by_identity(original, "out_invoice")
            if found:
                move["reversed_entry_id"] = found["id"]
        ids = self.call(self.MODEL, "create", vals_list=[move])
        move_id = int(ids[0])
        detail: dict[str, Any] = {"move_id": move_id, "move_type": move["move_type"]}
        if self.opts.post:
            try:
                self.call(self.MODEL, "action_post", ids=[move_id])
            except PermanentError:
                # Odoo refused to post it: remove the draft, so the books hold nothing half-done and a
                # replay of the dead letter starts clean.
                try:
                    self.call(self.MODEL, "unlink", ids=[move_id])
                except (PermanentError, TransientError) as exc:
                    self.c.log.warning("odoo_draft_left", move_id=move_id, error=str(exc))
                raise
            detail["state"] = "posted"
        return Receipt(remote_ref=str(move_id), detail=detail)

    def resume(self, record: dict[str, Any], request: DeliveryRequest) -> Receipt:
        detail: dict[str, Any] = {"move_id": record["id"], "state": record.get("state")}
        if self.opts.post and record.get("state") == "draft":
            self.call(self.MODEL, "action_post", ids=[record["id"]])
            detail["state"] = "posted"
        return Receipt(remote_ref=str(record["id"]), detail=detail)

    def status_changed(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        record = self._by_identity(invoice.identity)
        if record is None:
            raise PermanentError(
                f"Odoo holds no account.move with {self.opts.identity_field} = {invoice.identity}",
                code="not_found",
            )
        detail: dict[str, Any] = {"move_id": record["id"], "status": invoice.status.value}
        if invoice.status is InvoiceStatus.VOID and record.get("state") != "cancel":
            if record.get("state") == "posted":
                self.call(self.MODEL, "button_draft", ids=[record["id"]])
            self.call(self.MODEL, "button_cancel", ids=[record["id"]])
            detail["state"] = "cancel"
        else:
            # Red-lettering reaches Odoo as its own credit note (out_refund with reversed_entry_id).
            detail["state"] = record.get("state")
        return Receipt(remote_ref=str(record["id"]), detail=detail)

    def inventory(self, since: date | None, until: date | None) -> Iterator[InventoryItem]:
        domain: list[Any] = [["move_type", "in", ["out_invoice", "out_refund"]], ["state", "!=", "cancel"]]
        if since:
            domain.append(["invoice_date", ">=", since.isoformat()])
        if until:
            domain.append(["invoice_date", "<=", until.isoformat()])
        offset = 0
        size = self.opts.page_size
        while True:
            page = self.call(
                self.MODEL,
                "search_read",
                domain=domain,
                fields=self._fields(),
                offset=offset,
                limit=size,
                order="id",
            )
            for record in page:
                identity = record.get(self.opts.identity_field) or f"odoo:{record['name']}"
                total = _money(record.get("amount_total"))
                if total is not None and record.get("move_type") == "out_refund":
                    total = -total
                currency = record.get("currency_id")
                yield InventoryItem(
                    identity=identity,
                    content_hash=_hash_of(record.get(self.opts.key_field)),
                    issue_date=_date(record.get("invoice_date")),
                    gross=total,
                    currency=currency[1] if isinstance(currency, list) and len(currency) > 1 else None,
                    number=_number_of(record.get(self.opts.identity_field)),
                    remote_ref=str(record["id"]),
                )
            if len(page) < size:
                return
            offset += size


class _ErpNext(_Preset):
    """ERPNext / Frappe REST: ``/api/resource/<DocType>`` (list, get, insert) and ``/api/method/...``."""

    DOCTYPE = "Sales Invoice"
    FIELDS = (
        "name",
        "docstatus",
        "is_return",
        "return_against",
        "posting_date",
        "customer",
        "tax_id",
        "currency",
        "net_total",
        "total_taxes_and_charges",
        "grand_total",
    )

    @property
    def opts(self) -> ErpNextOptions:
        assert self.settings.erpnext is not None
        return self.settings.erpnext

    def _list(
        self,
        doctype: str,
        filters: list[Any],
        fields: list[str],
        start: int = 0,
        length: int = 20,
        order: str = "",
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "fields": json.dumps(fields),
            "filters": json.dumps(filters),
            "limit_start": start,
            "limit_page_length": length,
        }
        if order:
            params["order_by"] = order
        body = self.c.request("GET", f"/api/resource/{doctype}", params=params)
        return list(body.get("data") or [])

    def _fields(self) -> list[str]:
        return [*self.FIELDS, self.opts.key_field, self.opts.identity_field]

    def health(self) -> str:
        self._list(self.DOCTYPE, [], ["name"], length=1)
        return "erpnext ok"

    def find(self, key: str) -> dict[str, Any] | None:
        found = self._list(self.DOCTYPE, [[self.opts.key_field, "=", key]], self._fields(), length=1)
        return found[0] if found else None

    def _customer(self, invoice: Invoice) -> str:
        buyer = invoice.buyer
        lookup = buyer.tax_id or buyer.name

        def load() -> str:
            field = "tax_id" if buyer.tax_id else "customer_name"
            found = self._list("Customer", [[field, "=", lookup]], ["name"], length=1)
            if found:
                return str(found[0]["name"])
            doc: dict[str, Any] = {
                "customer_name": buyer.name,
                "customer_type": "Company",
                "tax_id": buyer.tax_id,
            }
            if self.opts.customer_group:
                doc["customer_group"] = self.opts.customer_group
            if self.opts.territory:
                doc["territory"] = self.opts.territory
            try:
                created = self.c.request("POST", "/api/resource/Customer", json=doc)
            except PermanentError as exc:
                if exc.remote_status != 409:
                    raise
                # A customer of that name exists without this tax id: book on it.
                named = self._list("Customer", [["customer_name", "=", buyer.name]], ["name"], length=1)
                if not named:
                    raise
                return str(named[0]["name"])
            return str(created["data"]["name"])

        return str(self.c.cached("customer", lookup, load))

    def create(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        refund = _is_refund(invoice)
        items = []
        for line in invoice.lines:
            quantity = abs(line.quantity) if line.quantity else Decimal(1)
            rate = abs(line.unit_price) if line.unit_price is not None else abs(line.amount) / quantity
            if line.amount < 0:
                quantity = -quantity  # ERPNext returns carry negative quantities
            items.append(
                {
                    "item_code": self.opts.item_code,
                    "item_name": line.name[:140],
                    "description": line.name,
                    "qty": quantity,
                    "rate": rate,
                    "amount": line.amount,
                }
            )
        taxes: dict[str, Decimal] = {}
        for line in invoice.lines:
            if line.tax_rate is not None and line.tax_amount is not None:
                label = format((line.tax_rate * 100).normalize(), "f")
                taxes[label] = taxes.get(label, Decimal(0)) + line.tax_amount
        if not invoice.lines and invoice.totals.tax:
            taxes["VAT"] = invoice.totals.tax
        doc: dict[str, Any] = {
            "customer": self._customer(invoice),
            "posting_date": invoice.issue_date,
            "set_posting_time": 1,
            "due_date": invoice.issue_date,
            "currency": invoice.currency,
            "tax_id": invoice.buyer.tax_id,
            self.opts.key_field: request.idempotency_key,
            self.opts.identity_field: invoice.identity,
            "is_return": 1 if refund else 0,
            "items": items,
            "taxes": [
                {
                    "charge_type": "Actual",
                    "account_head": self.opts.tax_account,
                    "description": f"VAT {label}%" if label != "VAT" else "VAT",
                    "tax_amount": amount,
                }
                for label, amount in taxes.items()
            ],
            "docstatus": 1 if self.opts.submit else 0,
        }
        if self.opts.company:
            doc["company"] = self.opts.company
        original = _reversed_identity(invoice)
        if refund and original:
            found = self._list(
                self.DOCTYPE,
                [[self.opts.identity_field, "=", original], ["is_return", "=", 0]],
                ["name"],
                length=1,
            )
            if found:
                doc["return_against"] = found[0]["name"]
        doc = {k: v for k, v in doc.items() if v is not None}
        created = self.c.request("POST", f"/api/resource/{self.DOCTYPE}", json=doc)["data"]
        return Receipt(
            remote_ref=str(created["name"]),
            detail={
                "name": created["name"],
                "docstatus": created.get("docstatus"),
                "is_return": doc["is_return"],
            },
        )

    def resume(self, record: dict[str, Any], request: DeliveryRequest) -> Receipt:
        detail: dict[str, Any] = {"name": record["name"], "docstatus": record.get("docstatus")}
        if self.opts.submit and record.get("docstatus") == 0:
            self.c.request(
                "POST", "/api/method/frappe.client.submit", json={"doc": {"doctype": self.DOCTYPE, **record}}
            )
            detail["docstatus"] = 1
        return Receipt(remote_ref=str(record["name"]), detail=detail)

    def status_changed(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        found = self._list(
            self.DOCTYPE, [[self.opts.identity_field, "=", invoice.identity]], self._fields(), length=1
        )
        if not found:
            raise PermanentError(
                f"ERPNext holds no Sales Invoice with {self.opts.identity_field} = {invoice.identity}",
                code="DoesNotExistError",
            )
        record = found[0]
        detail: dict[str, Any] = {"name": record["name"], "status": invoice.status.value}
        if invoice.status is InvoiceStatus.VOID and record.get("docstatus") == 1:
            self.c.request(
                "POST",
                "/api/method/frappe.client.cancel",
                json={"doctype": self.DOCTYPE, "name": record["name"]},
            )
            detail["docstatus"] = 2
        else:
            detail["docstatus"] = record.get("docstatus")
        return Receipt(remote_ref=str(record["name"]), detail=detail)

    def inventory(self, since: date | None, until: date | None) -> Iterator[InventoryItem]:
        filters: list[Any] = [["docstatus", "!=", 2]]
        if since:
            filters.append(["posting_date", ">=", since.isoformat()])
        if until:
            filters.append(["posting_date", "<=", until.isoformat()])
        start = 0
        size = self.opts.page_size
        while True:
            page = self._list(self.DOCTYPE, filters, self._fields(), start, size, order="creation asc")
            for record in page:
                identity = record.get(self.opts.identity_field) or f"erpnext:{record['name']}"
                yield InventoryItem(
                    identity=identity,
                    content_hash=_hash_of(record.get(self.opts.key_field)),
                    issue_date=_date(record.get("posting_date")),
                    gross=_money(record.get("grand_total")),
                    currency=record.get("currency"),
                    buyer_tax_id=record.get("tax_id"),
                    number=_number_of(record.get(self.opts.identity_field)),
                    remote_ref=str(record["name"]),
                )
            if len(page) < size:
                return
            start += size


class _Generic(_Preset):
    """Any REST ERP, described in hub.yaml: search by key, create from the field mapping, list pages."""

    @property
    def api(self) -> GenericApi:
        assert self.settings.api is not None
        return self.settings.api

    def health(self) -> str:
        self._page(0, 1, None, None)
        return "ok"

    def _items(self, body: Any) -> list[dict[str, Any]]:
        items = mapping.get_path(body, self.api.items_path) if self.api.items_path else body
        if not isinstance(items, list):
            raise PermanentError(
                f"the ERP's answer has no list at {self.api.items_path or '(body)'}",
                remote_body=str(body)[:2000],
            )
        return items

    def find(self, key: str) -> dict[str, Any] | None:
        body = self.c.request("GET", self.api.search_path, params={self.api.search_param: key})
        items = self._items(body)
        key_path = next((erp for erp, src in self.api.fields.items() if src == "idempotency_key"), None)
        for item in items:
            if key_path is None or mapping.get_path(item, key_path) == key:
                return item
        return None

    def _value(self, source: str, invoice: Invoice, key: str, line: Any = None) -> Any:
        if source.startswith("="):
            return source[1:]
        if line is not None:
            value = mapping.get_path(line, source)
        else:
            value = mapping.invoice_value(invoice, source, idempotency_key=key)
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    def body(self, request: DeliveryRequest) -> dict[str, Any]:
        invoice = request.invoice
        key = request.idempotency_key
        body: dict[str, Any] = {}
        for erp_path, source in self.api.fields.items():
            value = self._value(source, invoice, key)
            if value is not None:
                mapping.set_path(body, erp_path, value)
        if self.api.lines_path:
            lines = []
            for line in invoice.lines:
                item: dict[str, Any] = {}
                for erp_path, source in self.api.line_fields.items():
                    value = self._value(source, invoice, key, line=line)
                    if value is not None:
                        mapping.set_path(item, erp_path, value)
                lines.append(item)
            mapping.set_path(body, self.api.lines_path, lines)
        return body

    def create(self, request: DeliveryRequest) -> Receipt:
        answer = self.c.request(self.api.create_method, self.api.create_path, json=self.body(request))
        record = mapping.get_path(answer, self.api.record_path) if self.api.record_path else answer
        ref = mapping.get_path(record, self.api.id_path) if isinstance(record, dict) else None
        return Receipt(remote_ref=None if ref is None else str(ref), detail={"id": ref})

    def resume(self, record: dict[str, Any], request: DeliveryRequest) -> Receipt:
        ref = mapping.get_path(record, self.api.id_path)
        return Receipt(remote_ref=None if ref is None else str(ref), detail={"id": ref})

    def status_changed(self, request: DeliveryRequest) -> Receipt:
        # A generic ERP learns a status change as a record of its own (the key carries the status).
        existing = self.find(request.idempotency_key)
        if existing is not None:
            return self.resume(existing, request)
        return self.create(request)

    def _page(
        self, number: int, size: int, since: date | None, until: date | None, cursor: str | None = None
    ) -> Any:
        p = self.api.pagination
        params: dict[str, Any] = {}
        if self.api.since_param and since:
            params[self.api.since_param] = since.isoformat()
        if self.api.until_param and until:
            params[self.api.until_param] = until.isoformat()
        if p.style != "none":
            params[p.size_param] = size
        if p.style == "page":
            params[p.page_param] = p.first_page + number
        elif p.style == "offset":
            params[p.offset_param] = number * size
        elif p.style == "cursor" and cursor:
            params[p.cursor_param] = cursor
        return self.c.request("GET", self.api.list_path, params=params)

    def inventory(self, since: date | None, until: date | None) -> Iterator[InventoryItem]:
        p = self.api.pagination
        number = 0
        cursor: str | None = None
        while True:
            body = self._page(number, p.size, since, until, cursor)
            items = self._items(body)
            for record in items:
                yield self._item(record)
            if p.style == "none":
                return
            if p.style == "cursor":
                nxt = mapping.get_path(body, p.next_cursor_path)
                if not nxt or not items:
                    return
                cursor = str(nxt)
            elif len(items) < p.size:
                return
            number += 1

    def _item(self, record: dict[str, Any]) -> InventoryItem:
        f = self.api.inventory_fields
        values = {name: mapping.get_path(record, path) for name, path in f.items()}
        return InventoryItem(
            identity=str(values["identity"]),
            content_hash=_hash_of(values.get("content_hash")),
            issue_date=_date(values.get("issue_date")),
            gross=_money(values.get("gross")),
            currency=values.get("currency"),
            seller_tax_id=values.get("seller_tax_id"),
            buyer_tax_id=values.get("buyer_tax_id"),
            number=values.get("number"),
            remote_ref=str(values.get("remote_ref") or mapping.get_path(record, self.api.id_path) or "")
            or None,
        )


@hookimpl
def hub_register_connector_types() -> list[type[ErpRestConnector]]:
    return [ErpRestConnector]
