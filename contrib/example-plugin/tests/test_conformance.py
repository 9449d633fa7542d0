"""Acme Ledger against the hub's conformance kit (hub.testing.ConnectorContract), over real HTTP to the
sandbox (invoice_hub_acme_ledger.sandbox) on a free loopback port, one fresh sandbox per test."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import pytest
from hub import PermanentError
from hub.plugins import build_plugins
from hub.testing import ConnectorContract, delivery_request
from hub.testing_golden import golden_set
from starlette.applications import Starlette

import invoice_hub_acme_ledger
from invoice_hub_acme_ledger.connector import AcmeLedger
from invoice_hub_acme_ledger.sandbox import create_app, serve

TOKEN = "acme-test-token-5b1e9c"


@dataclass
class Sandbox:
    url: str
    app: Starlette

    def fail_with(self, mode: str | None) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json={"mode": mode}, timeout=5).raise_for_status()


@pytest.fixture
def acme_sandbox() -> Iterator[Sandbox]:
    app = create_app(TOKEN)
    with serve(app) as url:
        yield Sandbox(url, app)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hub_connector_settings(acme_sandbox: Sandbox) -> Callable[..., dict[str, Any]]:
    def settings(failure: str | None = None) -> dict[str, Any]:
        if failure == "down":
            return {"base_url": f"http://127.0.0.1:{_closed_port()}", "token": TOKEN, "timeout": 2}
        acme_sandbox.fail_with(failure)
        return {"base_url": acme_sandbox.url, "token": TOKEN, "timeout": 5}

    return settings


class TestAcmeLedger(ConnectorContract):
    connector_type = AcmeLedger
    failure_modes = frozenset({"down", "transient", "permanent", "rate_limited"})
    invalid_settings: ClassVar[list[tuple[dict[str, Any], str]]] = [
        ({"timeout": 0}, "timeout"),
        ({"base_url": "not a url"}, "base_url"),
    ]


def test_plugin_registers_the_connector_type() -> None:
    # allowed=[] keeps installed entry points out (this package's own too, once `pip install -e`'d),
    # so the module is registered once, here, whether the package is installed or not
    plugins = build_plugins(allowed=[], extra=[("under-test", invoice_hub_acme_ledger)])
    assert plugins.connector_types["acme.ledger"] is AcmeLedger
    assert plugins.infos["under-test"].connector_types == ["acme.ledger"]
    assert "hub_register_connector_types" in plugins.infos["under-test"].hooks


def test_wrong_token_is_a_permanent_error_with_acme_code(acme_sandbox: Sandbox, tmp_path: Any) -> None:
    settings = AcmeLedger.Settings.model_validate({"base_url": acme_sandbox.url, "token": "wrong"})
    conn = AcmeLedger(settings, __import__("hub").ConnectorContext(name="acme", data_dir=tmp_path))
    try:
        with pytest.raises(PermanentError) as caught:
            conn.deliver(delivery_request(golden_set()[0].invoice))
    finally:
        conn.close()
    assert caught.value.code == "E_UNAUTHORIZED" and caught.value.remote_status == 401


def test_a_retry_returns_the_record_created_first(acme_sandbox: Sandbox, tmp_path: Any) -> None:
    from hub import ConnectorContext

    settings = AcmeLedger.Settings.model_validate({"base_url": acme_sandbox.url, "token": TOKEN})
    item = golden_set()[0]
    with AcmeLedger(settings, ConnectorContext(name="acme", data_dir=tmp_path)) as conn:
        first = conn.deliver(delivery_request(item.invoice, documents=item.documents))
        again = conn.deliver(delivery_request(item.invoice, documents=item.documents, attempt=2))
    assert first.remote_ref == again.remote_ref == "AL-000001"
    assert (first.detail, again.detail) == ({"replayed": False}, {"replayed": True})
