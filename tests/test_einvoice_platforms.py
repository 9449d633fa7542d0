"""The e-invoice platform connectors against their sandboxes, over real HTTP on loopback sockets.

Each test starts the platform's sandbox (``contrib.sandbox.<platform>``) with uvicorn in a thread and
drives the connector's public methods (deliver, status, red_letter, void, inventory, health); the
sandbox's own counters (``/_sandbox/stats``) are the proof that nothing was issued twice.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from hub import (
    ConnectorContext,
    DeliveryRequest,
    Event,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Line,
    Party,
    PermanentError,
    RateLimited,
    TransientError,
)
from hub.canonical import content_hash
from hub.models import SHANGHAI
from tests.sandbox_server import run_asgi

pytestmark = pytest.mark.integration

SELLER_TAX = "91320000134567890Y"
BUYER_TAX = "91110000802100433B"
APP_KEY = "hub-test-key"
APP_SECRET = "s3cr3t-0f-the-hub-test-app"
PLATFORMS = ["nuonuo", "baiwang"]
#: The code each platform gives an order the tax bureau refused while issuing.
REFUSED_WHILE_ISSUING = {"nuonuo": "22", "baiwang": "E9802"}


def make_invoice(
    n: int, *, buyer_tax: str = BUYER_TAX, kind: InvoiceKind = InvoiceKind.CN_DIGITAL_ORDINARY
) -> Invoice:
    amount = Decimal(1000 + n) + Decimal("0.50")
    tax = (amount * Decimal("0.13")).quantize(Decimal("0.01"))
    return Invoice(
        kind=kind,
        number=f"ERP{n:06d}",
        issue_date=date(2026, 11, 23),
        seller=Party(
            name="江苏测试销售有限公司",
            tax_id=SELLER_TAX,
            address="南京市玄武区1号",
            phone="025-1234567",
            bank_name="招商银行南京分行",
            bank_account="6225880212345678",
        ),
        buyer=Party(name="北京测试采购有限公司", tax_id=buyer_tax),
        lines=[
            Line(
                name="*信息技术服务*软件维护",
                quantity=Decimal(1),
                unit_price=amount,
                amount=amount,
                tax_rate=Decimal("0.13"),
                tax_amount=tax,
                unit="次",
            )
        ],
        totals={"net": amount, "tax": tax, "gross": amount + tax},
    )


def request_for(invoice: Invoice, attempt: int = 1, destination: str = "platform") -> DeliveryRequest:
    digest = content_hash(invoice)
    event = Event(source="erp", identity=invoice.identity, content_hash=digest, invoice=invoice)
    return DeliveryRequest(event=event, destination=destination, idempotency_key=digest, attempt=attempt)


def create_sandbox(platform: str, **options: Any) -> Any:
    module = __import__(f"contrib.sandbox.{platform}", fromlist=["create_app"])
    options.setdefault("app_key", APP_KEY)
    options.setdefault("app_secret", APP_SECRET)
    options.setdefault("issue_delay", 0.05)
    return module.create_app(**options)


def connector_class(platform: str) -> Any:
    module = __import__(f"invoice_hub_plugins.einvoice_{platform}", fromlist=["x"])
    return next(c for c in module.hub_register_connector_types() if c.type_name == f"einvoice.{platform}")


def make_connector(platform: str, base_url: str, data_dir: Path, **overrides: Any) -> Any:
    cls = connector_class(platform)
    values = {
        "base_url": base_url,
        "app_key": APP_KEY,
        "app_secret": APP_SECRET,
        "user_tax": SELLER_TAX,
        "poll_interval": 0.02,
        "poll_budget": 3.0,
        "read_timeout": 2.0,
        "rate_limit": 1000,
        "rate_burst": 1000,
    } | overrides
    return cls(
        cls.Settings.model_validate(values), ConnectorContext(name=f"{platform}-test", data_dir=data_dir)
    )


@dataclass
class Sandbox:
    platform: str
    url: str
    app: Any

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_sandbox/stats").json()

    def faults(self, **changes: Any) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=changes).raise_for_status()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[str, Any]]]:
    """One sandbox per platform for the module; each test starts from a reset one."""
    apps = {platform: create_sandbox(platform) for platform in PLATFORMS}
    with run_asgi(apps["nuonuo"]) as nuonuo_url, run_asgi(apps["baiwang"]) as baiwang_url:
        yield {"nuonuo": (nuonuo_url, apps["nuonuo"]), "baiwang": (baiwang_url, apps["baiwang"])}


@pytest.fixture(params=PLATFORMS)
def sandbox(request: pytest.FixtureRequest, servers: dict[str, tuple[str, Any]]) -> Sandbox:
    url, app = servers[request.param]
    httpx.post(f"{url}/_sandbox/reset").raise_for_status()
    app.state.platform.issue_delay = 0.05
    return Sandbox(request.param, url, app)


@pytest.fixture
def connector(sandbox: Sandbox, tmp_path: Path) -> Iterator[Any]:
    with make_connector(sandbox.platform, sandbox.url, tmp_path) as conn:
        yield conn


# ---------------------------------------------------------------------------------------------------
# Issuing
# ---------------------------------------------------------------------------------------------------
def test_issue_returns_number_and_documents(sandbox: Sandbox, connector: Any) -> None:
    invoice = make_invoice(1)
    receipt = connector.deliver(request_for(invoice))

    number = receipt.remote_ref
    assert number is not None and len(number) == 20 and number.isdigit()
    now = datetime.now(SHANGHAI)
    assert number[:2] == f"{now:%y}" and number[2:4] == "32"
    assert receipt.detail["order_no"] == connector.order_number(content_hash(invoice))
    assert receipt.detail["serial"]

    [incoming] = receipt.outputs
    media = {d.media_type: d for d in incoming.documents}
    assert set(media) == {"application/ofd", "application/xml", "application/pdf"}
    assert media["application/pdf"].content.startswith(b"%PDF-")
    with zipfile.ZipFile(io.BytesIO(media["application/ofd"].content)) as ofd:
        embedded = ofd.read("Doc_0/Attachs/original_invoice.xml")
        assert b"<OFD" in ofd.read("OFD.xml") or b":OFD" in ofd.read("OFD.xml")
    assert embedded == media["application/xml"].content
    assert f"<EIid>{number}</EIid>".encode() in embedded
    assert b"<TotalTax-includedAmount>" + str(invoice.totals.gross).encode() in embedded

    [(issued, original)] = incoming.invoices
    assert issued.number == number
    assert issued.identity == f"CN:{number}"
    assert issued.kind is InvoiceKind.CN_DIGITAL_ORDINARY
    assert issued.totals == invoice.totals and issued.buyer.tax_id == BUYER_TAX
    assert issued.extra["requested_as"] == invoice.identity
    assert original is media["application/ofd"]

    assert sandbox.stats()["issues_per_order"] == {receipt.detail["order_no"]: 1}


def test_special_invoice_kind_is_kept(sandbox: Sandbox, connector: Any) -> None:
    receipt = connector.deliver(request_for(make_invoice(2, kind=InvoiceKind.CN_DIGITAL_SPECIAL)))
    [(issued, _)] = receipt.outputs[0].invoices
    assert issued.kind is InvoiceKind.CN_DIGITAL_SPECIAL
    assert b"<LabelCode>01</LabelCode>" in receipt.outputs[0].documents[1].content


def test_redelivery_of_same_content_does_not_issue_twice(sandbox: Sandbox, connector: Any) -> None:
    invoice = make_invoice(3)
    first = connector.deliver(request_for(invoice))
    again = connector.deliver(request_for(invoice, attempt=2))
    assert again.remote_ref == first.remote_ref
    stats = sandbox.stats()
    assert stats["issued"] == 1 and stats["counters"]["submissions"] == 1


def test_status_by_order_number_and_serial(sandbox: Sandbox, connector: Any) -> None:
    receipt = connector.deliver(request_for(make_invoice(4)))
    by_order = connector.status(order_no=receipt.detail["order_no"])
    by_serial = connector.status(serial=receipt.detail["serial"])
    assert by_order is not None and by_serial is not None
    assert by_order.number == by_serial.number == receipt.remote_ref
    assert by_order.state == "issued"
    assert connector.status(order_no="nosuchorder") is None


# ---------------------------------------------------------------------------------------------------
# Signatures, tokens, clock
# ---------------------------------------------------------------------------------------------------
def test_wrong_secret_is_refused_by_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    # A token fetched with the right secret, then requests signed with a wrong one.
    with make_connector(sandbox.platform, sandbox.url, tmp_path) as good:
        good.access_token()
    with (
        make_connector(sandbox.platform, sandbox.url, tmp_path, app_secret="not-the-secret") as bad,
        pytest.raises(PermanentError) as caught,
    ):
        bad.deliver(request_for(make_invoice(5)))
    assert caught.value.code in {"070301", "100002"}
    stats = sandbox.stats()
    assert stats["counters"].get("bad_signatures", 0) >= 1
    assert stats["orders"] == 0


def test_wrong_secret_cannot_fetch_a_token(sandbox: Sandbox, tmp_path: Path) -> None:
    with (
        make_connector(sandbox.platform, sandbox.url, tmp_path, app_secret="not-the-secret") as bad,
        pytest.raises(PermanentError),
    ):
        bad.access_token()
    assert sandbox.stats()["token_fetches"] == 0


def test_token_is_cached_and_survives_a_restart(sandbox: Sandbox, tmp_path: Path) -> None:
    with make_connector(sandbox.platform, sandbox.url, tmp_path) as conn:
        for n in range(3):
            conn.deliver(request_for(make_invoice(10 + n)))
    with make_connector(sandbox.platform, sandbox.url, tmp_path) as restarted:
        restarted.deliver(request_for(make_invoice(20)))
        assert restarted.health().ok
    assert sandbox.stats()["token_fetches"] == 1
    token_files = list(tmp_path.glob(f"{sandbox.platform}-token-*.json"))
    assert len(token_files) == 1 and token_files[0].stat().st_mode & 0o077 == 0


def test_expired_token_is_refetched_once(sandbox: Sandbox, connector: Any) -> None:
    connector.deliver(request_for(make_invoice(30)))
    httpx.post(f"{sandbox.url}/_sandbox/expire-tokens").raise_for_status()
    connector.deliver(request_for(make_invoice(31)))
    assert sandbox.stats()["token_fetches"] == 2


def test_clock_skew_is_tolerated(sandbox: Sandbox, connector: Any) -> None:
    sandbox.faults(clock_offset=3600)  # the platform's clock is an hour ahead; its window is 10 minutes
    receipt = connector.deliver(request_for(make_invoice(32)))
    assert receipt.remote_ref


# ---------------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------------
def test_timeout_after_issue_then_retry_issues_once(sandbox: Sandbox, tmp_path: Path) -> None:
    invoice = make_invoice(40)
    sandbox.faults(force_timeout_after_issue=1, hang_seconds=1.5)
    with make_connector(sandbox.platform, sandbox.url, tmp_path, read_timeout=0.3) as conn:
        with pytest.raises(TransientError) as caught:
            conn.deliver(request_for(invoice))
        assert "timed out" in str(caught.value)
        receipt = conn.deliver(request_for(invoice, attempt=2))
    order_no = receipt.detail["order_no"]
    stats = sandbox.stats()
    assert stats["issues_per_order"] == {order_no: 1}
    assert stats["counters"]["submissions"] == 1
    assert stats["counters"]["fault_timeout_after_issue"] == 1


def test_dropped_connection_after_issue_then_retry_issues_once(sandbox: Sandbox, connector: Any) -> None:
    invoice = make_invoice(41)
    sandbox.faults(force_timeout_after_issue=1, timeout_mode="drop")
    with pytest.raises(TransientError):
        connector.deliver(request_for(invoice))
    receipt = connector.deliver(request_for(invoice, attempt=2))
    assert sandbox.stats()["issues_per_order"] == {receipt.detail["order_no"]: 1}


def test_429_is_rate_limited_with_retry_after(sandbox: Sandbox, connector: Any) -> None:
    sandbox.faults(force_429=1, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        connector.deliver(request_for(make_invoice(50)))
    assert caught.value.retry_after == 7.0
    assert caught.value.remote_status == 429


def test_5xx_is_transient_with_remote_status(sandbox: Sandbox, connector: Any) -> None:
    sandbox.faults(force_5xx=1)
    with pytest.raises(TransientError) as caught:
        connector.deliver(request_for(make_invoice(51)))
    assert caught.value.remote_status == 503 and caught.value.remote_body
    assert not isinstance(caught.value, RateLimited)


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with run_asgi(create_sandbox("nuonuo")) as url:
        pass  # the port is free again
    for platform in PLATFORMS:
        with make_connector(platform, url, tmp_path) as conn, pytest.raises(TransientError):
            conn.deliver(request_for(make_invoice(52)))


def test_business_refusal_keeps_platform_code(sandbox: Sandbox, connector: Any) -> None:
    bad = make_invoice(60)
    bad.lines[0].tax_rate = Decimal("0.17")  # not a rate since 2019
    bad.lines[0].tax_amount = (bad.lines[0].amount * Decimal("0.17")).quantize(Decimal("0.01"))
    with pytest.raises(PermanentError) as caught:
        connector.deliver(request_for(bad))
    assert caught.value.code == "E9521"
    assert "0.17" in caught.value.message and caught.value.remote_body


def test_refusal_while_issuing_keeps_platform_status(sandbox: Sandbox, connector: Any) -> None:
    # A buyer tax id whose check character is wrong: accepted, then refused by the tax bureau.
    bad = make_invoice(61, buyer_tax="91110000802100433C")
    with pytest.raises(PermanentError) as caught:
        connector.deliver(request_for(bad))
    assert caught.value.code == REFUSED_WHILE_ISSUING[sandbox.platform]
    assert "91110000802100433C" in caught.value.message
    assert sandbox.stats()["issued"] == 0


def test_seller_of_another_account_is_refused_before_sending(sandbox: Sandbox, connector: Any) -> None:
    invoice = make_invoice(62)
    invoice.seller.tax_id = "91320000MA1XXXXXX1"
    with pytest.raises(PermanentError) as caught:
        connector.deliver(request_for(invoice))
    assert caught.value.code == "invalid_invoice" and "seller.tax_id" in caught.value.message
    assert sandbox.stats()["counters"].get("api_calls", 0) <= 1  # the order-number query only


def test_still_issuing_after_budget_is_transient_and_retry_finishes(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.app.state.platform.issue_delay = 0.6
    invoice = make_invoice(63)
    with make_connector(sandbox.platform, sandbox.url, tmp_path, poll_budget=0.1) as conn:
        with pytest.raises(TransientError) as caught:
            conn.deliver(request_for(invoice))
        assert "still issuing" in str(caught.value)
        sandbox.app.state.platform.issue_delay = 0.05
        with make_connector(sandbox.platform, sandbox.url, tmp_path, poll_budget=3) as patient:
            receipt = patient.deliver(request_for(invoice, attempt=2))
    assert sandbox.stats()["issues_per_order"] == {receipt.detail["order_no"]: 1}


def test_amendment_is_refused(sandbox: Sandbox, connector: Any) -> None:
    request = request_for(make_invoice(64))
    request.amends = "0" * 64
    with pytest.raises(PermanentError) as caught:
        connector.deliver(request)
    assert caught.value.code == "amendment_requires_red_letter"


# ---------------------------------------------------------------------------------------------------
# Red letter, void, inventory, callbacks, secrets
# ---------------------------------------------------------------------------------------------------
def test_red_letter_confirmation_form_then_red_invoice(sandbox: Sandbox, connector: Any) -> None:
    blue_receipt = connector.deliver(request_for(make_invoice(70)))
    [(blue, _)] = blue_receipt.outputs[0].invoices
    red_receipt = connector.red_letter(blue, key="red-" + blue.number, reason="02")
    [(red, _)] = red_receipt.outputs[0].invoices
    assert red.reverses == blue.number and red.number != blue.number and len(red.number) == 20
    assert red.totals.gross == -blue.totals.gross
    assert b"<OriginalInvoiceNumber>" + blue.number.encode() in red_receipt.outputs[0].documents[1].content
    # Same key again: the same red invoice, not a second one.
    again = connector.red_letter(blue, key="red-" + blue.number, reason="02")
    assert again.remote_ref == red_receipt.remote_ref
    assert sandbox.stats()["issued"] == 2


def test_red_letter_through_deliver_of_a_red_invoice(sandbox: Sandbox, connector: Any) -> None:
    blue_receipt = connector.deliver(request_for(make_invoice(71)))
    red_request = make_invoice(71)
    red_request.number = "ERPRED000071"
    red_request.reverses = blue_receipt.remote_ref
    red_request.reversal_reason = "01"
    for line in red_request.lines:
        line.amount, line.tax_amount = -line.amount, -(line.tax_amount or Decimal(0))
    red_request.totals.net, red_request.totals.tax = -red_request.totals.net, -red_request.totals.tax
    red_request.totals.gross = -red_request.totals.gross
    receipt = connector.deliver(request_for(red_request))
    [(red, _)] = receipt.outputs[0].invoices
    assert red.reverses == blue_receipt.remote_ref and red.totals.gross < 0
    with pytest.raises(PermanentError) as caught:  # a second red for the same blue: refused by the platform
        second = red_request.model_copy(deep=True)
        second.number = "ERPRED000072"
        connector.deliver(request_for(second))
    assert caught.value.code in {"E9603", "E9601"}


def test_status_change_to_red_lettered_reverses_once(sandbox: Sandbox, connector: Any) -> None:
    blue_receipt = connector.deliver(request_for(make_invoice(72)))
    [(blue, _)] = blue_receipt.outputs[0].invoices
    changed = blue.model_copy(update={"status": InvoiceStatus.RED_LETTERED})
    event = Event(
        type="invoice.status_changed",
        source="erp",
        identity=changed.identity,
        content_hash=content_hash(changed),
        invoice=changed,
    )
    request = DeliveryRequest(event=event, destination="p", idempotency_key=event.idempotency_key, attempt=1)
    first = connector.deliver(request)
    second = connector.deliver(request)
    assert first.remote_ref == second.remote_ref and first.remote_ref != blue.number
    assert sandbox.stats()["issued"] == 2


def test_digital_invoice_cannot_be_voided(sandbox: Sandbox, connector: Any) -> None:
    receipt = connector.deliver(request_for(make_invoice(73)))
    [(issued, _)] = receipt.outputs[0].invoices
    with pytest.raises(PermanentError) as caught:
        connector.void(issued)
    assert caught.value.code == "void_not_allowed" and "red-letter" in caught.value.message


def test_legacy_invoice_can_be_voided(sandbox: Sandbox, tmp_path: Path) -> None:
    with make_connector(sandbox.platform, sandbox.url, tmp_path, digital=False) as conn:
        receipt = conn.deliver(request_for(make_invoice(74)))
        [(issued, _)] = receipt.outputs[0].invoices
        assert issued.kind is InvoiceKind.CN_LEGACY_ORDINARY and issued.code and len(issued.number) == 8
        conn.void(issued)
        assert conn.status(serial=receipt.detail["serial"]).state == "void"


def test_inventory_by_date_range(sandbox: Sandbox, connector: Any) -> None:
    numbers = {connector.deliver(request_for(make_invoice(80 + n))).remote_ref for n in range(3)}
    today = datetime.now(SHANGHAI).date()
    items = list(connector.inventory(today, today))
    assert {i.number for i in items} == numbers
    assert all(i.identity == f"CN:{i.number}" and i.issue_date == today and i.gross for i in items)
    assert all(i.seller_tax_id == SELLER_TAX and i.remote_ref for i in items)
    yesterday = today - timedelta(days=1)
    assert list(connector.inventory(yesterday, yesterday)) == []


def test_secrets_never_in_logs(sandbox: Sandbox, tmp_path: Path) -> None:
    with capture_logs() as logs, make_connector(sandbox.platform, sandbox.url, tmp_path) as conn:
        invoice = make_invoice(90)
        sandbox.faults(force_5xx=1)
        with pytest.raises(TransientError) as failed:
            conn.deliver(request_for(invoice))
        conn.deliver(request_for(invoice, attempt=2))
        token = conn.access_token()
    text = repr(logs) + str(failed.value) + repr(failed.value.context)
    assert logs, "the connector logs what it does"
    assert APP_SECRET not in text and token not in text
    assert "6225880212345678" not in text  # the seller's bank account travels in the body, never in logs
    assert any(entry["event"] == "einvoice_token_fetched" for entry in logs)
    assert APP_SECRET not in repr(conn.settings)


def test_settings_are_validated() -> None:
    for platform in PLATFORMS:
        cls = connector_class(platform)
        with pytest.raises(ValueError, match="base_url"):
            cls.Settings.model_validate(
                {"base_url": "ftp://x", "app_key": "k", "app_secret": "s", "user_tax": SELLER_TAX}
            )
        with pytest.raises(ValueError, match="extra"):
            cls.Settings.model_validate(
                {"base_url": "http://x", "app_key": "k", "app_secret": "s", "user_tax": "t", "surprise": 1}
            )


def test_callbacks_are_signed_and_faults_reorder_and_duplicate_them(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: Request) -> Response:
        received.append((await request.body(), dict(request.headers)))
        return Response("ok")

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    for platform in PLATFORMS:
        received.clear()
        with run_asgi(receiver) as hook_url, run_asgi(create_sandbox(platform)) as url:
            httpx.post(
                f"{url}/_sandbox/faults", json={"duplicate_callbacks": True, "out_of_order_callbacks": True}
            )
            with make_connector(platform, url, tmp_path / platform, callback_url=f"{hook_url}/hook") as conn:
                receipt = conn.deliver(request_for(make_invoice(95)))
                deadline = datetime.now() + timedelta(seconds=3)
                while len(received) < 4 and datetime.now() < deadline:
                    time.sleep(0.02)
                states = [conn.verify_callback(body, headers).state for body, headers in received]
                assert states == ["issued", "issued", "issuing", "issuing"]
                assert {conn.verify_callback(b, h).number for b, h in received[:2]} == {receipt.remote_ref}
                forged_body, forged_headers = received[0]
                with pytest.raises(PermanentError):
                    conn.verify_callback(forged_body.replace(b"2", b"3"), forged_headers)


def test_inventory_pages_through_everything(sandbox: Sandbox, tmp_path: Path) -> None:
    with make_connector(sandbox.platform, sandbox.url, tmp_path, inventory_page_size=2) as conn:
        numbers = {conn.deliver(request_for(make_invoice(200 + n))).remote_ref for n in range(5)}
        listed = [i.number for i in conn.inventory()]
    assert sorted(listed) == sorted(numbers)


def test_token_fetch_cap_is_transient_and_stops_fetching(tmp_path: Path) -> None:
    for platform in PLATFORMS:
        with run_asgi(create_sandbox(platform, token_cap=1)) as url:
            with make_connector(platform, url, tmp_path / "a") as first:
                first.access_token()
            with (
                make_connector(platform, url, tmp_path / "b") as other,
                pytest.raises(TransientError) as caught,
            ):
                other.deliver(request_for(make_invoice(210)))  # another data_dir: no cached token
            assert "token" in str(caught.value)
            stats = httpx.get(f"{url}/_sandbox/stats").json()
            assert stats["token_fetches"] == 1 and stats["orders"] == 0


def test_local_rate_limit_raises_rate_limited(sandbox: Sandbox, tmp_path: Path) -> None:
    with make_connector(
        sandbox.platform, sandbox.url, tmp_path, rate_limit=0.5, rate_burst=2, rate_max_wait=0
    ) as conn:
        conn.access_token()
        conn.status(order_no="first")
        with pytest.raises(RateLimited) as caught:
            conn.status(order_no="second")
    assert 0 < caught.value.retry_after <= 2.0


def test_one_command_starts_a_sandbox() -> None:
    import socket
    import subprocess
    import sys

    for platform in PLATFORMS:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        repo = Path(__file__).resolve().parent.parent
        command = [
            sys.executable,
            "-m",
            "contrib.sandbox",
            platform,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        command += ["-o", "token_cap=7", "--faults", '{"error_rate": 0.5}']
        proc = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    stats = httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=1).json()
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, (
                        proc.stderr.read() if proc.stderr else ""
                    )
                    time.sleep(0.1)
            assert stats["platform"] == platform and stats["faults"]["error_rate"] == 0.5
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


def test_hub_parsers_read_the_issued_files_as_the_issued_invoice(sandbox: Sandbox, connector: Any) -> None:
    """The OFD and XML the platform serves say what the connector hands on: same content hash."""
    from hub.plugins import build_plugins

    parsers = build_plugins().parsers
    receipt = connector.deliver(request_for(make_invoice(300, kind=InvoiceKind.CN_DIGITAL_SPECIAL)))
    [incoming] = receipt.outputs
    [(issued, _)] = incoming.invoices
    for document in incoming.documents:
        if document.media_type == "application/pdf":
            continue
        parser = next(p for p in parsers if p.claims(document))
        [parsed] = parser.parse(document).invoices
        assert parsed.identity == issued.identity, document.media_type
        assert content_hash(parsed) == content_hash(issued), document.media_type


def test_instances_sharing_a_data_dir_fetch_one_token(sandbox: Sandbox, tmp_path: Path) -> None:
    """Several hub processes on one machine (here: instances in threads) fetch one token between them."""
    from concurrent.futures import ThreadPoolExecutor

    connectors = [make_connector(sandbox.platform, sandbox.url, tmp_path) for _ in range(6)]
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            tokens = set(pool.map(lambda c: c.access_token(), connectors))
    finally:
        for conn in connectors:
            conn.close()
    assert len(tokens) == 1
    assert sandbox.stats()["token_fetches"] == 1


def test_zero_poll_budget_never_holds_the_worker(sandbox: Sandbox, tmp_path: Path) -> None:
    """poll_budget 0: submit and return at once (TransientError); the worker's retry finds it issued."""
    invoice = make_invoice(310)
    with make_connector(sandbox.platform, sandbox.url, tmp_path, poll_budget=0) as conn:
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            conn.deliver(request_for(invoice))
        assert time.monotonic() - started < 0.5 and "queries it by order number first" in str(caught.value)
        time.sleep(0.1)  # the sandbox issues after 0.05 s
        receipt = conn.deliver(request_for(invoice, attempt=2))
    assert receipt.remote_ref and sandbox.stats()["issues_per_order"] == {receipt.detail["order_no"]: 1}


def test_wrong_base_path_is_permanent(sandbox: Sandbox, tmp_path: Path) -> None:
    with (
        make_connector(sandbox.platform, sandbox.url + "/no/such/prefix", tmp_path) as conn,
        pytest.raises(PermanentError) as caught,
    ):
        conn.deliver(request_for(make_invoice(320)))
    assert caught.value.remote_status == 404


#: The code each platform reports for an order refused by the tax bureau / failed at signing.
ISSUING_FAILURES = {
    ("nuonuo", "force_refusal"): "22",
    ("nuonuo", "force_sign_failure"): "24",
    ("baiwang", "force_refusal"): "E9801",
    ("baiwang", "force_sign_failure"): "E9803",
}


@pytest.mark.parametrize("fault", ["force_refusal", "force_sign_failure"])
def test_issuing_failures_are_permanent_with_the_platform_status(
    sandbox: Sandbox, connector: Any, fault: str
) -> None:
    sandbox.faults(**{fault: 1})
    with pytest.raises(PermanentError) as caught:
        connector.deliver(request_for(make_invoice(330)))
    assert caught.value.code == ISSUING_FAILURES[(sandbox.platform, fault)] and caught.value.remote_body
    assert sandbox.stats()["issued"] == 0


def test_partial_red_letter_request_is_refused_before_issuing(sandbox: Sandbox, connector: Any) -> None:
    blue = connector.deliver(request_for(make_invoice(340))).remote_ref
    partial = make_invoice(340)
    partial.number, partial.reverses, partial.reversal_reason = "ERPRED000340", blue, "02"
    half = (partial.totals.net / 2).quantize(Decimal("0.01"))
    half_tax = (half * Decimal("0.13")).quantize(Decimal("0.01"))
    partial.lines[0].amount, partial.lines[0].tax_amount = -half, -half_tax
    partial.lines[0].unit_price, partial.lines[0].quantity = half, Decimal(-1)
    partial.totals.net, partial.totals.tax, partial.totals.gross = -half, -half_tax, -(half + half_tax)
    with pytest.raises(PermanentError) as caught:
        connector.deliver(request_for(partial))
    assert caught.value.code == "partial_red_letter" and blue in caught.value.message
    assert sandbox.stats()["issued"] == 1  # the blue one only
