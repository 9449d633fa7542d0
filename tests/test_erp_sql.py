"""``erp.sql`` beyond the shared contract: write-back of issued invoices, the example schema files, rows
that do not map, health, the create-tables command, and the whole flow through ``hub run``.

Real PostgreSQL (127.0.0.1:5432, db ``test``) and MariaDB (127.0.0.1:3306, db ``test``); each test
works in tables with a fresh prefix and drops them afterwards.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from invoice_hub_plugins.erp_sql import (
    ROW_MEDIA_TYPE,
    ErpSqlConnector,
    Settings,
    create_tables,
    ddl,
    drop_tables,
    main,
)

from hub import ConnectorContext, DeliveryRequest, Event, IntakeOutcome, Invoice, InvoiceStatus
from hub.canonical import content_hash
from tests.conftest import port_open, run_hub, server_missing, write_hub_yaml
from tests.sandbox_server import run_asgi

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}
PORTS = {"postgresql": 5432, "mariadb": 3306}
START = {
    "postgresql": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mariadb": "service mariadb start  (or: mysqld_safe &)",
}
SELLER = "91110000600037341L"
BUYER = "91310000MA1FL0LP00"
LINES = (
    '[{"name": "*信息技术服务*软件维护", "quantity": "1", "unit_price": "100.00", "amount": "100.00",'
    ' "tax_rate": "0.13", "tax_amount": "13.00"}]'
)


@dataclass
class Db:
    kind: str
    url: str
    engine: sa.Engine
    prefix: str

    @property
    def outbound(self) -> str:
        return f"{self.prefix}_out"

    @property
    def inbound(self) -> str:
        return f"{self.prefix}_in"

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {
            "url": self.url,
            "outbound": {"table": self.outbound},
            "inbound": {"table": self.inbound},
        } | extra

    def connector(self, name: str = "erp", **extra: Any) -> ErpSqlConnector:
        model = Settings.model_validate(self.settings(**extra))
        return ErpSqlConnector(model, ConnectorContext(name=name, data_dir=Path("/nonexistent")))

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []

    def insert_row(self, order_no: str, **values: Any) -> None:
        row = {
            "order_no": order_no,
            "kind": "invoice",
            "issue_date": date(2026, 11, 20),
            "seller_name": "上海示例科技有限公司",
            "seller_tax_id": SELLER,
            "buyer_name": "北京客户有限公司",
            "buyer_tax_id": BUYER,
            "net": Decimal("100.00"),
            "tax": Decimal("13.00"),
            "gross": Decimal("113.00"),
            "invoice_lines": LINES,
        } | values
        columns = ", ".join(row)
        self.sql(f"INSERT INTO {self.outbound} ({columns}) VALUES ({', '.join(':' + c for c in row)})", **row)

    def outbound_row(self, order_no: str) -> dict[str, Any]:
        rows = self.sql(f"SELECT * FROM {self.outbound} WHERE order_no = :o", o=order_no)
        return dict(rows[0]._mapping)


@pytest.fixture(params=["postgresql", "mariadb"])
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    kind = request.param
    if not port_open("127.0.0.1", PORTS[kind]):
        server_missing(f"{kind} at 127.0.0.1:{PORTS[kind]}", START[kind])
    engine = sa.create_engine(URLS[kind])
    prefix = f"t{uuid.uuid4().hex[:10]}"
    found = Db(kind, URLS[kind], engine, prefix)
    runner = CliRunner()
    result = runner.invoke(
        main, ["create-tables", URLS[kind], "--outbound", found.outbound, "--inbound", found.inbound]
    )
    assert result.exit_code == 0, result.output
    assert found.outbound in result.output and "postgres@" not in result.output.split("in ", 1)[0]
    try:
        yield found
    finally:
        drop_tables(Settings.model_validate(found.settings()))
        engine.dispose()


def issued_copy(row_invoice: Invoice, number: str, *, status: str = "issued") -> Invoice:
    """What an e-invoice platform connector hands back: the request's content and extra, a real number."""
    data = row_invoice.model_dump(mode="json")
    data.update(
        kind="cn.digital.ordinary",
        number=number,
        status=status,
        extra={**row_invoice.extra, "platform": "nuonuo", "platform_serial": "S1", "requested_as": "x"},
    )
    return Invoice.model_validate(data)


def request_for(invoice: Invoice, *, source: str, event_type: str = "invoice.received") -> DeliveryRequest:
    event = Event(
        type=event_type,  # type: ignore[arg-type]
        source=source,
        identity=invoice.identity,
        content_hash=content_hash(invoice),
        invoice=invoice,
    )
    return DeliveryRequest(event=event, destination="erp", idempotency_key=event.idempotency_key, attempt=1)


# ---------------------------------------------------------------------------------------------------
def test_issued_invoice_is_written_back_to_its_row(db: Db) -> None:
    db.insert_row("SO-1")
    db.insert_row("SO-2")
    with db.connector() as erp:
        incoming = list(erp.poll(None))
        for item in incoming:
            erp.commit(item, IntakeOutcome(accepted=1))
        request_invoice = incoming[0].invoices[0][0]
        assert request_invoice.extra["issue_request"] is True  # no number yet: the order number stands in
        assert request_invoice.extra["order_no"] == "SO-1"
        # The request itself coming back to the ERP (a route back to the source) writes nothing back.
        erp.deliver(request_for(request_invoice, source="erp"))
        assert db.outbound_row("SO-1")["status"] == "PICKED"

        issued = issued_copy(request_invoice, "26322000000000000101")
        receipt = erp.deliver(request_for(issued, source="nuonuo"))
        assert receipt.detail["written_back"] == 1
        row = db.outbound_row("SO-1")
        assert (row["status"], row["issued_number"], row["invoice_status"]) == (
            "DONE",
            issued.number,
            "issued",
        )
        assert row["issued_date"] == issued.issue_date and row["hub_ref"] == content_hash(issued)
        assert db.outbound_row("SO-2")["status"] == "PICKED"
        # A retry of the same delivery: no second inbound row, the row stays as it is.
        again = erp.deliver(request_for(issued, source="nuonuo"))
        assert again.remote_ref == receipt.remote_ref and again.detail["created"] is False
        inbound = db.sql(
            f"SELECT identity, source, version FROM {db.inbound} WHERE identity = :i", i=issued.identity
        )
        assert [tuple(r) for r in inbound] == [(issued.identity, "nuonuo", 1)]

        # Later the invoice is voided on the platform: a status change reaches the same row.
        void = Invoice.model_validate({**issued.model_dump(), "status": InvoiceStatus.VOID})
        erp.deliver(request_for(void, source="nuonuo", event_type="invoice.status_changed"))
        row = db.outbound_row("SO-1")
        assert (row["status"], row["invoice_status"], row["issued_number"]) == ("DONE", "void", issued.number)

        # Matched by order number when the platform did not keep the row id.
        second = incoming[1].invoices[0][0]
        extra = {k: v for k, v in second.extra.items() if k not in {"source_row", "source_table"}}
        by_order = issued_copy(
            Invoice.model_validate({**second.model_dump(), "extra": extra}), "26322000000000000102"
        )
        assert erp.deliver(request_for(by_order, source="nuonuo")).detail["written_back"] == 1
        assert db.outbound_row("SO-2")["issued_number"] == "26322000000000000102"
        # Nothing the source reads again: written-back rows are not NEW.
        assert list(erp.poll(None)) == []


def test_concurrent_deliveries_of_one_key_make_one_row(db: Db) -> None:
    """Workers racing on the same key: one row, one "created", and no error (an ERP under load)."""
    from tests.test_erp_contract import make_invoice
    from tests.test_erp_contract import request_for as delivery

    created: list[bool] = []
    errors: list[BaseException] = []
    with db.connector() as erp:
        for round_ in range(5):
            request = delivery(make_invoice(500 + round_))
            barrier = threading.Barrier(6)

            def deliver(request: DeliveryRequest = request, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    created.append(bool(erp.deliver(request).detail["created"]))
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=deliver) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    assert errors == []
    assert created.count(True) == 5 and len(created) == 30
    assert db.sql(f"SELECT COUNT(*) FROM {db.inbound}")[0][0] == 5


def test_row_that_does_not_map_is_kept_and_marked_error(db: Db) -> None:
    db.insert_row("SO-BAD", kind="no-such-kind")
    db.insert_row("SO-OK")
    with db.connector() as erp:
        bad, good = list(erp.poll(None))
        assert bad.invoices == [] and [d.media_type for d in bad.documents] == [ROW_MEDIA_TYPE]
        assert b'"SO-BAD"' in bad.documents[0].content  # the raw row is kept for the dead letter
        assert good.documents == [good.invoices[0][1]] and good.invoices[0][1] is not None
        assert good.invoices[0][1].media_type == "application/json"
        erp.commit(bad, IntakeOutcome(dead_letters=1))
        erp.commit(good, IntakeOutcome(accepted=1))
    row = db.outbound_row("SO-BAD")
    assert row["status"] == "ERROR"
    assert re.search(rf"{db.outbound} row \d+ does not map to a valid invoice: kind:", row["error"])
    assert db.outbound_row("SO-OK")["status"] == "PICKED"


def test_commit_leaves_a_row_the_erp_changed_meanwhile(db: Db) -> None:
    db.insert_row("SO-1")
    with db.connector() as erp:
        (item,) = list(erp.poll(None))
        # The ERP edits the row between the poll and the commit (new content, new updated_at).
        db.sql(
            f"UPDATE {db.outbound} SET gross = 226.00, updated_at = CURRENT_TIMESTAMP(6)"
            " WHERE order_no = 'SO-1'"
        )
        erp.commit(item, IntakeOutcome(accepted=1))
        assert db.outbound_row("SO-1")["status"] == "NEW"  # not marked: this version was never read
        (again,) = list(erp.poll(item.checkpoint))
        assert again.invoices[0][0].totals.gross == Decimal("226.00")


def test_a_row_committed_late_behind_the_cursor_is_still_read(db: Db) -> None:
    """A long ERP transaction commits a row whose updated_at is older than rows already read."""
    db.insert_row("SO-EARLY-READ", updated_at=datetime(2026, 11, 20, 10, 0, 5))
    with db.connector() as erp:
        (first,) = list(erp.poll(None))
        erp.commit(first, IntakeOutcome(accepted=1))
        db.insert_row("SO-LATE", updated_at=datetime(2026, 11, 20, 10, 0, 1))
        (late,) = list(erp.poll(first.checkpoint))
        assert late.invoices[0][0].extra["order_no"] == "SO-LATE"
        assert late.checkpoint is None  # the cursor does not move back
        erp.commit(late, IntakeOutcome(accepted=1))
        assert list(erp.poll(first.checkpoint)) == []
    assert db.outbound_row("SO-LATE")["status"] == "PICKED"
    with db.connector(outbound={"table": db.outbound, "rescan_behind": False}) as erp:
        db.insert_row("SO-LATER", updated_at=datetime(2026, 11, 20, 10, 0, 2))
        assert list(erp.poll(first.checkpoint)) == []  # what a cursor alone would do


def test_status_write_does_not_bump_an_on_update_timestamp(db: Db) -> None:
    """MariaDB's ON UPDATE CURRENT_TIMESTAMP (and kin) must not turn the hub's own write into a change."""
    if db.kind == "mariadb":
        db.sql(
            f"ALTER TABLE {db.outbound} MODIFY updated_at DATETIME(6) NOT NULL "
            "DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"
        )
    else:
        db.sql(
            f"CREATE FUNCTION {db.prefix}_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN NEW.updated_at := clock_timestamp(); "
            "END IF; RETURN NEW; END $$"
        )
        db.sql(
            f"CREATE TRIGGER {db.prefix}_touch BEFORE UPDATE ON {db.outbound} "
            f"FOR EACH ROW EXECUTE FUNCTION {db.prefix}_touch()"
        )
    try:
        db.insert_row("SO-T", updated_at=datetime(2026, 11, 20, 9, 0, 0))
        with db.connector() as erp:
            (item,) = list(erp.poll(None))
            erp.commit(item, IntakeOutcome(accepted=1))
            row = db.outbound_row("SO-T")
            assert row["status"] == "PICKED"
            if db.kind == "mariadb":
                assert row["updated_at"] == datetime(2026, 11, 20, 9, 0, 0)  # SET updated_at = updated_at
            # Either way the row is not read again: only rows waiting in pick_statuses are.
            assert list(erp.poll(item.checkpoint)) == [] and list(erp.poll(None)) == []
    finally:
        if db.kind == "postgresql":
            db.sql(f"DROP TRIGGER {db.prefix}_touch ON {db.outbound}")
            db.sql(f"DROP FUNCTION {db.prefix}_touch()")


def test_inventory_of_the_outbound_table_uses_the_issued_numbers(db: Db) -> None:
    db.insert_row("SO-A", issue_date=date(2026, 11, 2))
    db.insert_row("SO-B", issue_date=date(2026, 12, 2))
    db.sql(
        f"UPDATE {db.outbound} SET issued_number = '26322000000000000501', status = 'DONE'"
        " WHERE order_no = 'SO-A'"
    )
    with db.connector(inventory="outbound") as erp:
        november = list(erp.inventory(date(2026, 11, 1), date(2026, 11, 30)))
        everything = list(erp.inventory())
    assert [(i.number, i.gross, i.issue_date) for i in november] == [
        ("26322000000000000501", Decimal("113.00"), date(2026, 11, 2))
    ]
    assert [i.number for i in everything] == ["26322000000000000501", "SO-B"]
    assert all(i.remote_ref and i.remote_ref.startswith(f"{db.outbound}:") for i in everything)


def test_tables_in_a_postgresql_schema(pg: Db) -> None:
    schema, out, inb = f"{pg.prefix}_erp", f"{pg.prefix}_s_out", f"{pg.prefix}_s_in"
    pg.sql(f"CREATE SCHEMA {schema}")
    try:
        settings = Settings.model_validate(
            {"url": pg.url, "schema": schema, "outbound": {"table": out}, "inbound": {"table": inb}}
        )
        create_tables(settings)
        with ErpSqlConnector(settings, ConnectorContext(name="erp", data_dir=Path("/nonexistent"))) as erp:
            assert erp.health().ok
            pg.sql(
                f"INSERT INTO {schema}.{out} (order_no, kind, invoice_number, issue_date, seller_name,"
                " seller_tax_id, buyer_name, buyer_tax_id, net, tax, gross, invoice_lines) VALUES ('SO-S',"
                f" 'cn.digital.ordinary', '26322000000000000601', '2026-11-20', 'S', '{SELLER}', 'B',"
                f" '{BUYER}', 100, 13, 113, :l)",
                l=LINES,
            )
            (item,) = list(erp.poll(None))
            erp.deliver(request_for(item.invoices[0][0], source="inbox"))
        assert pg.sql(f"SELECT COUNT(*) FROM {schema}.{inb}")[0][0] == 1
        assert pg.sql(f"SELECT to_regclass('public.{out}')")[0][0] is None  # created in the schema only
    finally:
        pg.sql(f"DROP SCHEMA {schema} CASCADE")


def test_payload_column_and_custom_mapping(db: Db) -> None:
    """A whole invoice in the JSON payload column; mapped columns override it."""
    payload = json.dumps(
        {
            "kind": "cn.digital.special",
            "number": "26322000000000000201",
            "issue_date": "2026-11-21",
            "seller": {"name": "甲公司", "tax_id": SELLER},
            "buyer": {"name": "乙公司", "tax_id": BUYER},
            "lines": [{"name": "*服务*咨询", "amount": "200.00", "tax_rate": "6%", "tax_amount": "12.00"}],
            "totals": {"net": "200.00", "tax": "12.00", "gross": "212.00"},
        },
        ensure_ascii=False,
    )
    db.sql(f"INSERT INTO {db.outbound} (order_no, payload, remark) VALUES ('SO-P', :p, '加急')", p=payload)
    with db.connector(
        outbound={"table": db.outbound, "fields": {"extra.order_no": "order_no", "extra.note": "remark"}}
    ) as erp:
        (item,) = list(erp.poll(None))
    invoice = item.invoices[0][0]
    assert invoice.identity == "CN:26322000000000000201" and invoice.kind.value == "cn.digital.special"
    assert invoice.lines[0].tax_rate == Decimal("0.06") and invoice.totals.gross == Decimal("212.00")
    assert invoice.extra["note"] == "加急" and "issue_request" not in invoice.extra


def test_health_names_a_missing_table_and_settings_errors_name_the_field(db: Db) -> None:
    with db.connector() as erp:
        assert erp.health().ok
    with db.connector(inbound={"table": f"{db.prefix}_missing"}) as erp:
        health = erp.health()
    assert not health.ok and f"{db.prefix}_missing" in health.detail
    with pytest.raises(Exception) as caught:
        Settings.model_validate(db.settings(outbound={"table": db.outbound, "fields": {"sellr.tax_id": "x"}}))
    assert "outbound" in str(caught.value) and "sellr.tax_id" in str(caught.value)
    with pytest.raises(Exception) as bad_url:
        Settings.model_validate({"url": "not a url"})
    assert "url" in str(bad_url.value)


def test_password_never_appears_in_health(pg: Db) -> None:
    db = pg
    url = "postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:5432/test"
    with ErpSqlConnector(
        Settings.model_validate(
            {"url": url, "outbound": {"table": db.outbound}, "inbound": {"table": db.inbound}}
        ),
        ConnectorContext(name="erp", data_dir=Path("/nonexistent")),
    ) as erp:
        detail = erp.health().detail
    assert "hunter2" not in detail and "***" in detail


def test_example_schema_files_make_working_tables(db: Db) -> None:
    sql_file = REPO / "contrib" / "erp_sql" / f"schema_{db.kind}.sql"
    text = sql_file.read_text(encoding="utf-8")
    text = (
        re.sub(r"--[^\n]*", "", text)
        .replace("hub_outbound", f"{db.prefix}_xo")
        .replace("hub_inbound", f"{db.prefix}_xi")
    )
    statements = [s.strip() for s in text.split(";") if s.strip()]
    with db.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    try:
        db.sql(
            f"INSERT INTO {db.prefix}_xo (order_no, kind, invoice_number, issue_date, seller_name,"
            " seller_tax_id, buyer_name, buyer_tax_id, net, tax, gross, invoice_lines)"
            " VALUES ('SO-X', 'cn.digital.ordinary', '26322000000000000301', '2026-11-20', 'S',"
            f" '{SELLER}', 'B', '{BUYER}', 100, 13, 113, :l)",
            l=LINES,
        )
        model = Settings.model_validate(
            {"url": db.url, "outbound": {"table": f"{db.prefix}_xo"}, "inbound": {"table": f"{db.prefix}_xi"}}
        )
        with ErpSqlConnector(model, ConnectorContext(name="erp", data_dir=Path("/nonexistent"))) as erp:
            assert erp.health().ok
            (item,) = list(erp.poll(None))
            invoice = item.invoices[0][0]
            assert invoice.identity == "CN:26322000000000000301"
            erp.commit(item, IntakeOutcome(accepted=1))
            receipt = erp.deliver(request_for(invoice, source="inbox"))
            assert receipt.detail["created"] is True
            items = list(erp.inventory(date(2026, 11, 1), date(2026, 11, 30)))
            assert [(i.identity, i.content_hash, i.gross) for i in items] == [
                (invoice.identity, content_hash(invoice), Decimal("113.00"))
            ]
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {db.prefix}_xo")
            conn.exec_driver_sql(f"DROP TABLE {db.prefix}_xi")


# ---------------------------------------------------------------------------------------------------
# Through a whole hub (`hub run --until-idle`)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def pg() -> Iterator[Db]:
    if not port_open("127.0.0.1", 5432):
        server_missing("PostgreSQL at 127.0.0.1:5432", START["postgresql"])
    engine = sa.create_engine(URLS["postgresql"])
    found = Db("postgresql", URLS["postgresql"], engine, f"t{uuid.uuid4().hex[:10]}")
    create_tables(Settings.model_validate(found.settings()))
    try:
        yield found
    finally:
        drop_tables(Settings.model_validate(found.settings()))
        engine.dispose()


@pytest.mark.slow
def test_hub_run_takes_a_staging_row_to_a_sink_and_marks_it(pg: Db, tmp_path: Path) -> None:
    config = {
        "connectors": {
            "erp": {"type": "erp.sql", "settings": pg.settings()},
            "rec": {"type": "recording", "settings": {"path": str(tmp_path / "rec.db")}},
        },
        "routes": [{"from": "erp", "to": "rec"}],
    }
    write_hub_yaml(tmp_path / "hub.yaml", config)
    drop_tables(Settings.model_validate(pg.settings()))
    made = run_hub("erp-sql", "create-tables", "erp", cwd=tmp_path).stdout  # from the hub.yaml mapping
    assert "erp: tables ready in postgresql+psycopg://postgres@127.0.0.1:5432/test" in made
    pg.insert_row("SO-E2E", kind="cn.digital.ordinary", invoice_number="26322000000000000401")
    result = run_hub("run", "--until-idle", "--quiet", cwd=tmp_path, timeout=120)
    assert "1 delivered" in result.stdout, result.stdout + result.stderr
    assert pg.outbound_row("SO-E2E")["status"] == "PICKED"
    with sqlite3.connect(tmp_path / "rec.db") as rec:
        received = rec.execute("SELECT identity, gross, count FROM received").fetchall()
    assert received == [("CN:26322000000000000401", "113.00", 1)]
    # A second run resumes from the stored checkpoint: nothing is read or delivered twice.
    again = run_hub("run", "--until-idle", "--quiet", cwd=tmp_path, timeout=120)
    assert "0 invoice(s) received" in again.stdout
    trace = run_hub("trace", "CN:26322000000000000401", cwd=tmp_path).stdout
    assert "from erp" in trace and "delivered" in trace


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["invoice", "cn.digital.ordinary"])
def test_hub_run_issues_a_staging_row_and_writes_the_number_back(pg: Db, tmp_path: Path, kind: str) -> None:
    """The issue's round trip: staging row → e-invoice platform sandbox → issued number back in the row."""
    from contrib.sandbox.nuonuo import create_app

    pg.insert_row("SO-ISSUE", issue_date=date.today(), kind=kind)
    app = create_app(app_key="hub-e2e", app_secret="hub-e2e-secret", issue_delay=0.05)
    with run_asgi(app) as url:
        config = {
            "connectors": {
                "erp": {"type": "erp.sql", "settings": pg.settings()},
                "platform": {
                    "type": "einvoice.nuonuo",
                    "settings": {
                        "base_url": url,
                        "app_key": "hub-e2e",
                        "app_secret": "hub-e2e-secret",
                        "user_tax": SELLER,
                        "poll_interval": 0.05,
                    },
                },
                "rec": {"type": "recording", "settings": {"path": str(tmp_path / "rec.db")}},
            },
            "routes": [{"from": "erp", "to": "platform"}, {"from": "platform", "to": ["erp", "rec"]}],
        }
        write_hub_yaml(tmp_path / "hub.yaml", config)
        result = run_hub("run", "--until-idle", "--quiet", cwd=tmp_path, timeout=120)
        stats = httpx.get(f"{url}/_sandbox/stats", timeout=5).json()
    row = pg.outbound_row("SO-ISSUE")
    assert row["status"] == "DONE", result.stdout + result.stderr
    assert re.fullmatch(r"\d{20}", row["issued_number"]) and row["invoice_status"] == "issued"
    inbound = pg.sql(f"SELECT identity, source FROM {pg.inbound} WHERE version = 1")
    assert [tuple(r) for r in inbound] == [(f"CN:{row['issued_number']}", "platform")]
    assert stats["issued"] == 1 and stats["double_issued"] == []


def test_readme_mapping_example_is_valid_settings() -> None:
    import yaml

    text = (REPO / "contrib" / "erp_sql" / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    config = yaml.safe_load(block.group(1).replace("${ERP_DB_PASSWORD}", "secret"))
    settings = Settings.model_validate(config["connectors"]["erp"]["settings"])
    assert settings.outbound is not None and settings.outbound.fields["lines"] == "FENTRYJSON"
    assert settings.statuses.done == "2"


def test_ddl_follows_the_mapping() -> None:
    settings = Settings.model_validate(
        {
            "url": "sqlite://",
            "outbound": {"table": "t_out", "status_column": "fstatus"},
            "inbound": {"table": "t_in"},
        }
    )
    postgresql, mariadb = ddl(settings, "postgresql"), ddl(settings, "mariadb")
    assert "CREATE TABLE t_out" in postgresql and "fstatus VARCHAR(16) DEFAULT 'NEW' NOT NULL" in postgresql
    assert "CONSTRAINT uq_t_in_key UNIQUE (idempotency_key)" in postgresql and "BIGSERIAL" in postgresql
    assert "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)" in mariadb and "AUTO_INCREMENT" in mariadb
    assert "CREATE INDEX ix_t_out_cursor ON t_out (fstatus, updated_at, id)" in mariadb
