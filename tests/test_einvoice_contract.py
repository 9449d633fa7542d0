"""The conformance kit (``hub.testing.ConnectorContract``) over both e-invoice platform connectors.

The kit's settings, health, error-class, dead-letter and secrets checks run as they are, against the
sandboxes over real HTTP. Its delivery checks drive the golden set, which holds invoices that were
*issued already* (by other sellers, in EUR/GBP/USD): an issuing platform must refuse every one of them
(``already_issued``, foreign currency), so those checks are overridden here with the same contract on
issue requests this account can issue: idempotent delivery across a restart, a real hub delivering
and inventory agreeing with the ledger, a transient failure retried, Retry-After honoured. The rest
lives in ``test_einvoice_platforms.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub import Incoming, InvoiceKind, PermanentError
from hub.testing import ConnectorContract, HubHarness, delivery_request, mock_source
from tests.sandbox_server import run_asgi
from tests.test_einvoice_platforms import (
    APP_KEY,
    APP_SECRET,
    SELLER_TAX,
    connector_class,
    create_sandbox,
    make_invoice,
)

pytestmark = pytest.mark.integration

MODES = {
    None: {},
    "transient": {"error_rate": 1.0},
    "rate_limited": {"rate_429": 1.0, "burst_length": 1, "retry_after": 1},
    "permanent": {},
}


def _closed_port() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _fixtures(platform: str) -> tuple[Any, Any]:
    @pytest.fixture(scope="class")
    @classmethod
    def sandbox_urls(cls: Any) -> Iterator[dict[str | None, str]]:
        with (
            run_asgi(create_sandbox(platform, issue_delay=0.02)) as ok_url,
            run_asgi(create_sandbox(platform, faults=MODES["transient"])) as transient_url,
            run_asgi(create_sandbox(platform, faults=MODES["rate_limited"])) as limited_url,
        ):
            yield {
                None: ok_url,
                "permanent": ok_url,
                "transient": transient_url,
                "rate_limited": limited_url,
                "down": _closed_port(),
            }

    @pytest.fixture
    def hub_connector_settings(
        self: Any, sandbox_urls: dict[str | None, str]
    ) -> Callable[[str | None], dict[str, Any]]:
        def settings(failure: str | None = None) -> dict[str, Any]:
            return {
                "base_url": sandbox_urls[failure],
                "app_key": APP_KEY,
                "app_secret": APP_SECRET,
                "user_tax": SELLER_TAX,
                "poll_interval": 0.02,
                "poll_budget": 3,
                "read_timeout": 2,
                "connect_timeout": 1,
            }

        return settings

    return sandbox_urls, hub_connector_settings


class _Contract(ConnectorContract):
    failure_modes = frozenset({"down", "transient", "rate_limited", "permanent"})
    invalid_settings = (
        ({"base_url": "ftp://example.org"}, "base_url"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"rate_limit": -1}, "rate_limit"),
        ({"order_prefix": "has space"}, "order_prefix"),
    )
    secret_values = (APP_KEY, APP_SECRET)
    max_retry_after = 2.0

    # -- the delivery checks, on issue requests ----------------------------------------------------
    def test_sink_delivers_every_golden_invoice(
        self, hub_connector_settings: Callable[..., dict[str, Any]], tmp_path: Path
    ) -> None:
        with self.connector(hub_connector_settings, tmp_path) as conn:
            for item in self.golden():
                with pytest.raises(PermanentError) as caught:
                    conn.deliver(delivery_request(item.invoice, documents=item.documents))
                assert caught.value.code in {"already_issued", "invalid_invoice"}, (item.name, caught.value)
            receipt = conn.deliver(delivery_request(make_invoice(1)))
        assert receipt.remote_ref and receipt.outputs

    def test_sink_same_key_twice_one_record(
        self, hub_connector_settings: Callable[..., dict[str, Any]], tmp_path: Path
    ) -> None:
        settings = hub_connector_settings()
        invoices = [make_invoice(n) for n in (11, 12)]
        numbers, orders = set(), set()
        for invoice in invoices:
            first = self.build(settings, tmp_path / "first")
            try:
                receipt = first.deliver(delivery_request(invoice))
                numbers.add(receipt.remote_ref)
                orders.add(receipt.detail["order_no"])
                assert first.deliver(delivery_request(invoice, attempt=2)).remote_ref == receipt.remote_ref
            finally:
                first.close()
            second = self.build(settings, tmp_path / "second")
            try:
                assert second.deliver(delivery_request(invoice, attempt=3)).remote_ref == receipt.remote_ref
            finally:
                second.close()
        reader = self.build(settings, tmp_path / "reader")
        try:
            held = [h.number for h in reader.inventory() if h.number in numbers]
        finally:
            reader.close()
        assert sorted(held) == sorted(numbers) and len(numbers) == len(invoices)
        stats = httpx.get(f"{settings['base_url']}/_sandbox/stats").json()
        assert {stats["issues_per_order"][o] for o in orders} == {1} and stats["double_issued"] == []

    # -- the same checks through a real hub, on issue requests ---------------------------------------
    @staticmethod
    def issue_request(n: int) -> Any:
        """An ERP's issue request that passes the hub's validation: the ERP's own number, no kind yet."""
        invoice = make_invoice(n, kind=InvoiceKind.INVOICE)
        invoice.number = f"SO{n:06d}"
        return invoice

    def issue_harness(self, root: Path, settings: dict[str, Any], invoices: list[Any]) -> HubHarness:
        source = mock_source(
            [Incoming(documents=[], key=inv.number, invoices=[(inv, None)]) for inv in invoices],
            type_name="einvoice.test.requests",
        )
        return HubHarness(
            root=root,
            connectors={
                "erp": {"type": source.type_name, "settings": {}},
                "dut": {"type": self.connector_type.type_name, "settings": settings},
            },
            routes=[{"name": "issue", "from": "erp", "to": "dut"}],
            types=[source, self.connector_type],
        )

    def test_hub_delivers_golden_set_and_inventory_agrees(
        self, hub_connector_settings: Callable[..., dict[str, Any]], tmp_path: Path
    ) -> None:
        settings = hub_connector_settings()
        invoices = [self.issue_request(n) for n in (21, 22, 23)]
        harness = self.issue_harness(tmp_path / "hub", settings, invoices)
        harness.run(timeout=self.hub_timeout)
        rows = harness.deliveries("dut")
        assert sorted(r["state"] for r in rows) == ["delivered"] * 3, rows
        with self.connector(hub_connector_settings, tmp_path, tag="reader") as reader:
            held = {item.number: item for item in reader.inventory()}
        for row in rows:
            item = held[row["remote_ref"]]  # what the ledger says was issued, the platform lists
            assert item.identity == f"CN:{row['remote_ref']}" and item.currency == "CNY"
            assert item.gross == next(i.totals.gross for i in invoices if i.identity == row["identity"])

    def test_inventory_date_filter(
        self, hub_connector_settings: Callable[..., dict[str, Any]], tmp_path: Path
    ) -> None:
        pytest.skip(
            "the platform dates an invoice on the day it issues it, not by the request's date: "
            "test_inventory_by_date_range checks the range on issued invoices"
        )

    def test_hub_retries_transient_failure(
        self, hub_connector_settings: Callable[..., dict[str, Any]], tmp_path: Path
    ) -> None:
        platform = self.connector_type.platform
        with run_asgi(create_sandbox(platform, issue_delay=0.02, faults={"force_5xx": 1})) as url:
            harness = self.issue_harness(
                tmp_path / "hub", {**hub_connector_settings(), "base_url": url}, [self.issue_request(31)]
            )
            harness.run(timeout=self.hub_timeout)
            stats = httpx.get(f"{url}/_sandbox/stats").json()
        [row] = harness.deliveries("dut")
        attempts = harness.attempts(row["id"])
        assert row["state"] == "delivered" and attempts[0]["outcome"] == "retrying"
        assert attempts[0]["error_class"] == "TransientError" and attempts[0]["remote_status"] == 503
        assert stats["issued"] == 1

    def test_hub_honours_retry_after(
        self, hub_connector_settings: Callable[..., dict[str, Any]], tmp_path: Path
    ) -> None:
        platform = self.connector_type.platform
        faults = {"force_429": 1, "retry_after": 1}
        with run_asgi(create_sandbox(platform, issue_delay=0.02, faults=faults)) as url:
            harness = self.issue_harness(
                tmp_path / "hub", {**hub_connector_settings(), "base_url": url}, [self.issue_request(32)]
            )
            harness.run(timeout=self.hub_timeout)
        [row] = harness.deliveries("dut")
        first, second = harness.attempts(row["id"])[:2]
        assert row["state"] == "delivered"
        assert first["error_class"] == "RateLimited" and float(first["retry_after"]) == 1.0
        assert (second["started_at"] - first["started_at"]).total_seconds() >= 1.0


class TestNuonuoContract(_Contract):
    connector_type = connector_class("nuonuo")
    sandbox_urls, hub_connector_settings = _fixtures("nuonuo")


class TestBaiwangContract(_Contract):
    connector_type = connector_class("baiwang")
    sandbox_urls, hub_connector_settings = _fixtures("baiwang")
