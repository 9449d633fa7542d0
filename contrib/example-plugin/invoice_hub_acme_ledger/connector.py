"""The Acme Ledger connector: a sink (create invoices through the Acme Ledger API), inventory (list
what the ledger holds, for ``hub reconcile``) and health (for ``hub check``).

The seam: httpx exceptions and HTTP statuses are translated here into ``hub.errors`` classes, and the
hub decides retry or dead letter from the class — nothing here sleeps or retries:

* connection refused, DNS, time-outs, 5xx → ``TransientError``
* 429 → ``RateLimited(retry_after=<Retry-After>)``
* 400/401/403/404/409/422 → ``PermanentError(code=<Acme's error code>, remote_body=...)``

The hub's idempotency key goes out as the ``Idempotency-Key`` header, which Acme Ledger honours: a
retry after a time-out returns the record created the first time instead of a second one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import structlog
from hub import (
    Capabilities,
    ConnectorContext,
    ConnectorSettings,
    DeliveryRequest,
    Health,
    Inventory,
    InventoryItem,
    PermanentError,
    RateLimited,
    Receipt,
    Sink,
    TransientError,
)
from pydantic import Field, HttpUrl, SecretStr

log = structlog.get_logger()


class AcmeLedgerSettings(ConnectorSettings):
    """``connectors.<name>.settings`` in hub.yaml; unknown keys are errors naming the YAML path."""

    #: The API's base URL, e.g. https://api.acme-ledger.example
    base_url: HttpUrl
    #: The API token: a SecretStr, never logged or printed. In hub.yaml: "${ACME_LEDGER_TOKEN}".
    token: SecretStr
    #: Seconds to wait for the API (connect and read).
    timeout: float = Field(10.0, gt=0, le=300)


class AcmeLedger(Sink, Inventory):
    type_name: ClassVar[str] = "acme.ledger"
    Settings = AcmeLedgerSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        roles=frozenset({"sink", "inventory", "health"}),
        formats=frozenset(),  # every invoice kind
        red_letter=True,
        idempotency_key=True,
    )
    settings: AcmeLedgerSettings

    def __init__(self, settings: AcmeLedgerSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self.client = httpx.Client(
            base_url=str(settings.base_url).rstrip("/"),
            timeout=settings.timeout,
            headers={"Authorization": f"Bearer {settings.token.get_secret_value()}"},
        )

    def close(self) -> None:
        self.client.close()

    # -- the seam -----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransientError(f"Acme Ledger did not answer in {self.settings.timeout}s") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"cannot reach Acme Ledger: {type(exc).__name__}") from exc
        if response.status_code < 400:
            return response
        code, message = _error(response)
        if response.status_code == 429:
            raise RateLimited(
                f"Acme Ledger rate limit: {message}",
                retry_after=_retry_after(response),
                remote_status=429,
            )
        if response.status_code >= 500:
            raise TransientError(
                f"Acme Ledger {response.status_code}: {message}",
                remote_status=response.status_code,
                remote_body=response.text[:2000],
            )
        raise PermanentError(
            f"Acme Ledger refused: {message}",
            code=code,
            remote_status=response.status_code,
            remote_body=response.text[:2000],
        )

    # -- sink ---------------------------------------------------------------------------------------
    def deliver(self, request: DeliveryRequest) -> Receipt:
        invoice = request.invoice
        body = {
            "event": request.event.type,
            "identity": request.event.identity,
            "content_hash": request.event.content_hash,
            "kind": invoice.kind.value,
            "number": invoice.number,
            "code": invoice.code,
            "issue_date": invoice.issue_date.isoformat(),
            "currency": invoice.currency,
            "net": format(invoice.totals.net, "f"),
            "tax": format(invoice.totals.tax, "f"),
            "gross": format(invoice.totals.gross, "f"),
            "seller_tax_id": invoice.seller.tax_id,
            "buyer_tax_id": invoice.buyer.tax_id,
            "status": invoice.status.value,
            "reverses": invoice.reverses,
            "amends": request.amends,
            "documents": [
                {"sha256": d.sha256, "filename": d.filename, "media_type": d.media_type, "size": d.size}
                for d in request.documents
            ],
        }
        response = self._call(
            "POST", "/v1/invoices", json=body, headers={"Idempotency-Key": request.idempotency_key}
        )
        record = response.json()
        replayed = response.status_code == 200
        log.info("acme_ledger_invoice_stored", remote_id=record["id"], replayed=replayed)
        return Receipt(remote_ref=record["id"], detail={"replayed": replayed})

    # -- inventory ----------------------------------------------------------------------------------
    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        params: dict[str, str] = {}
        if since:
            params["issued_from"] = since.isoformat()
        if until:
            params["issued_to"] = until.isoformat()
        cursor: str | None = None
        while True:
            page = self._call(
                "GET", "/v1/invoices", params={**params, **({"cursor": cursor} if cursor else {})}
            )
            data = page.json()
            for r in data["items"]:
                if r["event"] != "invoice.received":
                    continue  # a status change updates an invoice; it is not an invoice of its own
                yield InventoryItem(
                    identity=r["identity"],
                    content_hash=r["content_hash"],
                    issue_date=date.fromisoformat(r["issue_date"]),
                    gross=Decimal(r["gross"]),
                    currency=r["currency"],
                    seller_tax_id=r["seller_tax_id"],
                    buyer_tax_id=r["buyer_tax_id"],
                    number=r["number"],
                    remote_ref=r["id"],
                )
            cursor = data.get("next")
            if not cursor:
                return

    # -- health -------------------------------------------------------------------------------------
    def health(self) -> Health:
        try:
            self._call("GET", "/health")
        except (TransientError, PermanentError) as exc:
            return Health(False, str(exc))
        return Health(True, f"Acme Ledger reachable at {self.settings.base_url}")


def _error(response: httpx.Response) -> tuple[str | None, str]:
    try:
        err = response.json().get("error") or {}
    except ValueError:
        return None, f"HTTP {response.status_code}"
    return err.get("code"), f"{err.get('code')}: {err.get('message')}"


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (the HTTP-date form is not used by Acme Ledger); 1 s when absent."""
    try:
        return max(float(response.headers.get("retry-after", "1")), 0.0) or 1.0
    except ValueError:
        return 1.0
