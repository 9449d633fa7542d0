"""The same contract checks over every ERP connector: ``erp.sql`` on the real PostgreSQL and MariaDB,
``erp.rest`` with the ``odoo`` and ``erpnext`` presets against their sandboxes over real HTTP.

Contract: settings validation names the bad field; delivering one idempotency key twice makes one
record; a server that is down is a ``TransientError`` and a record the ERP refuses a
``PermanentError``; inventory agrees with what was delivered; and (``erp.sql`` as a source) a new
connector resumed from the stored checkpoint never yields a row twice and picks up new and changed rows.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import sqlalchemy as sa

from hub import (
    Connector,
    ConnectorContext,
    DeliveryRequest,
    Event,
    IntakeOutcome,
    Invoice,
    PermanentError,
    TransientError,
)
from hub.canonical import content_hash
from hub.plugins import build_plugins
from tests.conftest import port_open, server_missing
from tests.sandbox_server import run_asgi

pytestmark = pytest.mark.integration

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
MARIADB_START = "service mariadb start  (or: mysqld_safe &)"

SELLER = "91110000600037341L"
BUYER = "91310000MA1FL0LP0C"
ODOO_KEY = "odoo-contract-key"
ERPNEXT_KEY = "contract-key:contract-secret"


def make_invoice(
    serial: int,
    *,
    day: date = date(2026, 10, 5),
    quantity: str = "2",
    price: str = "50.00",
    reverses: str | None = None,
) -> Invoice:
    """A 数电 ordinary invoice with exact arithmetic (a red-letter one when ``reverses`` is given)."""
    qty = Decimal(quantity)
    net = (qty * Decimal(price)).quantize(Decimal("0.01"))
    tax = (net * Decimal("0.13")).quantize(Decimal("0.01"))
    return Invoice.model_validate(
        {
            "kind": "cn.digital.ordinary",
            "number": f"{day.year % 100:02d}32{serial:016d}",
            "issue_date": day,
            "seller": {"name": "上海示例科技有限公司", "tax_id": SELLER},
            "buyer": {"name": f"北京客户{serial}有限公司", "tax_id": BUYER},
            "lines": [
                {
                    "name": "*信息技术服务*软件维护",
                    "quantity": qty,
                    "unit_price": Decimal(price),
                    "amount": net,
                    "tax_rate": "0.13",
                    "tax_amount": tax,
                }
            ],
            "totals": {"net": net, "tax": tax, "gross": net + tax},
            "reverses": reverses,
            "reversal_reason": "01" if reverses else None,
        }
    )


def request_for(invoice: Invoice, *, source: str = "inbox", attempt: int = 1) -> DeliveryRequest:
    event = Event(
        source=source, identity=invoice.identity, content_hash=content_hash(invoice), invoice=invoice
    )
    return DeliveryRequest(
        event=event, destination="erp", idempotency_key=event.idempotency_key, attempt=attempt
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------
@dataclass
class Backend:
    """One ERP connector set up against a real server, with what the contract tests need to know."""

    name: str
    cls: type[Connector]
    settings: dict[str, Any]
    #: Settings of the same connector pointing at a server that is not there.
    down: dict[str, Any]
    #: How many records the ERP holds (its own count, not the connector's).
    count: Callable[[], int]
    #: Settings with one bad value, and the field path pydantic must name.
    bad: tuple[dict[str, Any], tuple[str, ...]]
    #: An invoice this ERP refuses.
    refused: Invoice
    made: list[Connector] = field(default_factory=list)

    def connector(self, settings: dict[str, Any] | None = None, name: str = "erp") -> Any:
        model = self.cls.Settings.model_validate(settings or self.settings)
        connector = self.cls(model, ConnectorContext(name=name, data_dir=Path("/nonexistent")))
        self.made.append(connector)
        return connector

    def close(self) -> None:
        for connector in self.made:
            connector.close()


def _types() -> dict[str, type[Connector]]:
    return build_plugins(allowed=["erp_sql", "erp_rest"]).connector_types


def _sql_backend(url: str, label: str, start: str) -> Iterator[Backend]:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        engine.dispose()
        server_missing(label, start)
    from invoice_hub_plugins.erp_sql import Settings, create_tables, drop_tables

    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = {"url": url, "outbound": {"table": f"{prefix}_out"}, "inbound": {"table": f"{prefix}_in"}}
    model = Settings.model_validate(settings)
    create_tables(model)
    host_down = url.replace(":5432/", f":{free_port()}/").replace(":3306/", f":{free_port()}/")

    def count() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {prefix}_in")).scalar_one())

    # A number longer than the inbound column (VARCHAR(64)): the database refuses the row.
    refused = Invoice.model_validate(
        {**make_invoice(900).model_dump(), "kind": "invoice", "number": "N" * 80}
    )
    backend = Backend(
        name=label,
        cls=_types()["erp.sql"],
        settings=settings,
        down={**settings, "url": host_down, "connect_timeout": 2},
        count=count,
        bad=({**settings, "outbound": {"table": "bad table; drop"}}, ("outbound", "table")),
        refused=refused,
    )
    try:
        yield backend
    finally:
        backend.close()
        drop_tables(model)
        engine.dispose()


@pytest.fixture(scope="module")
def odoo_url() -> Iterator[str]:
    from contrib.sandbox.odoo import create_app

    with run_asgi(create_app(api_keys=[ODOO_KEY])) as url:
        yield url


@pytest.fixture(scope="module")
def erpnext_url() -> Iterator[str]:
    from contrib.sandbox.erpnext import create_app

    with run_asgi(create_app(api_keys=[ERPNEXT_KEY])) as url:
        yield url


def _stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/_sandbox/stats", timeout=5).json())


def _rest_backend(url: str, preset: str) -> Iterator[Backend]:
    httpx.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    if preset == "odoo":
        auth: dict[str, Any] = {"type": "bearer", "token": ODOO_KEY}
        count = lambda: int(_stats(url)["records"]["account.move"])  # noqa: E731
    else:
        key, secret = ERPNEXT_KEY.split(":")
        auth = {"type": "token", "key": key, "secret": secret}
        count = lambda: int(_stats(url)["records"]["Sales Invoice"])  # noqa: E731
    settings = {"base_url": url, "preset": preset, "auth": auth, "read_timeout": 2.0}
    refused = Invoice.model_validate({**make_invoice(901).model_dump(), "lines": []})  # no lines: refused
    backend = Backend(
        name=preset,
        cls=_types()["erp.rest"],
        settings=settings,
        down={**settings, "base_url": f"http://127.0.0.1:{free_port()}", "connect_timeout": 1.0},
        count=count,
        bad=({**settings, "base_url": "ftp://erp.example.com"}, ("base_url",)),
        refused=refused,
    )
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["postgresql", "mariadb", "odoo", "erpnext"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgresql":
        if not port_open("127.0.0.1", 5432):
            server_missing("PostgreSQL at 127.0.0.1:5432", PG_START)
        yield from _sql_backend(PG_URL, "postgresql", PG_START)
    elif request.param == "mariadb":
        if not port_open("127.0.0.1", 3306):
            server_missing("MariaDB at 127.0.0.1:3306", MARIADB_START)
        yield from _sql_backend(MARIADB_URL, "mariadb", MARIADB_START)
    elif request.param == "odoo":
        yield from _rest_backend(request.getfixturevalue("odoo_url"), "odoo")
    else:
        yield from _rest_backend(request.getfixturevalue("erpnext_url"), "erpnext")


# ---------------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------------
def test_settings_validation_names_the_bad_field(backend: Backend) -> None:
    settings, path = backend.bad
    with pytest.raises(pydantic.ValidationError) as caught:
        backend.cls.Settings.model_validate(settings)
    locations = [tuple(str(p) for p in error["loc"]) for error in caught.value.errors()]
    assert any(loc[: len(path)] == path for loc in locations), locations
    with pytest.raises(pydantic.ValidationError) as unknown:
        backend.cls.Settings.model_validate({**backend.settings, "surprise": 1})
    assert ("surprise",) in [tuple(e["loc"]) for e in unknown.value.errors()]


def test_same_idempotency_key_twice_makes_one_record(backend: Backend) -> None:
    erp = backend.connector()
    before = backend.count()
    invoice = make_invoice(1)
    first = erp.deliver(request_for(invoice))
    second = erp.deliver(request_for(invoice, attempt=2))
    # A retry from a fresh connector (another worker, after a restart) finds it too.
    third = backend.connector().deliver(request_for(invoice, attempt=3))
    assert backend.count() == before + 1
    assert first.remote_ref and first.remote_ref == second.remote_ref == third.remote_ref
    assert first.detail["created"] is True
    assert second.detail["created"] is False and third.detail["created"] is False
    # Another version of the same invoice is another record (an amendment, never an overwrite).
    amended = Invoice.model_validate(
        {**invoice.model_dump(), "buyer": {"name": "更正后的客户", "tax_id": BUYER}}
    )
    request = request_for(amended)
    request.amends = content_hash(invoice)
    assert erp.deliver(request).remote_ref != first.remote_ref
    assert backend.count() == before + 2


def test_server_down_is_transient(backend: Backend) -> None:
    erp = backend.connector(backend.down)
    with pytest.raises(TransientError) as caught:
        erp.deliver(request_for(make_invoice(2)))
    assert not isinstance(caught.value.__cause__, TransientError)  # translated at the seam, with its cause
    assert caught.value.__cause__ is not None
    assert erp.health().ok is False
    assert backend.connector().health().ok is True


def test_refused_record_is_permanent(backend: Backend) -> None:
    erp = backend.connector()
    before = backend.count()
    with pytest.raises(PermanentError) as caught:
        erp.deliver(request_for(backend.refused))
    assert not isinstance(caught.value, TransientError)
    assert caught.value.code  # the remote's own error code is kept for the dead letter
    assert backend.count() == before  # nothing half-written
    erp.deliver(request_for(make_invoice(3)))  # the connector goes on working afterwards
    assert backend.count() == before + 1


def test_inventory_agrees_with_what_was_delivered(backend: Backend) -> None:
    erp = backend.connector()
    delivered = [make_invoice(10 + i, day=date(2026, 3, 1 + i)) for i in range(3)]
    red = make_invoice(20, day=date(2026, 3, 9), quantity="-2", reverses=delivered[0].number)
    outside = make_invoice(30, day=date(2026, 5, 1))
    for invoice in [*delivered, red, outside]:
        erp.deliver(request_for(invoice))
    items = {i.identity: i for i in erp.inventory(date(2026, 3, 1), date(2026, 3, 31))}
    expected = {inv.identity: inv for inv in [*delivered, red]}
    assert set(items) == set(expected)
    for identity, invoice in expected.items():
        item = items[identity]
        assert item.content_hash == content_hash(invoice)
        assert item.issue_date == invoice.issue_date
        assert item.gross == invoice.totals.gross
        assert item.number == invoice.number
        assert item.remote_ref
    assert items[red.identity].gross == Decimal("-113.00")
    everything = {i.identity for i in erp.inventory()}
    assert outside.identity in everything and set(expected) <= everything


# ---------------------------------------------------------------------------------------------------
# Checkpoint resume (erp.sql is the ERP connector that is a source)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(params=["postgresql", "mariadb"])
def sql_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgresql":
        if not port_open("127.0.0.1", 5432):
            server_missing("PostgreSQL at 127.0.0.1:5432", PG_START)
        yield from _sql_backend(PG_URL, "postgresql", PG_START)
    else:
        if not port_open("127.0.0.1", 3306):
            server_missing("MariaDB at 127.0.0.1:3306", MARIADB_START)
        yield from _sql_backend(MARIADB_URL, "mariadb", MARIADB_START)


def _insert_rows(backend: Backend, rows: list[dict[str, Any]]) -> None:
    table = backend.settings["outbound"]["table"]
    engine = sa.create_engine(backend.settings["url"])
    try:
        with engine.begin() as conn:
            for row in rows:
                columns = ", ".join(row)
                values = ", ".join(f":{k}" for k in row)
                conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({values})"), row)
    finally:
        engine.dispose()


def _sql(backend: Backend, statement: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(backend.settings["url"])
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def _row(order_no: str, gross: str = "113.00") -> dict[str, Any]:
    net = (Decimal(gross) / Decimal("1.13")).quantize(Decimal("0.01"))
    tax = Decimal(gross) - net
    lines = (
        f'[{{"name": "*信息技术服务*维护", "quantity": "1", "unit_price": "{net}", '
        f'"amount": "{net}", "tax_rate": "0.13", "tax_amount": "{tax}"}}]'
    )
    return {
        "order_no": order_no,
        "kind": "invoice",
        "issue_date": date(2026, 10, 5),
        "currency": "CNY",
        "seller_name": "上海示例科技有限公司",
        "seller_tax_id": SELLER,
        "buyer_name": "北京客户有限公司",
        "buyer_tax_id": BUYER,
        "net": net,
        "tax": tax,
        "gross": Decimal(gross),
        "invoice_lines": lines,
    }


def test_checkpoint_resume_never_yields_a_row_twice(sql_backend: Backend) -> None:
    table = sql_backend.settings["outbound"]["table"]
    _insert_rows(sql_backend, [_row("SO1"), _row("SO2"), _row("SO3")])  # one transaction: equal updated_at
    first = sql_backend.connector()
    seen = list(first.poll(None))
    assert [i.invoices[0][0].extra["order_no"] for i in seen] == ["SO1", "SO2", "SO3"]
    assert all(i.key.startswith("row:") and i.invoices[0][1].media_type == "application/json" for i in seen)
    for incoming in seen:
        first.commit(incoming, IntakeOutcome(accepted=1))
    checkpoint = seen[-1].checkpoint
    first.close()

    resumed = sql_backend.connector()
    assert list(resumed.poll(checkpoint)) == []
    assert [r[0] for r in _sql(sql_backend, f"SELECT status FROM {table} ORDER BY id")] == ["PICKED"] * 3

    # The ERP changes SO1 (sets it back to NEW, bumps updated_at) and adds SO4.
    _sql(
        sql_backend,
        f"UPDATE {table} SET status = 'NEW', gross = 226.00, net = 200.00, tax = 26.00, "
        f"invoice_lines = :lines, updated_at = CURRENT_TIMESTAMP(6) WHERE order_no = 'SO1'",
        lines=_row("x", "226.00")["invoice_lines"],
    )
    _insert_rows(sql_backend, [_row("SO4")])
    again = list(resumed.poll(checkpoint))
    assert sorted(i.invoices[0][0].extra["order_no"] for i in again) == ["SO1", "SO4"]
    changed = next(i for i in again if i.invoices[0][0].extra["order_no"] == "SO1")
    assert changed.invoices[0][0].totals.gross == Decimal("226.00")
    assert content_hash(changed.invoices[0][0]) != content_hash(seen[0].invoices[0][0])
    # Refused by the hub (a dead letter): the row says so.
    for incoming in again:
        resumed.commit(incoming, IntakeOutcome(accepted=0, dead_letters=1))
    statuses = dict(
        (r[0], (r[1], r[2])) for r in _sql(sql_backend, f"SELECT order_no, status, error FROM {table}")
    )
    assert statuses["SO1"][0] == "ERROR" and "dead letter" in statuses["SO1"][1]
    assert statuses["SO2"] == ("PICKED", None)
    assert list(sql_backend.connector().poll(again[-1].checkpoint)) == []
