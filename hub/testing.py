"""Test helpers for the hub and for connector authors; also a pytest plugin (entry point ``pytest11``).

Three things live here (see docs/plugins.md, "Testing your connector"):

* **The conformance kit**: ``ConnectorContract``, a base test class. Subclass it, set ``connector_type``
  and write one fixture, ``hub_connector_settings``, that returns a callable giving the ``settings``
  mapping (as it would appear in hub.yaml) for a healthy connector or one of the failure modes you
  can simulate (``failure_modes``). Sources also write ``hub_source_feed``. The kit then runs the
  standard contract tests, directly against your class and through a real ``hub.engine.Hub`` (SQLite
  ledger, memory bus, a ``hub.yaml`` in ``tmp_path``), driving it with the golden invoice set
  (``hub.testing_golden``). It tests what your connector declares (``Connector.capabilities`` and its
  role base classes) and skips the rest, saying why.
* **Fakes** in the spirit of ``httpx.MockTransport``: ``mock_sink(handler)`` and ``mock_source(items)``
  build connector classes from a function or a list, to put beside your connector in a hub.
* **HubHarness**: a real hub in a temporary folder, with helpers to read the ledger's outcome.

The pytest plugin provides the fixtures ``hub_golden_set``, ``hub_harness`` and ``hub_connector_factory``
(fresh instances of the class under test, for your own tests) and fallbacks for the two vendor
fixtures that fail with instructions when they are missing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
import sqlalchemy as sa
import structlog
import yaml
from pydantic import BaseModel, SecretStr

from hub.canonical import content_hash
from hub.connectors import (
    HUB_API_VERSION,
    Capabilities,
    Connector,
    ConnectorContext,
    ConnectorSettings,
    DeliveryRequest,
    Health,
    Incoming,
    IntakeOutcome,
    Inventory,
    InventoryItem,
    Parser,
    ParseResult,
    Receipt,
    Sink,
    Source,
)
from hub.errors import ConfigError, PermanentError, RateLimited, TransientError
from hub.models import Document, Event, Invoice, InvoiceStatus
from hub.testing_golden import BANK_ACCOUNTS, GoldenItem, golden_set, status_change

__all__ = [
    "FAILURE_MODES",
    "ConnectorContract",
    "GoldenItem",
    "HubHarness",
    "MockSink",
    "MockSource",
    "connector_plugin",
    "delivery_request",
    "golden_for",
    "golden_set",
    "mock_sink",
    "mock_source",
]

#: The failure modes a ``hub_connector_settings`` callable may be asked for (see ``ConnectorContract``).
FAILURE_MODES = frozenset({"down", "transient", "permanent", "rate_limited"})

#: Settings field names that hold secrets; such a field must be a ``SecretStr``.
_SECRET_NAMES = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key", "credential")
_SECRET_EXACT = {"key", "access_key", "secret_key", "app_key"}


# ---------------------------------------------------------------------------------------------------
# Building requests and picking golden items
# ---------------------------------------------------------------------------------------------------
def delivery_request(
    invoice: Invoice,
    *,
    documents: Sequence[Document] = (),
    destination: str = "dut",
    attempt: int = 1,
    event_type: str = "invoice.received",
    amends: str | None = None,
) -> DeliveryRequest:
    """A ``DeliveryRequest`` as the worker builds it: idempotency key = content hash (plus ``:status``
    for a status change)."""
    event = Event(
        type=event_type,
        source="hub.testing",
        identity=invoice.identity,
        content_hash=content_hash(invoice),
        invoice=invoice,
        document_sha256=documents[0].sha256 if documents else None,
    )
    return DeliveryRequest(
        event=event,
        destination=destination,
        idempotency_key=event.idempotency_key,
        attempt=attempt,
        documents=list(documents),
        amends=amends,
    )


def _kind_tokens(item: GoldenItem) -> set[str]:
    kind = item.invoice.kind
    tokens = {kind.value, *item.tags}
    if kind.is_cn:
        tokens.add("cn")
        tokens.add("cn.digital" if kind.is_cn_digital else "cn.legacy")
    else:
        tokens.add("en16931")
    return tokens


def golden_for(capabilities: Capabilities) -> list[GoldenItem]:
    """The golden items a connector with ``capabilities`` must accept.

    ``formats`` (empty: everything) matches invoice kinds (``cn.digital.special``, ``invoice``...),
    families (``cn``, ``cn.digital``, ``cn.legacy``, ``en16931``) and document formats (``cn_xml``,
    ``ubl``, ``cii``, ``json``). Red-letter invoices only when ``red_letter`` is declared.
    """
    items = golden_set()
    if not capabilities.red_letter:
        items = [i for i in items if not i.invoice.is_red_letter]
    if capabilities.formats:
        items = [i for i in items if _kind_tokens(i) & set(capabilities.formats)]
    return items


# ---------------------------------------------------------------------------------------------------
# Fakes (in the spirit of httpx.MockTransport)
# ---------------------------------------------------------------------------------------------------
class MockSettings(ConnectorSettings):
    """Mocks take no settings."""


class MockSink(Sink, Inventory):
    """A sink whose ``deliver`` is a handler function; records every request it was given.

    Build one with ``mock_sink(handler)``; the handler takes the ``DeliveryRequest`` and returns a
    ``Receipt`` (or None) or raises a ``hub.errors`` class. What it accepted is its inventory.
    """

    type_name: ClassVar[str] = "hub.testing.mock_sink"
    Settings = MockSettings
    handler: ClassVar[Callable[[DeliveryRequest], Receipt | None]]
    #: Every request any instance of this class was given, in order (shared: the class is the fake).
    requests: ClassVar[list[DeliveryRequest]]
    accepted: ClassVar[dict[str, DeliveryRequest]]
    _lock: ClassVar[threading.Lock]

    def deliver(self, request: DeliveryRequest) -> Receipt:
        with self._lock:
            type(self).requests.append(request)
        receipt = type(self).handler(request) or Receipt(remote_ref=f"mock:{request.idempotency_key[:16]}")
        with self._lock:
            type(self).accepted.setdefault(request.idempotency_key, request)
        return receipt

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        with self._lock:
            accepted = list(type(self).accepted.values())
        for req in accepted:
            inv = req.invoice
            if (since and inv.issue_date < since) or (until and inv.issue_date > until):
                continue
            if req.event.type != "invoice.received":
                continue
            yield InventoryItem(
                req.event.identity,
                req.event.content_hash,
                inv.issue_date,
                inv.totals.gross,
                inv.currency,
                inv.seller.tax_id,
                inv.buyer.tax_id,
                inv.number,
            )


def _accept_all(request: DeliveryRequest) -> Receipt:
    return Receipt(remote_ref=f"mock:{request.idempotency_key[:16]}")


def mock_sink(
    handler: Callable[[DeliveryRequest], Receipt | None] = _accept_all, *, type_name: str = "mock"
) -> type[MockSink]:
    """A sink class (named ``type_name`` in hub.yaml) that calls ``handler`` for every delivery."""
    return type(
        "MockSink",
        (MockSink,),
        {
            "type_name": type_name,
            "handler": staticmethod(handler),
            "requests": [],
            "accepted": {},
            "_lock": threading.Lock(),
        },
    )


class MockSource(Source):
    """A source that hands in a fixed list of ``Incoming`` once; its checkpoint is how many were read.

    Build one with ``mock_source(items)``; ``committed`` lists ``(key, outcome)`` pairs.
    """

    type_name: ClassVar[str] = "hub.testing.mock_source"
    Settings = MockSettings
    items: ClassVar[list[Incoming]]
    committed: ClassVar[list[tuple[str, IntakeOutcome]]]
    poll_interval = 0.05

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        start = int(checkpoint or 0)
        for i, item in enumerate(type(self).items[start:], start=start + 1):
            yield Incoming(
                documents=item.documents,
                key=item.key,
                checkpoint=str(i),
                invoices=item.invoices,
                handle=item.handle,
            )

    def commit(self, incoming: Incoming, outcome: IntakeOutcome) -> None:
        type(self).committed.append((incoming.key, outcome))


def mock_source(items: Iterable[Incoming], *, type_name: str = "mock_source") -> type[MockSource]:
    """A source class (named ``type_name`` in hub.yaml) that yields ``items`` once."""
    return type("MockSource", (MockSource,), {"type_name": type_name, "items": list(items), "committed": []})


def connector_plugin(*types: type[Connector], parsers: Sequence[Parser] = ()) -> object:
    """A plugin object registering ``types`` (and ``parsers``), for ``Hub(extra_plugins=[(name, it)])``."""
    from hub.hookspecs import hookimpl

    class _Plugin:
        @staticmethod
        @hookimpl
        def hub_register_connector_types() -> list[type[Connector]]:
            return list(types)

        @staticmethod
        @hookimpl
        def hub_register_parsers() -> list[Parser]:
            return list(parsers)

    return _Plugin()


# ---------------------------------------------------------------------------------------------------
# The golden source and parser (how the kit feeds a hub)
# ---------------------------------------------------------------------------------------------------
class _GoldenRegistry:
    """sha256 of a golden document → (invoice | None, children). Process-wide, additive."""

    invoices: ClassVar[dict[str, Invoice]] = {}
    children: ClassVar[dict[str, Document]] = {}

    @classmethod
    def add(cls, item: GoldenItem, invoice: Invoice | None = None) -> None:
        cls.invoices[item.original.sha256] = invoice or item.invoice
        if item.attachment is not None:
            cls.children[item.attachment.sha256] = item.original


class GoldenParser(Parser):
    """Reads the golden documents back into the golden invoices (a PDF container yields its original
    as a child, so the sink gets both: ``DeliveryRequest.documents`` = original, container)."""

    name = "hub.testing.golden"
    priority = 10_000

    def claims(self, document: Document) -> bool:
        sha = document.sha256
        return sha in _GoldenRegistry.invoices or sha in _GoldenRegistry.children

    def parse(self, document: Document) -> ParseResult:
        sha = document.sha256
        if sha in _GoldenRegistry.children:
            return ParseResult(children=[_GoldenRegistry.children[sha]])
        return ParseResult(invoices=[_GoldenRegistry.invoices[sha]])


class GoldenSourceSettings(ConnectorSettings):
    #: Names of golden items to hand in, in order; ``name@status`` hands in a status change.
    items: list[str]


class GoldenSource(Source):
    """Hands in golden items (container documents where they have one) once, with a checkpoint."""

    type_name = "hub.testing.golden"
    Settings = GoldenSourceSettings
    settings: GoldenSourceSettings
    poll_interval = 0.05

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        by_name = {g.name: g for g in golden_set()}
        start = int(checkpoint or 0)
        for i, entry in enumerate(self.settings.items[start:], start=start + 1):
            name, _, status = entry.partition("@")
            item = by_name[name]
            if status:
                invoice = status_change(item, InvoiceStatus(status))
                yield Incoming(documents=[], key=entry, checkpoint=str(i), invoices=[(invoice, None)])
                continue
            _GoldenRegistry.add(item)
            top = item.attachment or item.original
            yield Incoming(documents=[top], key=entry, checkpoint=str(i))


# ---------------------------------------------------------------------------------------------------
# A real hub in a temporary folder
# ---------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Settings as YAML can hold them (paths as text, secrets as their value)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path | Decimal):
        return str(value)
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="python"))
    return value


@dataclass
class HubHarness:
    """A real ``Hub`` (SQLite ledger in ``root``, memory bus) built from a generated hub.yaml.

    ``connectors`` maps names to ``{"type": ..., "settings": {...}}``; ``types`` are connector classes
    registered in-process (no entry point needed); ``routes`` are hub.yaml routes.
    """

    root: Path
    connectors: dict[str, dict[str, Any]]
    routes: list[dict[str, Any]]
    types: Sequence[type[Connector]] = ()
    retry: dict[str, Any] = field(
        default_factory=lambda: {
            "max_attempts": 5,
            "initial_delay": 0.05,
            "max_delay": 0.5,
            "multiplier": 2,
            "jitter": 0,
        }
    )
    plugins: dict[str, Any] = field(default_factory=dict)
    #: More in-process plugins ``(name, plugin)``: parsers, rules, observers under test.
    extra_plugins: Sequence[tuple[str, object]] = ()
    #: hub.yaml's ``worker`` settings over the harness's own (2 threads, batches of 50, a quick relay).
    worker: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "hub.yaml"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "ledger": f"sqlite:///{self.root / 'ledger.db'}",
            "bus": "memory://",
            "data_dir": str(self.root / ".hub"),
            "logging": {"level": "warning"},
            "worker": {"threads": 2, "relay_interval": 0.05, "batch_size": 50, **self.worker},
            "retry": self.retry,
            "plugins": self.plugins,
            "connectors": _plain(self.connectors),
            "routes": self.routes,
        }
        self.config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), "utf-8")
        return self.config_path

    def hub(self) -> Any:
        """A new ``Hub`` over the same ledger and folders (a restart); close it when done."""
        from hub.config import load_config
        from hub.engine import Hub

        self.write_config()
        types: list[type[Connector]] = [GoldenSource, *self.types]
        plugin = connector_plugin(*types, parsers=[GoldenParser()])
        return Hub(
            load_config(self.config_path), extra_plugins=[("hub.testing", plugin), *self.extra_plugins]
        )

    def run(self, *, timeout: float = 60.0) -> dict[str, Any]:
        """Start a hub, run it until idle (or ``timeout``), close it; returns the run summary."""
        with self.hub() as hub:
            return run_until_idle(hub, timeout=timeout)

    # -- reading the outcome ------------------------------------------------------------------------
    def _ledger(self) -> Any:
        from hub.ledger import Ledger

        return Ledger(f"sqlite:///{self.root / 'ledger.db'}")

    def deliveries(self, destination: str) -> list[dict[str, Any]]:
        from hub.ledger import schema as t

        ledger = self._ledger()
        try:
            with ledger.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(t.deliveries).where(t.deliveries.c.destination == destination)
                ).mappings()
                return [dict(r) for r in rows]
        finally:
            ledger.close()

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        from hub.ledger import schema as t

        ledger = self._ledger()
        try:
            with ledger.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(t.attempts)
                    .where(t.attempts.c.delivery_id == delivery_id)
                    .order_by(t.attempts.c.number)
                ).mappings()
                return [dict(r) for r in rows]
        finally:
            ledger.close()

    def dead_letters(self) -> list[dict[str, Any]]:
        """``hub.ops.dlq_show`` of every dead letter (what `hub dlq show` prints)."""
        from hub import ops

        ledger = self._ledger()
        try:
            return [ops.dlq_show(ledger, r["id"]) for r in ops.dlq_list(ledger, state="all")]
        finally:
            ledger.close()

    def versions(self) -> int:
        from hub.ledger import schema as t

        ledger = self._ledger()
        try:
            with ledger.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(t.invoice_versions)).scalar())
        finally:
            ledger.close()


def run_until_idle(hub: Any, *, timeout: float = 60.0) -> dict[str, Any]:
    """``hub.run(until_idle=True)`` with a watchdog: a hub that is not idle after ``timeout`` seconds
    is stopped and the test fails with what was still open."""
    timer = threading.Timer(timeout, hub.stop)
    timer.daemon = True
    timer.start()
    started = time.monotonic()
    try:
        summary: dict[str, Any] = hub.run(until_idle=True)
    finally:
        timer.cancel()
    if time.monotonic() - started >= timeout and summary.get("open"):
        pytest.fail(
            f"the hub was not idle after {timeout:.0f}s: {summary['open']} deliveries still open "
            f"(summary {summary}); a sink that keeps raising TransientError is retried until "
            "retry.max_attempts, so check what it raises"
        )
    return summary


# ---------------------------------------------------------------------------------------------------
# The conformance kit
# ---------------------------------------------------------------------------------------------------
SettingsFactory = Callable[..., dict[str, Any]]
SourceFeed = Callable[[dict[str, Any], list[GoldenItem]], None]


def _secret_parts(secret: str) -> Iterator[str]:
    """What of a secret value must never be shown: all of it, except for a URL (a database URL kept as
    SecretStr), whose password and secret-looking query values are the secret parts."""
    if "://" not in secret:
        if len(secret) >= 4:
            yield secret
        return
    parts = urlsplit(secret)
    if parts.password and len(unquote(parts.password)) >= 4:
        yield unquote(parts.password)
    for key, val in parse_qsl(parts.query):
        if any(s in key.lower() for s in (*_SECRET_NAMES, "key", "sig")) and len(val) >= 4:
            yield val


def _walk_secrets(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield from _secret_parts(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk_secrets(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk_secrets(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk_secrets(v)


def _secret_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, info.annotation
        ann = info.annotation
        for candidate in (ann, *getattr(ann, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from _secret_fields(candidate, f"{path}.")


def _mentions_secretstr(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_mentions_secretstr(a) for a in getattr(annotation, "__args__", ()))


class ConnectorContract:
    """The standard contract tests. Subclass it in your test module::

        class TestAcme(hub.testing.ConnectorContract):
            connector_type = AcmeLedger
            failure_modes = frozenset({"down", "transient", "permanent", "rate_limited"})

        @pytest.fixture
        def hub_connector_settings(tmp_path, acme_sandbox):
            def settings(failure: str | None = None) -> dict:
                return {"url": acme_sandbox.url, "api_key": "k-123", "fail": failure}
            return settings

    ``hub_connector_settings(failure)`` returns the connector's ``settings`` mapping as hub.yaml would
    hold it. Two calls with the same ``failure`` must reach the *same* backend state (the kit builds
    a second instance to play a restart). Failure modes (declare the ones you can simulate in
    ``failure_modes``; the others are skipped with the reason):

    * ``"down"``: the dependency is unreachable: ``health().ok`` is False and ``deliver``/``poll``
      raise ``TransientError`` (a down system is retried, never dead-lettered);
    * ``"transient"``: the first attempt for each idempotency key fails with ``TransientError``
      (a 503, a time-out), a later one succeeds;
    * ``"rate_limited"``: the first attempt for each key is answered 429 with ``Retry-After`` of a
      few seconds at most, and the connector raises ``RateLimited(retry_after=...)``;
    * ``"permanent"``: every delivery is refused as bad business data (a 400 with the remote's
      error code): ``PermanentError``.

    Sources also provide ``hub_source_feed(settings, items)``: put these golden items into the
    system the source reads (write the files, insert the rows, append the mails).
    """

    #: The connector class under test.
    connector_type: ClassVar[type[Connector]]
    #: The failure modes ``hub_connector_settings`` can simulate.
    failure_modes: ClassVar[frozenset[str]] = frozenset()
    #: Invalid settings and the field path the error must name: ``[({"timeout": -1}, "timeout")]``.
    invalid_settings: ClassVar[Sequence[tuple[dict[str, Any], str]]] = ()
    #: Other strings that must never appear in logs or dead-letter views (besides SecretStr values and
    #: the golden bank account numbers).
    secret_values: ClassVar[Sequence[str]] = ()
    #: The longest Retry-After (seconds) the kit waits for in ``rate_limited`` mode.
    max_retry_after: ClassVar[float] = 5.0
    #: Seconds a hub run may take before the kit gives up.
    hub_timeout: ClassVar[float] = 60.0

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def roles(self) -> frozenset[str]:
        return self.connector_type.roles()

    @property
    def capabilities(self) -> Capabilities:
        return self.connector_type.capabilities

    @property
    def type_label(self) -> str:
        return f"{self.connector_type.__name__} ({self.connector_type.type_name!r})"

    def need_role(self, role: str) -> None:
        if role not in self.roles:
            pytest.skip(f"{self.type_label} is not a {role} (roles: {', '.join(sorted(self.roles))})")

    def need_failure(self, mode: str) -> None:
        if mode not in self.failure_modes:
            pytest.skip(
                f"{type(self).__name__}.failure_modes does not include {mode!r}: the kit cannot make "
                f"{self.type_label} fail that way (add it, and make hub_connector_settings({mode!r}) "
                "simulate it, to have it tested)"
            )

    def settings_for(self, factory: SettingsFactory, failure: str | None = None) -> dict[str, Any]:
        settings = factory(failure) if failure is not None else factory()
        if not isinstance(settings, dict):
            pytest.fail(f"hub_connector_settings({failure!r}) must return a dict, not {type(settings)}")
        return settings

    def build(self, settings: dict[str, Any], data_dir: Path, name: str = "dut") -> Any:
        """Validate ``settings`` with the Settings model and construct the connector, as the hub does."""
        model = self.connector_type.Settings.model_validate(_plain(settings))
        data_dir.mkdir(parents=True, exist_ok=True)
        return self.connector_type(model, ConnectorContext(name=name, data_dir=data_dir))

    @contextlib.contextmanager
    def connector(
        self, factory: SettingsFactory, tmp_path: Path, failure: str | None = None, tag: str = "a"
    ) -> Iterator[Any]:
        conn = self.build(self.settings_for(factory, failure), tmp_path / f"connector-{tag}")
        try:
            yield conn
        finally:
            conn.close()

    def golden(self) -> list[GoldenItem]:
        items = golden_for(self.capabilities)
        if not items:
            pytest.fail(
                f"{self.type_label} declares formats {sorted(self.capabilities.formats)} that match no "
                "golden invoice; use invoice kinds (cn.digital.special, invoice, credit_note...), "
                "families (cn, cn.digital, cn.legacy, en16931) or formats (cn_xml, ubl, cii, json)"
            )
        return items

    def harness(self, root: Path, settings: dict[str, Any], items: Sequence[str], **kw: Any) -> HubHarness:
        """A hub routing the golden source (``items``) to the connector under test, named ``dut``."""
        return HubHarness(
            root=root,
            connectors={
                "golden": {"type": GoldenSource.type_name, "settings": {"items": list(items)}},
                "dut": {"type": self.connector_type.type_name, "settings": settings},
            },
            routes=[{"name": "golden-to-dut", "from": "golden", "to": "dut"}],
            types=[self.connector_type],
            **kw,
        )

    def _inventory(self, conn: Any, identities: set[str]) -> list[InventoryItem]:
        return [i for i in conn.inventory() if i.identity in identities]

    # -- declarations and settings ------------------------------------------------------------------
    def test_declares_type_settings_and_api(self) -> None:
        cls = self.connector_type
        assert isinstance(cls, type) and issubclass(cls, Connector), f"{cls!r} is not a hub.Connector"
        assert cls.type_name, f"{cls.__name__} has no type_name (the name hub.yaml uses, e.g. 'acme.ledger')"
        assert isinstance(cls.Settings, type) and issubclass(cls.Settings, ConnectorSettings), (
            f"{cls.__name__}.Settings must subclass hub.ConnectorSettings (unknown keys are then errors)"
        )
        assert str(cls.hub_api).split(".")[0] == HUB_API_VERSION.split(".")[0], (
            f"{cls.__name__}.hub_api is {cls.hub_api}, this hub speaks {HUB_API_VERSION}"
        )
        assert isinstance(cls.capabilities, Capabilities), (
            f"{cls.__name__}.capabilities must be a hub.Capabilities"
        )
        bases = {"source": Source, "sink": Sink, "inventory": Inventory}
        for role in cls.capabilities.roles:
            assert role in (*bases, "health"), (
                f"{cls.__name__}.capabilities.roles has {role!r}; roles are source, sink, inventory, health"
            )
            if role in bases:
                assert issubclass(cls, bases[role]), (
                    f"{cls.__name__} declares the {role} role but does not subclass "
                    f"hub.{bases[role].__name__} — the hub finds roles by base class, so it would "
                    "never use it as one"
                )
        assert self.roles & {"source", "sink", "inventory"}, (
            f"{cls.__name__} implements no role: subclass hub.Source, hub.Sink and/or hub.Inventory"
        )
        unknown = set(self.failure_modes) - FAILURE_MODES
        assert not unknown, f"unknown failure modes {sorted(unknown)}; known: {sorted(FAILURE_MODES)}"

    def test_secret_settings_are_secretstr(self) -> None:
        wrong = []
        for path, annotation in _secret_fields(self.connector_type.Settings):
            leaf = path.rsplit(".", 1)[-1].lower()
            looks_secret = leaf in _SECRET_EXACT or any(s in leaf for s in _SECRET_NAMES)
            if looks_secret and not _mentions_secretstr(annotation) and "file" not in leaf:
                if "_id" in leaf or leaf.endswith("_url") or leaf.endswith("_header"):
                    continue
                wrong.append(path)
        assert not wrong, (
            f"settings {wrong} of {self.type_label} look like secrets but are not pydantic SecretStr: "
            "declare them as SecretStr so they are never logged or printed (read them with "
            ".get_secret_value() only where you send them)"
        )

    def test_settings_are_valid(self, hub_connector_settings: SettingsFactory, tmp_path: Path) -> None:
        from hub.config import load_config, validate_connectors
        from hub.plugins import build_plugins

        settings = self.settings_for(hub_connector_settings)
        harness = self.harness(tmp_path / "hub", settings, [])
        loaded = load_config(harness.write_config())
        plugins = build_plugins(extra=[("hub.testing", connector_plugin(GoldenSource, self.connector_type))])
        validated = validate_connectors(loaded, plugins)
        assert isinstance(validated["dut"], self.connector_type.Settings)

    def _config_error(self, tmp_path: Path, settings: dict[str, Any]) -> str:
        from hub.config import load_config, validate_connectors
        from hub.plugins import build_plugins

        harness = self.harness(tmp_path / "bad", settings, [])
        loaded = load_config(harness.write_config())
        plugins = build_plugins(extra=[("hub.testing", connector_plugin(GoldenSource, self.connector_type))])
        with pytest.raises(ConfigError) as caught:
            validate_connectors(loaded, plugins)
        return str(caught.value)

    def test_settings_unknown_key_is_named(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        settings = {**self.settings_for(hub_connector_settings), "no_such_setting": 1}
        message = self._config_error(tmp_path, settings)
        assert "connectors.dut.settings.no_such_setting" in message and "unknown key" in message, (
            f"an unknown settings key must be an error naming its YAML path; got: {message}"
        )

    def test_settings_missing_required_field_is_named(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        settings = self.settings_for(hub_connector_settings)
        required = [n for n, f in self.connector_type.Settings.model_fields.items() if f.is_required()]
        required = [n for n in required if n in settings]
        if not required:
            pytest.skip(f"{self.type_label} has no required settings")
        for name in required:
            message = self._config_error(tmp_path, {k: v for k, v in settings.items() if k != name})
            assert f"connectors.dut.settings.{name}" in message, (
                f"leaving out the required setting {name!r} must be an error naming "
                f"connectors.dut.settings.{name}; got: {message}"
            )

    def test_settings_invalid_values_are_named(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        if not self.invalid_settings:
            pytest.skip(f"{type(self).__name__}.invalid_settings lists no invalid settings to try")
        base = self.settings_for(hub_connector_settings)
        for changes, path in self.invalid_settings:
            message = self._config_error(tmp_path, {**base, **changes})
            assert f"connectors.dut.settings.{path}" in message, (
                f"settings {changes} must be refused naming connectors.dut.settings.{path}; got: {message}"
            )

    # -- health -------------------------------------------------------------------------------------
    def test_health_ok(self, hub_connector_settings: SettingsFactory, tmp_path: Path) -> None:
        with self.connector(hub_connector_settings, tmp_path) as conn:
            health = conn.health()
        assert isinstance(health, Health), f"health() must return hub.Health, not {health!r}"
        assert health.ok, f"a healthy {self.type_label} reports health {health}"

    def test_health_reports_down_dependency(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_failure("down")
        with self.connector(hub_connector_settings, tmp_path, "down") as conn:
            health = conn.health()
        assert isinstance(health, Health) and not health.ok, (
            f"with its dependency down {self.type_label}.health() says {health}; it must say ok=False "
            "so `hub check` shows the outage"
        )
        assert health.detail, "health() of a down dependency must say what is wrong (Health.detail)"

    # -- sink ---------------------------------------------------------------------------------------
    def test_sink_delivers_every_golden_invoice(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        with self.connector(hub_connector_settings, tmp_path) as conn:
            for item in self.golden():
                receipt = conn.deliver(delivery_request(item.invoice, documents=item.documents))
                assert receipt is None or isinstance(receipt, Receipt), (
                    f"deliver() must return a hub.Receipt, got {receipt!r} for {item.name}"
                )

    def test_sink_same_key_twice_one_record(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        if not self.capabilities.idempotency_key:
            pytest.skip(
                f"{self.type_label} declares idempotency_key=False: the hub's ledger is its only guard "
                "against duplicates after an unclear outcome"
            )
        self.need_role("inventory")
        settings = self.settings_for(hub_connector_settings)
        items = self.golden()[:2]
        identities = {i.identity for i in items}
        for item in items:
            first = self.build(settings, tmp_path / "first")
            try:
                first.deliver(delivery_request(item.invoice, documents=item.documents))
                # the same instance again: a retry after a time-out whose first call did get through
                first.deliver(delivery_request(item.invoice, documents=item.documents, attempt=2))
            finally:
                first.close()
            # and a fresh instance (a hub restart between the attempts)
            second = self.build(settings, tmp_path / "second")
            try:
                second.deliver(delivery_request(item.invoice, documents=item.documents, attempt=3))
            finally:
                second.close()
        reader = self.build(settings, tmp_path / "reader")
        try:
            held = self._inventory(reader, identities)
        finally:
            reader.close()
        for item in items:
            records = [i for i in held if i.identity == item.identity and i.content_hash == item.content_hash]
            assert len(records) == 1, (
                f"{self.type_label} holds {len(records)} records for {item.identity} after three deliveries "
                f"with one idempotency key ({item.content_hash[:16]}...). A retry after an unclear outcome "
                "(time-out, crash) would duplicate the invoice at the destination. Fix: look the "
                "idempotency key up before creating the record (or send it as the remote's idempotency "
                "key/order number) and return the existing record's Receipt."
                + (" (0 records: inventory() does not list what deliver() created.)" if not records else "")
            )

    def _expect_raise(
        self, factory: SettingsFactory, tmp_path: Path, mode: str, expected: type[BaseException]
    ) -> BaseException:
        item = self.golden()[0]
        with self.connector(factory, tmp_path, mode) as conn:
            try:
                conn.deliver(delivery_request(item.invoice, documents=item.documents))
            except expected as exc:
                return exc
            except Exception as exc:
                pytest.fail(
                    f"in failure mode {mode!r} {self.type_label}.deliver() raised {type(exc).__module__}."
                    f"{type(exc).__name__}: {exc}; it must raise hub.errors.{expected.__name__} (translate "
                    "the client's exception at the seam: `raise TransientError(...) from exc`)"
                )
        pytest.fail(
            f"in failure mode {mode!r} {self.type_label}.deliver() returned; expected {expected.__name__}"
        )

    def test_sink_down_dependency_is_transient(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        self.need_failure("down")
        exc = self._expect_raise(hub_connector_settings, tmp_path, "down", TransientError)
        assert not isinstance(exc, PermanentError)

    def test_sink_transient_failure_class(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        self.need_failure("transient")
        self._expect_raise(hub_connector_settings, tmp_path, "transient", TransientError)

    def test_sink_rate_limited_class(self, hub_connector_settings: SettingsFactory, tmp_path: Path) -> None:
        self.need_role("sink")
        self.need_failure("rate_limited")
        exc = self._expect_raise(hub_connector_settings, tmp_path, "rate_limited", RateLimited)
        assert isinstance(exc, RateLimited) and 0 < exc.retry_after <= self.max_retry_after, (
            f"RateLimited.retry_after is {getattr(exc, 'retry_after', None)}; pass the remote's Retry-After "
            f"(seconds, > 0; the kit waits at most {self.max_retry_after}s)"
        )

    def test_sink_permanent_failure_class(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        self.need_failure("permanent")
        exc = self._expect_raise(hub_connector_settings, tmp_path, "permanent", PermanentError)
        assert str(exc), "a PermanentError must say why the remote refused (it is what ops read first)"

    # -- sink, through a real hub -------------------------------------------------------------------
    def _states(self, harness: HubHarness) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in harness.deliveries("dut"):
            out[d["state"]] = out.get(d["state"], 0) + 1
        return out

    def test_hub_delivers_golden_set_and_inventory_agrees(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        items = self.golden()
        names = [i.name for i in items]
        if self.capabilities.red_letter:
            names.append(f"{items[0].name}@{InvoiceStatus.RED_LETTERED.value}")
        settings = self.settings_for(hub_connector_settings)
        harness = self.harness(tmp_path / "hub", settings, names)
        harness.run(timeout=self.hub_timeout)
        rows = harness.deliveries("dut")
        bad = [r for r in rows if r["state"] != "delivered"]
        assert not bad, f"not every golden delivery reached {self.type_label}: " + "; ".join(
            f"{r['identity']} {r['state']}: {r['last_error']}" for r in bad
        )
        assert len(rows) == len(names), f"expected {len(names)} deliveries, the ledger has {len(rows)}"
        if self.capabilities.red_letter:
            keys = {r["idem_key"] for r in rows}
            assert f"{items[0].content_hash}:{InvoiceStatus.RED_LETTERED.value}" in keys
        if "inventory" not in self.roles:
            return
        reader = self.build(settings, tmp_path / "reader")
        try:
            held = self._inventory(reader, {i.identity for i in items})
        finally:
            reader.close()
        have = {(h.identity, h.content_hash) for h in held}
        twice = sorted({pair for pair in have if sum((h.identity, h.content_hash) == pair for h in held) > 1})
        assert not twice, (
            f"{self.type_label}.inventory() lists {twice[0][0]} "
            f"(content {(twice[0][1] or '')[:16]}...) more than "
            "once; list each invoice version once — a status change (idempotency key hash:status) "
            "updates the invoice, it is not a second invoice; `hub reconcile` reports doubles as "
            "suspected duplicates"
        )
        for item in items:
            assert (item.identity, item.content_hash) in have, (
                f"{item.identity} was delivered (ledger: delivered) but {self.type_label}.inventory() does "
                "not list it with its content hash; `hub reconcile` would report it missing"
            )
            for h in held:
                if h.identity != item.identity:
                    continue
                for attr, want in (
                    ("gross", item.invoice.totals.gross),
                    ("currency", item.invoice.currency),
                    ("issue_date", item.invoice.issue_date),
                ):
                    got = getattr(h, attr)
                    assert got is None or got == want, (
                        f"inventory() says {attr}={got!r} for {item.identity}; it was delivered with {want!r}"
                    )
        extra = {(h.identity, h.content_hash) for h in held} - {(i.identity, i.content_hash) for i in items}
        assert not extra, f"inventory() lists versions that were never delivered: {sorted(extra)}"

    def test_inventory_date_filter(self, hub_connector_settings: SettingsFactory, tmp_path: Path) -> None:
        self.need_role("sink")
        self.need_role("inventory")
        items = self.golden()
        with self.connector(hub_connector_settings, tmp_path) as conn:
            for item in items:
                conn.deliver(delivery_request(item.invoice, documents=item.documents))
            since = date(2026, 1, 1)
            recent = [i for i in conn.inventory(since=since) if i.identity in {g.identity for g in items}]
            old = [
                i
                for i in conn.inventory(until=date(2025, 12, 31))
                if i.identity in {g.identity for g in items}
            ]
        expected_recent = {g.identity for g in items if g.invoice.issue_date >= since}
        assert {i.identity for i in recent} == expected_recent, (
            f"inventory(since={since}) returned {sorted(i.identity for i in recent)}, "
            f"expected {sorted(expected_recent)}"
        )
        assert {i.identity for i in old} == {g.identity for g in items if g.invoice.issue_date < since}

    def test_hub_retries_transient_failure(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        self.need_failure("transient")
        item = self.golden()[0]
        harness = self.harness(
            tmp_path / "hub", self.settings_for(hub_connector_settings, "transient"), [item.name]
        )
        harness.run(timeout=self.hub_timeout)
        [row] = harness.deliveries("dut")
        attempts = harness.attempts(row["id"])
        assert row["state"] == "delivered", (
            f"after a transient failure the hub should retry and deliver; the delivery is {row['state']}: "
            f"{row['last_error']}"
        )
        assert len(attempts) >= 2 and attempts[0]["outcome"] == "retrying", (
            f"'transient' mode must fail the first attempt with TransientError; attempts: "
            f"{[(a['outcome'], a['error_class']) for a in attempts]}"
        )

    def test_hub_honours_retry_after(self, hub_connector_settings: SettingsFactory, tmp_path: Path) -> None:
        self.need_role("sink")
        self.need_failure("rate_limited")
        item = self.golden()[0]
        settings = self.settings_for(hub_connector_settings, "rate_limited")
        harness = self.harness(tmp_path / "hub", settings, [item.name])
        harness.run(timeout=self.hub_timeout)
        [row] = harness.deliveries("dut")
        attempts = harness.attempts(row["id"])
        assert row["state"] == "delivered", f"a 429 must be retried; the delivery is {row['state']}"
        first, second = attempts[0], attempts[1]
        assert first["outcome"] == "retrying" and first["error_class"] == "RateLimited", (
            f"the first attempt should end in RateLimited; it was {first['outcome']} {first['error_class']}"
        )
        retry_after = float(first["retry_after"])
        waited = (second["started_at"] - first["started_at"]).total_seconds()
        assert waited >= retry_after, (
            f"Retry-After was {retry_after}s but the next attempt came after {waited:.2f}s"
        )

    def test_hub_dead_letters_business_refusal(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        self.need_role("sink")
        self.need_failure("permanent")
        item = self.golden()[0]
        settings = self.settings_for(hub_connector_settings, "permanent")
        harness = self.harness(tmp_path / "hub", settings, [item.name])
        harness.run(timeout=self.hub_timeout)
        [row] = harness.deliveries("dut")
        attempts = harness.attempts(row["id"])
        assert row["state"] == "dead" and len(attempts) == 1, (
            f"a business refusal must be dead-lettered at once, not retried; state {row['state']} after "
            f"{len(attempts)} attempt(s): {[(a['outcome'], a['error_class']) for a in attempts]}"
        )
        [letter] = [dl for dl in harness.dead_letters() if dl["destination"] == "dut"]
        assert letter["state"] == "open" and letter["message"], letter
        assert letter["identity"] == item.identity

    def test_no_secrets_in_logs_or_dead_letters(
        self, hub_connector_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        modes: list[str | None] = [None, *sorted(self.failure_modes)]
        items = [i for i in self.golden() if "bank" in i.tags] or self.golden()[:1]
        secrets: set[str] = set(self.secret_values) | set(BANK_ACCOUNTS)
        letters: list[dict[str, Any]] = []
        texts: list[tuple[str, str]] = []
        with structlog.testing.capture_logs() as logs:
            for mode in modes:
                settings = self.settings_for(hub_connector_settings, mode)
                model = self.connector_type.Settings.model_validate(_plain(settings))
                secrets |= set(_walk_secrets(model))
                if "sink" in self.roles and mode in (None, "permanent", "transient"):
                    # through a hub: delivered, retried and dead-lettered deliveries, with their logs
                    retry = {"max_attempts": 2, "initial_delay": 0.05, "max_delay": 0.1, "jitter": 0}
                    harness = self.harness(
                        tmp_path / f"hub-{mode or 'ok'}", settings, [i.name for i in items], retry=retry
                    )
                    harness.run(timeout=self.hub_timeout)
                    letters.extend(harness.dead_letters())
                with self.connector(hub_connector_settings, tmp_path, mode, tag=f"h-{mode}") as conn:
                    texts.append((f"health() in mode {mode}", conn.health().detail))
                    if mode != "down":
                        continue
                    # what a down dependency's error says (connection errors love to quote URLs)
                    try:
                        if "sink" in self.roles:
                            conn.deliver(delivery_request(items[0].invoice, documents=items[0].documents))
                        else:
                            list(conn.poll(None))
                    except Exception as exc:
                        context = getattr(exc, "context", {})
                        texts.append(("error raised when down", f"{exc} {context!r} {exc.__cause__}"))
        texts += [("log", repr(entry)) for entry in logs]
        for letter in letters:
            view = {k: v for k, v in letter.items() if k != "invoice"}  # the invoice is the hub's record
            texts.append((f"dead letter {letter['id']}", repr(view)))
        for where, text in texts:
            for secret in secrets:
                assert secret not in text, (
                    f"a secret or bank account number ({secret[:3]}…) appears in a {where}: {text[:300]}… — "
                    "keep SecretStr values out of messages, log key-values and health details (show a "
                    "URL without its password), and do not copy the request body (it carries bank "
                    "details) into errors; put the remote's answer in remote_body only after removing "
                    "account numbers"
                )

    # -- source -------------------------------------------------------------------------------------
    def test_source_yields_nothing_twice_after_restart(
        self, hub_connector_settings: SettingsFactory, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        self.need_role("source")
        hub_source_feed: SourceFeed = request.getfixturevalue("hub_source_feed")
        items = self.golden()
        first, later = items[: len(items) // 2], items[len(items) // 2 :]
        settings = self.settings_for(hub_connector_settings)
        hub_source_feed(settings, first)
        seen: set[str] = set()
        checkpoint: str | None = None
        for round_no, (feed, tag) in enumerate(((first, "a"), (later, "b"))):
            if round_no:
                hub_source_feed(settings, feed)
            conn = self.build(settings, tmp_path / f"source-{tag}")
            try:
                got = list(conn.poll(checkpoint))
                for incoming in got:
                    assert isinstance(incoming, Incoming), f"poll() must yield hub.Incoming, not {incoming!r}"
                    if incoming.checkpoint is not None:
                        checkpoint = incoming.checkpoint
                    conn.commit(incoming, IntakeOutcome(accepted=1, identities=[]))
            finally:
                conn.close()
            shas = {d.sha256 for inc in got for d in inc.documents} | {
                content_hash(inv) for inc in got for inv, _ in inc.invoices
            }
            again = shas & seen
            assert not again, (
                f"{self.type_label} yielded {len(again)} item(s) again after a restart from checkpoint "
                f"{checkpoint!r}; store how far you got in Incoming.checkpoint (the hub saves it with the "
                "invoices) or move what was read in commit()"
            )
            seen |= shas
            assert len(got) >= len(feed), f"round {tag}: fed {len(feed)} item(s), poll() yielded {len(got)}"

    def test_hub_source_resumes_after_restart(
        self, hub_connector_settings: SettingsFactory, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        self.need_role("source")
        hub_source_feed: SourceFeed = request.getfixturevalue("hub_source_feed")
        items = self.golden()
        first, later = items[: len(items) // 2], items[len(items) // 2 :]
        for item in items:
            _GoldenRegistry.add(item)
        settings = self.settings_for(hub_connector_settings)
        sink = mock_sink(type_name="hub.testing.collect")
        harness = HubHarness(
            root=tmp_path / "hub",
            connectors={
                "dut": {"type": self.connector_type.type_name, "settings": settings},
                "collect": {"type": sink.type_name, "settings": {}},
            },
            routes=[{"name": "dut-to-collect", "from": "dut", "to": "collect"}],
            types=[self.connector_type, sink],
        )
        hub_source_feed(settings, first)
        summary = harness.run(timeout=self.hub_timeout)
        assert summary["received"] == len(first), (
            f"first run received {summary['received']}, fed {len(first)}"
        )
        hub_source_feed(settings, later)
        summary = harness.run(timeout=self.hub_timeout)
        assert summary["duplicates"] == 0, (
            f"after a restart {self.type_label} handed in {summary['duplicates']} item(s) it had handed in "
            "before; resume from the checkpoint the hub gives poll()"
        )
        assert summary["received"] == len(later)
        delivered = {r["identity"] for r in harness.deliveries("collect") if r["state"] == "delivered"}
        assert delivered == {i.identity for i in items}

    def test_source_down_dependency(self, hub_connector_settings: SettingsFactory, tmp_path: Path) -> None:
        self.need_role("source")
        self.need_failure("down")
        with self.connector(hub_connector_settings, tmp_path, "down") as conn:
            try:
                list(conn.poll(None))
            except TransientError:
                return
            except Exception as exc:
                pytest.fail(
                    f"with its dependency down {self.type_label}.poll() raised {type(exc).__name__}: {exc}; "
                    "raise hub.errors.TransientError (the hub logs it and polls again later)"
                )
        pytest.fail(
            f"with its dependency down {self.type_label}.poll() returned normally; raise TransientError"
        )


# ---------------------------------------------------------------------------------------------------
# pytest plugin
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def hub_golden_set() -> list[GoldenItem]:
    """The golden invoices (fresh objects)."""
    return golden_set()


@pytest.fixture
def hub_connector_settings() -> SettingsFactory:
    """Fallback: a ConnectorContract subclass needs its own ``hub_connector_settings`` fixture."""
    pytest.fail(
        "write a `hub_connector_settings` fixture returning a callable: failure mode (None, 'down', "
        "'transient', 'permanent', 'rate_limited') -> the connector's settings mapping as in hub.yaml; "
        "see docs/plugins.md, 'Testing your connector'"
    )


@pytest.fixture
def hub_source_feed() -> SourceFeed:
    """Fallback: sources need a ``hub_source_feed`` fixture."""
    pytest.fail(
        "a source connector needs a `hub_source_feed` fixture returning a callable "
        "(settings, golden items) -> None that puts the items where the source reads them; "
        "see docs/plugins.md, 'Testing your connector'"
    )


@pytest.fixture
def hub_connector_factory(
    request: pytest.FixtureRequest, hub_connector_settings: SettingsFactory, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """``hub_connector_factory(failure=None)``: a fresh instance of the test class's ``connector_type``
    built from ``hub_connector_settings(failure)``, as the hub builds it; closed after the test. For
    your own tests beside the kit's, inside a ``ConnectorContract`` subclass."""
    cls = getattr(request.cls, "connector_type", None)
    if cls is None:
        pytest.fail("hub_connector_factory works in a test class with a connector_type (a ConnectorContract)")
    made: list[Connector] = []

    def make(failure: str | None = None) -> Any:
        settings = hub_connector_settings(failure) if failure is not None else hub_connector_settings()
        model = cls.Settings.model_validate(_plain(settings))
        data_dir = tmp_path / f"factory-{len(made)}"
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = cls(model, ConnectorContext(name="dut", data_dir=data_dir))
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


@pytest.fixture
def hub_harness(tmp_path: Path) -> Callable[..., HubHarness]:
    """``hub_harness(connectors, routes, types=())``: a real hub in ``tmp_path``."""

    def make(
        connectors: dict[str, dict[str, Any]],
        routes: list[dict[str, Any]],
        types: Sequence[type[Connector]] = (),
    ) -> HubHarness:
        return HubHarness(root=tmp_path / "hub", connectors=connectors, routes=routes, types=types)

    return make
