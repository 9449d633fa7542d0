"""The conformance kit itself: it catches broken connectors with a message that says what to fix, and
its fakes (mock_sink, mock_source) work in a real hub."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

import hub
from hub.testing import ConnectorContract, HubHarness, delivery_request, golden_for, mock_sink, mock_source
from hub.testing_golden import golden_set

Settings = Callable[..., dict[str, Any]]


class NaiveSettings(hub.ConnectorSettings):
    path: Path
    api_key: SecretStr = SecretStr("sk-live-0000-secret")
    mode: str | None = None


class NaiveSink(hub.Sink, hub.Inventory):
    """Appends a record for every call — the classic bug a retry turns into a duplicate invoice."""

    type_name: ClassVar[str] = "test.naive"
    Settings = NaiveSettings
    settings: NaiveSettings

    def _records(self) -> list[dict[str, Any]]:
        p = self.settings.path
        return json.loads(p.read_text()) if p.exists() else []

    def deliver(self, request: hub.DeliveryRequest) -> hub.Receipt:
        if self.settings.mode == "down":
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        if self.settings.mode == "permanent":
            seller = request.invoice.seller
            raise hub.PermanentError(f"refused: account {seller.bank_account} blocked", code="E42")
        records = self._records()
        records.append(
            {
                "identity": request.event.identity,
                "hash": request.event.content_hash,
                "date": request.invoice.issue_date.isoformat(),
            }
        )
        self.settings.path.write_text(json.dumps(records))
        return hub.Receipt(remote_ref=str(len(records)))

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[hub.InventoryItem]:
        for r in self._records():
            yield hub.InventoryItem(r["identity"], r["hash"], date.fromisoformat(r["date"]))

    def health(self) -> hub.Health:
        return hub.Health(self.settings.mode != "down", "down" if self.settings.mode == "down" else "ok")


class NaiveContract(ConnectorContract):
    connector_type = NaiveSink
    failure_modes = frozenset({"down", "permanent"})


def _settings(tmp_path: Path) -> Settings:
    def settings(failure: str | None = None) -> dict[str, Any]:
        return {"path": tmp_path / "records.json", "mode": failure}

    return settings


def test_kit_catches_a_sink_that_delivers_twice_for_one_key(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as caught:
        NaiveContract().test_sink_same_key_twice_one_record(_settings(tmp_path), tmp_path)
    message = str(caught.value)
    assert "holds 3 records for CN:26312000000012345678" in message
    assert "Fix: look the idempotency key up before creating the record" in message


def test_kit_catches_an_untranslated_exception(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception) as caught:
        NaiveContract().test_sink_down_dependency_is_transient(_settings(tmp_path), tmp_path)
    message = str(caught.value)
    assert "raised builtins.ConnectionRefusedError" in message
    assert "raise TransientError(...) from exc" in message


def test_kit_catches_a_bank_account_in_a_dead_letter(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as caught:
        NaiveContract().test_no_secrets_in_logs_or_dead_letters(_settings(tmp_path), tmp_path)
    message = str(caught.value)
    assert "appears in a" in message and "bank details" in message


def test_kit_catches_a_plain_str_secret_setting() -> None:
    class LeakySettings(hub.ConnectorSettings):
        url: str
        api_token: str

    class Leaky(hub.Sink):
        type_name: ClassVar[str] = "test.leaky"
        Settings = LeakySettings

    class LeakyContract(ConnectorContract):
        connector_type = Leaky

    with pytest.raises(AssertionError, match=r"settings \['api_token'\].*SecretStr"):
        LeakyContract().test_secret_settings_are_secretstr()


def test_kit_catches_a_declared_role_the_class_does_not_implement() -> None:
    class Liar(hub.Sink):
        type_name: ClassVar[str] = "test.liar"
        capabilities = hub.Capabilities(roles=frozenset({"sink", "inventory"}))

    class LiarContract(ConnectorContract):
        connector_type = Liar

    with pytest.raises(
        AssertionError, match=r"declares the inventory role but does not subclass hub\.Inventory"
    ):
        LiarContract().test_declares_type_settings_and_api()


def test_capabilities_choose_the_golden_items() -> None:
    everything = golden_for(hub.Capabilities())
    assert not any(i.invoice.is_red_letter for i in everything)
    with_red = golden_for(hub.Capabilities(red_letter=True))
    assert len(with_red) == len(golden_set()) == len(everything) + 1
    cn_only = golden_for(hub.Capabilities(formats=frozenset({"cn.digital"})))
    assert {i.invoice.kind.value for i in cn_only} == {"cn.digital.special", "cn.digital.ordinary"}
    eu = golden_for(hub.Capabilities(formats=frozenset({"en16931"})))
    assert {i.invoice.kind.value for i in eu} == {"invoice", "credit_note"}
    assert {i.invoice.currency for i in eu} == {"EUR", "GBP", "USD"}


def test_golden_set_covers_what_the_kit_promises() -> None:
    items = golden_set()
    kinds = {i.invoice.kind for i in items}
    assert kinds == set(hub.InvoiceKind) - {hub.InvoiceKind.CN_LEGACY_ORDINARY}
    ubl = [i for i in items if "ubl" in i.tags]
    assert len({i.invoice.number for i in ubl}) == 1 and len({i.identity for i in ubl}) == 2
    assert any(i.attachment is not None and i.attachment.content.startswith(b"%PDF-") for i in items)
    red = next(i for i in items if i.invoice.is_red_letter)
    assert red.invoice.reverses == items[0].invoice.number and red.invoice.totals.gross < 0
    with_parent = [i for i in items if i.attachment is not None]
    assert all(i.original.parent_sha256 == i.attachment.sha256 for i in with_parent if i.attachment)


def test_mock_sink_and_source_in_a_real_hub(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(request: hub.DeliveryRequest) -> hub.Receipt:
        calls.append(request.idempotency_key)
        if calls.count(request.idempotency_key) == 1:
            raise hub.RateLimited("429", retry_after=0.2, remote_status=429)
        return hub.Receipt(remote_ref=f"R-{request.invoice.number}")

    items = golden_set()[:3]
    source = mock_source(
        [hub.Incoming(documents=[], key=i.name, invoices=[(i.invoice, i.original)]) for i in items]
    )
    sink = mock_sink(handler)
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": sink.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
    )
    summary = harness.run(timeout=30)
    assert summary["received"] == 3 and summary["delivered"] == 3 and summary["retried"] == 3
    assert len(sink.requests) == 6 and len(sink.accepted) == 3
    assert [key for key, _ in source.committed] == [i.name for i in items]
    rows = harness.deliveries("out")
    assert {r["remote_ref"] for r in rows} == {f"R-{i.invoice.number}" for i in items}
    # the second hub run resumes after the mock source's checkpoint: nothing is handed in twice
    again = harness.run(timeout=30)
    assert again["received"] == 0


def test_delivery_request_uses_the_status_key_for_a_status_change() -> None:
    item = golden_set()[0]
    changed = item.invoice.model_copy(update={"status": hub.InvoiceStatus.RED_LETTERED})
    request = delivery_request(changed, event_type="invoice.status_changed")
    assert request.idempotency_key == f"{item.content_hash}:red_lettered"
    assert (
        delivery_request(item.invoice, documents=item.documents).documents[1].media_type == "application/pdf"
    )


class TestFactoryFixture:
    """A vendor's own test with the plugin's ``hub_connector_factory`` fixture (any test class with a
    ``connector_type``; in a ConnectorContract subclass it sits beside the kit's tests)."""

    connector_type = NaiveSink

    @pytest.fixture
    def hub_connector_settings(self, tmp_path: Path) -> Settings:
        return _settings(tmp_path)

    def test_factory_builds_fresh_connectors_of_the_class(
        self, hub_connector_factory: Callable[..., Any], tmp_path: Path
    ) -> None:
        healthy, down = hub_connector_factory(), hub_connector_factory("down")
        assert isinstance(healthy, NaiveSink) and healthy is not down
        assert healthy.health().ok and not down.health().ok
        healthy.deliver(delivery_request(golden_set()[0].invoice))
        assert len(list(hub_connector_factory().inventory())) == 1
