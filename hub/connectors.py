"""Connector base classes: the contract between the hub and every connector plugin.

A connector is one class with a ``type_name`` (``archive.fs``, ``email.imap``...), a ``Settings``
pydantic model (validated with the YAML path on error) and the roles it implements:

* **source** (``Source``): ``poll(checkpoint)`` yields ``Incoming`` items (documents plus the checkpoint
  after them); ``commit(incoming, outcome)`` is called only after their outcome is in the ledger (move a
  file to ``done/``, an IMAP message to ``processed``).
* **sink** (``Sink``): ``deliver(request) -> Receipt``; must treat ``request.idempotency_key`` as the
  key of a record that may exist already (a retry after an unclear outcome).
* **inventory** (``Inventory``): ``inventory(since, until)`` streams what the system holds.
* **health**: ``health()`` for ``hub check`` (every connector has a default).

Connectors raise ``hub.errors`` classes only (translate third-party exceptions at the seam); only the
worker decides retry, dead letter and ack, so a connector never sleeps and retries on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import structlog
from pydantic import BaseModel, ConfigDict

from hub.models import Document, Event, Invoice

#: The hub API version connectors are built against (``Connector.hub_api``); bump the major on breaks.
HUB_API_VERSION = "1.0"


class ConnectorSettings(BaseModel):
    """Base for every connector's settings model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ConnectorContext:
    """What the hub hands a connector: its name, a data folder, a logger and the HTTP client factory."""

    name: str
    data_dir: Path
    log: Any = field(default_factory=lambda: structlog.get_logger())
    http_client: Callable[..., Any] | None = None
    #: Read a document's bytes from the ledger by sha256 (for sinks that archive originals).
    load_document: Callable[[str], Document | None] | None = None


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What a connector declares it can do; the conformance kit tests what is declared."""

    roles: frozenset[str] = frozenset()
    formats: frozenset[str] = frozenset()
    red_letter: bool = False
    idempotency_key: bool = True


class Connector:
    """Base of all connectors. Subclasses set ``type_name`` and ``Settings``."""

    type_name: ClassVar[str] = ""
    Settings: ClassVar[type[ConnectorSettings]] = ConnectorSettings
    hub_api: ClassVar[str] = HUB_API_VERSION
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, settings: ConnectorSettings, context: ConnectorContext) -> None:
        self.settings = settings
        self.context = context
        self.name = context.name
        self.log = context.log.bind(connector=context.name)

    @classmethod
    def roles(cls) -> frozenset[str]:
        found = {role for role, base in _ROLE_BASES.items() if issubclass(cls, base)}
        return frozenset(found | set(cls.capabilities.roles))

    def health(self) -> Health:
        return Health(True, "no health check")

    def close(self) -> None:
        """Release clients, files and connections. Called once when the hub stops."""

    def __enter__(self) -> Connector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------------------------------
@dataclass
class Incoming:
    """A unit a source hands in: documents that belong together (a mail and its attachments)."""

    documents: list[Document]
    #: The source's own key for this unit (file path, Message-ID), for logs and idempotency.
    key: str
    #: The checkpoint to store once this unit's outcome is in the ledger (None: keep the old one).
    checkpoint: str | None = None
    #: Invoices the source already holds as data (an ERP row), skipping the parsers.
    invoices: list[tuple[Invoice, Document | None]] = field(default_factory=list)
    #: Anything the source needs back in ``commit`` (a UID, a row id).
    handle: Any = None


@dataclass
class IntakeOutcome:
    """What intake made of one ``Incoming``: the source decides from it where the item goes."""

    accepted: int = 0  # invoices recorded (new versions, duplicates and amendments)
    duplicates: int = 0
    amendments: int = 0  # new content for an identity already known
    dead_letters: int = 0
    identities: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when at least one invoice came out of it (the rest, if any, are dead letters)."""
        return self.accepted > 0


class Source(Connector):
    """A connector that brings documents in."""

    #: Seconds between polls when ``poll`` returned nothing.
    poll_interval: float = 1.0

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        raise NotImplementedError(f"{type(self).__name__} is a source but does not implement poll()")

    def commit(self, incoming: Incoming, outcome: IntakeOutcome) -> None:
        """Called after ``incoming``'s outcome is in the ledger. Default: nothing to do."""


# ---------------------------------------------------------------------------------------------------
# Sink
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InvoiceSummary:
    """The few facts of an invoice most sinks need (who, which, when, how much), without the whole
    invoice. When the worker makes a request from the ledger these come from the version's columns,
    so a sink that needs no more (a recorder, a notifier) never pays for validating the stored invoice
    again; ``status`` is the event's (a status change's new status)."""

    identity: str
    content_hash: str
    kind: str
    number: str
    code: str | None
    status: str
    issue_date: date
    gross: Decimal
    currency: str
    seller_tax_id: str | None
    buyer_tax_id: str | None

    @classmethod
    def of(cls, invoice: Invoice, content_hash: str) -> InvoiceSummary:
        return cls(
            identity=invoice.identity,
            content_hash=content_hash,
            kind=invoice.kind.value,
            number=invoice.number,
            code=invoice.code,
            status=invoice.status.value,
            issue_date=invoice.issue_date,
            gross=invoice.totals.gross,
            currency=invoice.currency,
            seller_tax_id=invoice.seller.tax_id,
            buyer_tax_id=invoice.buyer.tax_id,
        )

    @classmethod
    def from_columns(cls, version: Mapping[str, Any], *, status: str | None = None) -> InvoiceSummary:
        """From an ``invoice_versions`` row (its columns are these facts, as intake wrote them from the
        invoice). ``status``: the event's, where it differs from the column, which holds the latest."""
        return cls(
            identity=version["identity"],
            content_hash=version["content_hash"],
            kind=version["kind"],
            number=version["number"],
            code=version["code"],
            status=status or version["status"],
            issue_date=date.fromisoformat(version["issue_date"]),
            gross=Decimal(version["gross"]),
            currency=version["currency"],
            seller_tax_id=version["seller_tax_id"],
            buyer_tax_id=version["buyer_tax_id"],
        )


class DeliveryRequest:
    """One delivery for a sink: the event (with the invoice), where it goes, the key the sink must
    treat as "maybe done already", the attempt, the stored files (``Sink.wants_documents``), the
    version this destination holds of the same identity (``amends``).

    A request the worker makes from the ledger builds ``event`` (and validates its invoice from the
    stored JSON, ~30 µs) on first use; ``summary``, ``invoice_json`` and the other fields cost nothing.
    Vendors and tests pass ``event=`` as before."""

    def __init__(
        self,
        event: Event | None = None,
        destination: str = "",
        idempotency_key: str = "",
        attempt: int = 1,
        documents: list[Document] | None = None,
        #: Set when this destination already holds another version of the same identity.
        amends: str | None = None,
        #: The invoice exactly as the ledger stores it (``Invoice.model_dump_json()``), when the worker
        #: read it from there and it is ``invoice`` unchanged; else None. A sink that stores or sends the
        #: invoice as JSON can use it instead of serialising ``invoice`` again.
        invoice_json: str | None = None,
        *,
        summary: InvoiceSummary | None = None,
        load_event: Callable[[], Event] | None = None,
    ) -> None:
        if event is None and (load_event is None or summary is None):
            raise TypeError("DeliveryRequest needs event=, or load_event= with summary=")
        self._event = event
        self._load_event = load_event
        self._summary = summary
        self.destination = destination
        self.idempotency_key = idempotency_key
        self.attempt = attempt
        self.documents: list[Document] = documents if documents is not None else []
        self.amends = amends
        self.invoice_json = invoice_json

    @property
    def event(self) -> Event:
        if self._event is None:
            assert self._load_event is not None
            self._event = self._load_event()
            self._load_event = None
        return self._event

    @property
    def invoice(self) -> Invoice:
        return self.event.invoice

    @property
    def summary(self) -> InvoiceSummary:
        if self._summary is None:
            event = self.event
            self._summary = InvoiceSummary.of(event.invoice, event.content_hash)
        return self._summary

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.event,
            self.destination,
            self.idempotency_key,
            self.attempt,
            self.documents,
            self.amends,
            self.invoice_json,
        )

    def __eq__(self, other: object) -> bool:
        """Equal when every field is (as when this was a dataclass); builds both events."""
        if not isinstance(other, DeliveryRequest):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: not hashable

    def __repr__(self) -> str:
        return (
            f"DeliveryRequest(destination={self.destination!r}, identity={self.summary.identity!r}, "
            f"idempotency_key={self.idempotency_key!r}, attempt={self.attempt})"
        )


@dataclass
class Receipt:
    """What a sink reports back. ``outputs`` are passed on through intake as if the sink were a source
    (an e-invoice platform's issued invoice with its OFD/PDF goes on to the ERP and the archive)."""

    remote_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    outputs: list[Incoming] = field(default_factory=list)


class Sink(Connector):
    """A connector that invoices are delivered to."""

    #: Whether ``DeliveryRequest.documents`` should carry the invoice's stored files (its raw bytes,
    #: the files beside it, its containers). An archive wants them; a sink that sends the invoice's
    #: data (an ERP, a platform) says False, and the worker does not read them from the ledger.
    wants_documents: bool = True

    def deliver(self, request: DeliveryRequest) -> Receipt:
        raise NotImplementedError(f"{type(self).__name__} is a sink but does not implement deliver()")


# ---------------------------------------------------------------------------------------------------
# Inventory
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InventoryItem:
    identity: str
    content_hash: str | None
    issue_date: date | None = None
    gross: Decimal | None = None
    currency: str | None = None
    seller_tax_id: str | None = None
    buyer_tax_id: str | None = None
    number: str | None = None
    remote_ref: str | None = None


class Inventory(Connector):
    """A connector that can list what its system holds (for ``hub reconcile``)."""

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterable[InventoryItem]:
        raise NotImplementedError(f"{type(self).__name__} declares inventory but does not implement it")


_ROLE_BASES: dict[str, type[Connector]] = {"source": Source, "sink": Sink, "inventory": Inventory}


# ---------------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------------
class Parser:
    """Turns a document into invoices. ``claims`` must be cheap (media type, name, first bytes);
    the first registered parser that claims a document reads it. ``parse`` raises ``ParseError`` with
    a reason a person understands. ``children`` lets container formats (ZIP, e-mail) hand back inner
    documents, which are archived and parsed in their own right."""

    name: ClassVar[str] = ""
    #: Higher runs first; specific readers beat generic ones.
    priority: ClassVar[int] = 0

    def claims(self, document: Document) -> bool:
        raise NotImplementedError

    def parse(self, document: Document) -> ParseResult:
        raise NotImplementedError


@dataclass
class ParseResult:
    invoices: list[Invoice] = field(default_factory=list)
    children: list[Document] = field(default_factory=list)
