"""Meta-tests of the plugin seam (as datasette has): every hook in hub/hookspecs.py is documented in
docs/plugins.md with its exact signature and has a ``test_hook_<name>`` test; ``hub.__all__`` is
complete and sorted (httpx style). Then one behaviour test per hook, through the real plugin manager
and a real hub."""

from __future__ import annotations

import ast
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import click
import pytest
from click.testing import CliRunner

import hub
from hub import hookimpl, hookspecs
from hub.errors import Problem
from hub.factory import invoice as factory_invoice
from hub.factory import invoice_json
from hub.plugins import build_plugins
from hub.testing import HubHarness, connector_plugin, mock_sink, mock_source
from hub.testing_golden import golden_set

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"


def _hookspec_signatures() -> dict[str, str]:
    """``name → "def name(args) -> returns"`` for every ``@hookspec`` function, from the source."""
    tree = ast.parse(Path(hookspecs.__file__).read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            ast.unparse(d) == "hookspec" or ast.unparse(d).startswith("hookspec(")
            for d in node.decorator_list
        ):
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            out[node.name] = f"def {node.name}({ast.unparse(node.args)}){returns}"
    return out


SIGNATURES = _hookspec_signatures()


def test_hookspecs_are_found() -> None:
    assert set(SIGNATURES) == {
        name for name in dir(hookspecs) if name.startswith("hub_") and callable(getattr(hookspecs, name))
    }
    assert len(SIGNATURES) >= 5


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    assert SIGNATURES[name] in guide, f"docs/plugins.md must show `{SIGNATURES[name]}`"
    assert f"### `{name}`" in guide, f"docs/plugins.md needs a section headed ### `{name}`"


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_hook_has_a_test(name: str) -> None:
    found = set()
    for path in (REPO / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_"):
                found.add(node.name.removeprefix("test_hook_"))
    assert name in found, f"no test named test_hook_{name} in tests/"


def _all_sort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 (isort-style) order: SCREAMING_CASE, then CamelCase, then the rest."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_public_api_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name, value in vars(hub).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    } | {"__version__"}
    assert set(hub.__all__) == public
    assert hub.__all__ == sorted(hub.__all__, key=_all_sort_key)
    assert len(hub.__all__) == len(set(hub.__all__))


# ---------------------------------------------------------------------------------------------------
# One behaviour test per hook
# ---------------------------------------------------------------------------------------------------
def test_hook_hub_register_connector_types() -> None:
    class Replacement(hub.Sink):
        type_name: ClassVar[str] = "recording"  # same name as the first-party sink: the later one wins

    plugins = build_plugins(extra=[("vendor", connector_plugin(Replacement))])
    assert plugins.connector_type("recording") is Replacement
    assert plugins.infos["vendor"].connector_types == ["recording"]
    assert "hub_register_connector_types" in plugins.infos["vendor"].hooks
    with pytest.raises(hub.PluginError, match=r"unknown connector type 'nope' \(known: .*recording"):
        plugins.connector_type("nope")

    class NotAConnector:
        type_name = "x"

    bad = build_plugins(extra=[("bad", connector_plugin(NotAConnector))])  # type: ignore[arg-type]
    [failure] = [f for f in bad.failures if f.name == "bad"]
    assert "not a Connector class" in (failure.error or "")


class CsvParser(hub.Parser):
    """``number;gross`` lines in a text/csv document, one Chinese digital ordinary invoice per line."""

    name = "test.csv"
    priority = 50

    def claims(self, document: hub.Document) -> bool:
        return document.media_type == "text/csv"

    def parse(self, document: hub.Document) -> hub.ParseResult:
        base = golden_set()[1].invoice  # cn-digital-ordinary
        out = []
        for line in document.content.decode().splitlines():
            number, gross = line.split(";")
            out.append(base.model_copy(update={"number": number, "lines": [], "totals": base.totals}))
            assert gross == str(base.totals.gross)
        return hub.ParseResult(invoices=out)


def test_hook_hub_register_parsers(tmp_path: Path) -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def hub_register_parsers() -> list[hub.Parser]:
            return [CsvParser()]

    plugins = build_plugins(extra=[("csv", Plugin())])
    assert plugins.infos["csv"].parsers == ["test.csv"]
    priorities = [p.priority for p in plugins.parsers]
    assert priorities == sorted(priorities, reverse=True)

    doc = hub.Document(
        content=b"26442000000000000001;200.00\n26442000000000000002;200.00", media_type="text/csv"
    )
    source = mock_source([hub.Incoming(documents=[doc], key="batch.csv")])
    sink = mock_sink()
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": sink.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
        extra_plugins=[("csv", Plugin())],
    )
    summary = harness.run(timeout=30)
    assert summary["received"] == 2 and summary["delivered"] == 2
    assert sorted(r.invoice.number for r in sink.requests) == ["26442000000000000001", "26442000000000000002"]
    assert all(r.documents[0].sha256 == doc.sha256 for r in sink.requests)


def test_a_sink_that_wants_no_documents_gets_none_and_an_archive_gets_them(tmp_path: Path) -> None:
    """``Sink.wants_documents = False`` (an ERP, a platform): the worker does not read the stored files
    for it; a sink left at the default receives the invoice's document."""
    doc = hub.Document(content=invoice_json(7), media_type="application/json", filename="7.json")
    source = mock_source([hub.Incoming(documents=[doc], key="7.json")])
    archive = mock_sink(type_name="test.archive")
    erp = type("DataOnly", (mock_sink(type_name="test.erp"),), {"wants_documents": False})
    harness = HubHarness(
        root=tmp_path,
        connectors={
            "in": {"type": source.type_name},
            "a": {"type": "test.archive"},
            "e": {"type": "test.erp"},
        },
        routes=[{"from": "in", "to": ["a", "e"]}],
        types=[source, archive, erp],
    )
    summary = harness.run(timeout=30)
    assert summary["delivered"] == 2
    assert [d.sha256 for r in archive.requests for d in r.documents] == [doc.sha256]
    assert len(erp.requests) == 1 and erp.requests[0].documents == []
    assert erp.requests[0].invoice.number == archive.requests[0].invoice.number


def test_a_request_made_from_the_ledger_gives_its_summary_without_and_its_invoice_with_validation(
    tmp_path: Path,
) -> None:
    """A retried delivery is made from the ledger: ``summary`` comes from the version's columns (with a
    status change's new status), ``invoice`` is validated from the stored JSON on first use, and
    ``invoice_json`` is that JSON unless the event changed the invoice's status."""
    import orjson

    from hub.errors import TransientError

    original = orjson.loads(invoice_json(7))
    red = {**original, "status": "red_lettered"}
    docs = [
        hub.Document(content=invoice_json(7), media_type="application/json", filename="7.json"),
        hub.Document(content=orjson.dumps(red), media_type="application/json", filename="7-red.json"),
    ]
    source = mock_source([hub.Incoming(documents=[d], key=d.filename or "") for d in docs])
    seen: dict[str, list[tuple[Any, ...]]] = {}
    requests: list[hub.DeliveryRequest] = []

    def flaky(request: hub.DeliveryRequest) -> None:
        requests.append(request)
        calls = seen.setdefault(request.idempotency_key, [])
        summary = request.summary  # read before anything validates the invoice
        invoice = request.invoice
        calls.append(
            (summary, hub.InvoiceSummary.of(invoice, request.event.content_hash), request.invoice_json)
        )
        if len(calls) == 1:
            raise TransientError("try again: the retry is made from the ledger")

    sink = mock_sink(flaky, type_name="test.flaky")
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": "test.flaky"}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
    )
    summary = harness.run(timeout=30)
    assert summary["delivered"] == 2, summary
    assert sorted(len(calls) for calls in seen.values()) == [2, 2]
    statuses = []
    for calls in seen.values():
        retried, from_invoice, stored = calls[1]
        assert retried == from_invoice  # the columns say what the validated invoice says
        statuses.append(retried.status)
        if retried.status == "issued":
            assert stored is not None and orjson.loads(stored) == orjson.loads(
                hub.Invoice.model_validate_json(stored).model_dump_json()
            )
            assert retried.number == original["number"] and retried.gross == from_invoice.gross
        else:
            assert stored is None  # the stored JSON still says "issued"
    assert sorted(statuses) == ["issued", "red_lettered"]
    # A request made from the ledger compares by value, as one a vendor makes with event=.
    for request in requests:
        fields = (request.destination, request.idempotency_key, request.attempt, request.documents)
        twin = hub.DeliveryRequest(request.event, *fields, request.amends, request.invoice_json)
        assert twin == request
        assert hub.DeliveryRequest(request.event, *fields[:2], request.attempt + 1) != request


class BuyerMustHaveTaxId:
    name = "buyer_tax_id_required"

    def check(self, invoice: hub.Invoice) -> Iterable[Problem]:
        if not invoice.buyer.tax_id:
            yield Problem("buyer.tax_id", "our ERP needs the buyer's tax id", rule=self.name)
        if invoice.currency != "CNY":
            yield Problem("currency", "foreign currency", severity="warning", rule=self.name)


def test_hook_hub_register_rules(tmp_path: Path) -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def hub_register_rules() -> list[Any]:
            return [BuyerMustHaveTaxId()]

    items = {i.name: i for i in golden_set()}
    chosen = [items["cn-digital-ordinary"], items["ubl-invoice"]]  # no buyer tax id / EUR
    source = mock_source(
        [hub.Incoming(documents=[], key=i.name, invoices=[(i.invoice, None)]) for i in chosen]
    )
    sink = mock_sink()
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": sink.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
        extra_plugins=[("rules", Plugin())],
    )
    summary = harness.run(timeout=30)
    assert summary["intake_dead_letters"] == 1 and summary["delivered"] == 1
    [letter] = harness.dead_letters()
    assert letter["stage"] == "intake" and letter["identity"] == items["cn-digital-ordinary"].identity
    problems = letter["detail"]["problems"]
    assert {"path": "buyer.tax_id", "rule": "buyer_tax_id_required"}.items() <= problems[0].items()
    assert [r.invoice.number for r in sink.requests] == [items["ubl-invoice"].invoice.number]


def test_hook_hub_register_commands() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def hub_register_commands(cli: click.Group) -> None:
            @cli.command("acme-sync")
            @click.option("--dry-run", is_flag=True)
            def acme_sync(dry_run: bool) -> None:
                """Sync acme master data."""
                click.echo(f"synced (dry run: {dry_run})")

    class Broken:
        @staticmethod
        @hookimpl
        def hub_register_commands(cli: click.Group) -> None:
            raise RuntimeError("no commands today")

    plugins = build_plugins(extra=[("broken", Broken()), ("acme", Plugin())])

    @click.group()
    def group() -> None:
        """A stand-in for the hub's own group."""

    failed = plugins.register_commands(group)
    assert [f.name for f in failed] == ["broken"]
    assert "hub_register_commands raised RuntimeError: no commands today" in (failed[0].error or "")
    result = CliRunner().invoke(group, ["acme-sync", "--dry-run"])
    assert result.exit_code == 0 and result.output == "synced (dry run: True)\n"


def test_hook_hub_register_observers(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    intakes: list[int] = []

    class Observer:
        def on_intake(self, source: str, outcome: hub.IntakeOutcome) -> None:
            intakes.append(outcome.accepted)

        def on_delivery(self, delivery_id: int, destination: str, state: str, error: Any) -> None:
            seen.append((destination, state))

    class Crashing:
        def on_delivery(self, **_: Any) -> None:
            raise RuntimeError("metrics backend down")

        def on_intake(self, **_: Any) -> None:
            raise RuntimeError("metrics backend down")

    class Plugin:
        @staticmethod
        @hookimpl
        def hub_register_observers() -> list[Any]:
            return [Crashing(), Observer()]

    items = golden_set()[:2]
    source = mock_source(
        [hub.Incoming(documents=[], key=i.name, invoices=[(i.invoice, None)]) for i in items]
    )
    sink = mock_sink()
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": sink.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
        extra_plugins=[("observers", Plugin())],
    )
    summary = harness.run(timeout=30)
    assert summary["delivered"] == 2
    assert seen == [("out", "delivered"), ("out", "delivered")]
    assert sum(intakes) == 2


def test_each_destination_gets_an_invoice_of_its_own(tmp_path: Path) -> None:
    """Intake hands the invoice it validated to a worker of the same process instead of reading the
    stored JSON again; with two destinations, a sink that changes its request must not change what
    the other sink receives."""

    def scribble(request: hub.DeliveryRequest) -> None:
        request.event.invoice.seller.name = "changed by the first sink"
        request.event.invoice.lines.clear()

    first = mock_sink(scribble, type_name="first")
    second = mock_sink(type_name="second")
    docs = [hub.Document(content=invoice_json(i), media_type="application/json") for i in range(30)]
    source = mock_source([hub.Incoming(documents=[d], key=str(i)) for i, d in enumerate(docs)])
    harness = HubHarness(
        root=tmp_path,
        connectors={
            "in": {"type": source.type_name},
            "a": {"type": first.type_name},
            "b": {"type": second.type_name},
        },
        routes=[{"from": "in", "to": ["a", "b"]}],
        types=[source, first, second],
    )
    summary = harness.run()
    assert summary["delivered"] == 60
    expected = {inv.identity: inv for inv in (factory_invoice(i) for i in range(30))}
    assert len(first.requests) == len(second.requests) == 30
    for request in second.requests:
        assert request.event.invoice == expected[request.event.identity]
    for request in first.requests:
        assert request.event.invoice.seller.name == "changed by the first sink"
