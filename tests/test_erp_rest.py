"""``erp.rest`` beyond the shared contract, over real HTTP: the Odoo and ERPNext presets against their
sandboxes (rate limits, outages, a time-out after the ERP created the record, wrong credentials,
returns linked to their original, void), and the generic preset with OAuth2 client credentials and
the three pagination styles against a small REST ERP defined here.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from invoice_hub_plugins.erp_rest import ErpRestConnector, Settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import (
    ConnectorContext,
    DeliveryRequest,
    Event,
    Invoice,
    InvoiceStatus,
    PermanentError,
    RateLimited,
    TransientError,
)
from hub.canonical import content_hash
from tests.sandbox_server import run_asgi
from tests.test_erp_contract import make_invoice

pytestmark = pytest.mark.integration

ODOO_KEY = "odoo-rest-key"
ERPNEXT_KEY, ERPNEXT_SECRET = "rest-key", "rest-secret"


def request_for(
    invoice: Invoice, *, event_type: str = "invoice.received", attempt: int = 1
) -> DeliveryRequest:
    event = Event(
        type=event_type,  # type: ignore[arg-type]
        source="inbox",
        identity=invoice.identity,
        content_hash=content_hash(invoice),
        invoice=invoice,
    )
    return DeliveryRequest(
        event=event, destination="erp", idempotency_key=event.idempotency_key, attempt=attempt
    )


def connector(settings: dict[str, Any]) -> ErpRestConnector:
    return ErpRestConnector(
        Settings.model_validate(settings), ConnectorContext(name="erp", data_dir=Path("/x"))
    )


class Sandbox:
    def __init__(self, preset: str, url: str) -> None:
        self.preset = preset
        self.url = url

    def settings(self, **extra: Any) -> dict[str, Any]:
        if self.preset == "odoo":
            auth: dict[str, Any] = {"type": "bearer", "token": ODOO_KEY}
        else:
            auth = {"type": "token", "key": ERPNEXT_KEY, "secret": ERPNEXT_SECRET}
        return {"base_url": self.url, "preset": self.preset, "auth": auth} | extra

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_sandbox/stats", timeout=5).json())

    def faults(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()

    def count(self) -> int:
        return int(self.stats()["records"]["account.move" if self.preset == "odoo" else "Sales Invoice"])

    def records(self) -> list[dict[str, Any]]:
        """What the ERP holds, read through its own public API."""
        if self.preset == "odoo":
            response = httpx.post(
                f"{self.url}/json/2/account.move/search_read",
                headers={"Authorization": f"bearer {ODOO_KEY}"},
                json={"domain": [], "fields": ["name", "state", "move_type", "ref", "reversed_entry_id"]},
            )
            return list(response.json())
        response = httpx.get(
            f"{self.url}/api/resource/Sales Invoice",
            headers={"Authorization": f"token {ERPNEXT_KEY}:{ERPNEXT_SECRET}"},
            params={"fields": '["name", "docstatus", "is_return", "return_against", "remarks"]'},
        )
        return list(response.json()["data"])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    from contrib.sandbox import erpnext, odoo

    with (
        run_asgi(odoo.create_app(api_keys=[ODOO_KEY])) as odoo_url,
        run_asgi(erpnext.create_app(api_keys=[f"{ERPNEXT_KEY}:{ERPNEXT_SECRET}"])) as erpnext_url,
    ):
        yield {"odoo": odoo_url, "erpnext": erpnext_url}


@pytest.fixture(params=["odoo", "erpnext"])
def sandbox(request: pytest.FixtureRequest, servers: dict[str, str]) -> Sandbox:
    url = servers[request.param]
    httpx.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    httpx.post(
        f"{url}/_sandbox/faults", json={"force_5xx": 0, "force_429": 0, "latency": 0}, timeout=5
    ).raise_for_status()
    return Sandbox(request.param, url)


# ---------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------
def test_429_is_rate_limited_with_retry_after_and_503_is_transient(sandbox: Sandbox) -> None:
    with connector(sandbox.settings()) as erp:
        sandbox.faults(force_429=1, retry_after=7)
        with pytest.raises(RateLimited) as limited:
            erp.deliver(request_for(make_invoice(1)))
        assert limited.value.retry_after == 7.0
        sandbox.faults(force_5xx=1)
        with pytest.raises(TransientError) as unavailable:
            erp.deliver(request_for(make_invoice(1)))
        assert unavailable.value.remote_status == 503 and not isinstance(unavailable.value, RateLimited)
        receipt = erp.deliver(request_for(make_invoice(1)))
    assert receipt.detail["created"] is True and sandbox.count() == 1


def test_time_out_after_the_erp_created_the_record_never_creates_a_second(sandbox: Sandbox) -> None:
    sandbox.faults(hang_after_create=1, hang_seconds=1.5)
    invoice = make_invoice(2)
    with connector(sandbox.settings(read_timeout=0.5)) as erp:
        with pytest.raises(TransientError) as timed_out:
            erp.deliver(request_for(invoice))
        assert "timed out" in str(timed_out.value)
        assert sandbox.count() == 1  # the ERP did create it; the answer never arrived
        retry = erp.deliver(request_for(invoice, attempt=2))
    assert retry.detail["created"] is False and sandbox.count() == 1
    (record,) = sandbox.records()
    if sandbox.preset == "odoo":
        assert record["state"] == "posted"  # the retry finished what the first attempt began
        assert str(record["id"]) == retry.remote_ref
    else:
        assert record["docstatus"] == 1 and record["name"] == retry.remote_ref


def test_wrong_credentials_are_permanent_with_the_erps_code(sandbox: Sandbox) -> None:
    settings = sandbox.settings()
    if sandbox.preset == "odoo":
        settings["auth"]["token"] = "not-the-key"
    else:
        settings["auth"]["secret"] = "not-the-secret"
    with connector(settings) as erp:
        with pytest.raises(PermanentError) as refused:
            erp.deliver(request_for(make_invoice(3)))
        assert not erp.health().ok
    assert refused.value.remote_status == 401
    assert refused.value.code in {"werkzeug.exceptions.Unauthorized", "AuthenticationError"}
    assert "not-the" not in str(refused.value)  # the credential is never repeated in the error
    assert sandbox.stats()["refused_auth"] >= 1 and sandbox.count() == 0


def test_return_is_linked_to_its_original_and_void_reaches_the_erp(sandbox: Sandbox) -> None:
    blue = make_invoice(4, day=date(2026, 4, 1))
    red = make_invoice(5, day=date(2026, 4, 2), quantity="-1", reverses=blue.number)
    other = make_invoice(6, day=date(2026, 4, 3))
    with connector(sandbox.settings()) as erp:
        blue_ref = erp.deliver(request_for(blue)).remote_ref
        red_ref = erp.deliver(request_for(red)).remote_ref
        erp.deliver(request_for(other))
        void = Invoice.model_validate({**other.model_dump(), "status": InvoiceStatus.VOID})
        first = erp.deliver(request_for(void, event_type="invoice.status_changed"))
        again = erp.deliver(request_for(void, event_type="invoice.status_changed", attempt=2))
        listed = {i.identity for i in erp.inventory(date(2026, 4, 1), date(2026, 4, 30))}
    records = {str(r.get("id", r.get("name"))): r for r in sandbox.records()}
    if sandbox.preset == "odoo":
        assert records[red_ref]["move_type"] == "out_refund"
        assert records[red_ref]["reversed_entry_id"][0] == int(blue_ref or 0)
        assert records[first.remote_ref or ""]["state"] == "cancel"
    else:
        assert records[red_ref or ""]["is_return"] == 1
        assert records[red_ref or ""]["return_against"] == blue_ref
        assert records[first.remote_ref or ""]["docstatus"] == 2
    assert again.remote_ref == first.remote_ref and sandbox.count() == 3
    assert listed == {blue.identity, red.identity}  # a voided invoice is no longer in the books


def test_lookups_are_made_once_and_a_missing_tax_is_refused_before_anything_is_written(
    sandbox: Sandbox,
) -> None:
    with connector(sandbox.settings()) as erp:
        erp.deliver(request_for(make_invoice(7)))
        erp.deliver(request_for(make_invoice(8)))
        calls = sandbox.stats()["calls"]
        if sandbox.preset == "odoo":
            assert calls["res.partner/create"] == 1 and calls["res.partner/search_read"] == 1
            rate17 = Invoice.model_validate(
                {
                    **make_invoice(9).model_dump(),
                    "lines": [{**make_invoice(9).lines[0].model_dump(), "tax_rate": "0.17"}],
                }
            )
            with pytest.raises(PermanentError) as no_tax:
                erp.deliver(request_for(rate17))
            assert no_tax.value.code == "tax" and "17%" in str(no_tax.value)
        else:
            assert calls["Customer/POST"] == 1 and calls["Customer/GET"] == 1
    assert sandbox.count() == 2


def test_preset_settings_name_what_is_wrong() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings.model_validate(
            {"base_url": "http://erp", "preset": "odoo", "auth": {"type": "token", "key": "k", "secret": "s"}}
        )
    assert "auth: preset odoo needs 'type: bearer'" in str(caught.value)
    with pytest.raises(pydantic.ValidationError) as wrong_section:
        Settings.model_validate(
            {
                "base_url": "http://erp",
                "preset": "odoo",
                "auth": {"type": "bearer", "token": "t"},
                "erpnext": {},
            }
        )
    assert "erpnext: only used with preset erpnext" in str(wrong_section.value)
    with pytest.raises(pydantic.ValidationError) as no_key:
        Settings.model_validate({"base_url": "http://erp", "api": {"fields": {"number": "number"}}})
    assert "api" in str(no_key.value) and "map 'idempotency_key'" in str(no_key.value)
    with pytest.raises(pydantic.ValidationError) as bad_auth:
        Settings.model_validate({"base_url": "http://erp", "auth": {"type": "kerberos"}})
    assert "auth" in str(bad_auth.value)


# ---------------------------------------------------------------------------------------------------
# Generic preset: a REST ERP with OAuth2 client credentials and three pagination styles
# ---------------------------------------------------------------------------------------------------
CLIENT_ID, CLIENT_SECRET = "hub-client", "hub-client-secret"


def generic_erp(expires_in: int = 3600) -> tuple[Starlette, dict[str, Any]]:
    state: dict[str, Any] = {"records": [], "tokens": set(), "token_fetches": 0, "creates": 0}

    def authorised(request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and value in state["tokens"]

    async def token(request: Request) -> Response:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        form = await request.form()
        if request.headers.get("authorization") != f"Basic {expected}" or form.get("grant_type") != (
            "client_credentials"
        ):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        state["token_fetches"] += 1
        value = secrets.token_hex(8)
        state["tokens"].add(value)
        return JSONResponse({"access_token": value, "token_type": "bearer", "expires_in": expires_in})

    async def invoices(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        if request.method == "POST":
            body = await request.json()
            if not (body.get("buyer") or {}).get("tax_id"):
                return JSONResponse(
                    {"code": "BUYER_TAX_ID", "message": "buyer.tax_id is required"}, status_code=422
                )
            state["creates"] += 1
            record = {"id": len(state["records"]) + 1, **body}
            state["records"].append(record)
            return JSONResponse(record, status_code=201)
        q = request.query_params
        rows = state["records"]
        if "idempotency_key" in q:
            rows = [r for r in rows if r.get("idempotency_key") == q["idempotency_key"]]
        if "issue_date_from" in q:
            rows = [r for r in rows if r["issue_date"] >= q["issue_date_from"]]
        if "issue_date_to" in q:
            rows = [r for r in rows if r["issue_date"] <= q["issue_date_to"]]
        if "page" in q:
            size = int(q["page_size"])
            start = (int(q["page"]) - 1) * size
        elif "offset" in q:
            size = int(q["limit"])
            start = int(q["offset"])
        else:
            size = int(q.get("limit", "100"))
            start = int(q.get("cursor", "0"))
        page = rows[start : start + size]
        nxt = str(start + size) if start + size < len(rows) else None
        return JSONResponse({"items": page, "next_cursor": nxt, "total": len(rows)})

    app = Starlette(
        routes=[
            Route("/oauth/token", token, methods=["POST"]),
            Route("/api/invoices", invoices, methods=["GET", "POST"]),
        ]
    )
    return app, state


def generic_settings(url: str, pagination: dict[str, Any]) -> dict[str, Any]:
    return {
        "base_url": url,
        "auth": {
            "type": "oauth2",
            "token_url": "/oauth/token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
        "api": {
            "create_path": "/api/invoices",
            "search_path": "/api/invoices",
            "list_path": "/api/invoices",
            "pagination": pagination,
        },
    }


@pytest.mark.parametrize(
    "pagination",
    [
        {"style": "page", "size": 2, "size_param": "page_size"},
        {"style": "offset", "size": 2, "size_param": "limit"},
        {"style": "cursor", "size": 2, "size_param": "limit", "next_cursor_path": "next_cursor"},
    ],
    ids=["page", "offset", "cursor"],
)
def test_generic_rest_erp_with_oauth2_and_pagination(pagination: dict[str, Any]) -> None:
    app, state = generic_erp()
    invoices = [make_invoice(40 + i, day=date(2026, 6, 1 + i)) for i in range(5)]
    with run_asgi(app) as url, connector(generic_settings(url, pagination)) as erp:
        receipts = [erp.deliver(request_for(inv)) for inv in invoices]
        again = erp.deliver(request_for(invoices[0], attempt=2))
        listed = list(erp.inventory(date(2026, 6, 1), date(2026, 6, 30)))
        ranged = {i.identity for i in erp.inventory(date(2026, 6, 2), date(2026, 6, 3))}
        fetched = erp.token_fetches
    assert state["creates"] == 5 and again.remote_ref == receipts[0].remote_ref
    assert [i.identity for i in listed] == [inv.identity for inv in invoices]
    assert [i.content_hash for i in listed] == [content_hash(inv) for inv in invoices]
    assert all(i.gross == Decimal("113.00") for i in listed)
    assert ranged == {invoices[1].identity, invoices[2].identity}
    assert fetched == state["token_fetches"] == 1  # one token for every call until it expires
    record = state["records"][0]
    assert record["buyer"]["tax_id"] == invoices[0].buyer.tax_id and record["lines"][0]["amount"] == 100


def test_generic_token_is_renewed_when_it_expires_or_is_revoked_and_refusals_keep_the_code() -> None:
    app, state = generic_erp(expires_in=1)
    settings = generic_settings("", {"style": "page", "size": 10})
    with run_asgi(app) as url:
        settings["base_url"] = url
        settings["auth"]["leeway"] = 1.0  # expires_in - leeway = 0: every call needs a new token
        with connector(settings) as erp:
            erp.deliver(request_for(make_invoice(50)))
            assert erp.token_fetches >= 2  # one for the search, one for the create
        settings["auth"]["leeway"] = 0.0
        app2, state2 = generic_erp(expires_in=3600)
        with run_asgi(app2) as url2, connector({**settings, "base_url": url2}) as erp:
            erp.deliver(request_for(make_invoice(51)))
            state2["tokens"].clear()  # the ERP revokes every token
            with pytest.raises(TransientError) as revoked:
                erp.deliver(request_for(make_invoice(52)))
            assert revoked.value.remote_status == 401
            erp.deliver(request_for(make_invoice(52)))  # the retry fetches a new token
            assert state2["token_fetches"] == 2 and state2["creates"] == 2
            no_buyer = Invoice.model_validate(
                {**make_invoice(53).model_dump(), "buyer": {"name": "个人消费者", "tax_id": None}}
            )
            with pytest.raises(PermanentError) as refused:
                erp.deliver(request_for(no_buyer))
    assert refused.value.code == "BUYER_TAX_ID" and refused.value.remote_status == 422
    assert "buyer.tax_id is required" in str(refused.value) and state["creates"] == 1


def test_erpnext_books_on_an_existing_customer_of_the_same_name(servers: dict[str, str]) -> None:
    url = servers["erpnext"]
    httpx.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    headers = {"Authorization": f"token {ERPNEXT_KEY}:{ERPNEXT_SECRET}"}
    invoice = make_invoice(60)
    existing = httpx.post(
        f"{url}/api/resource/Customer", headers=headers, json={"customer_name": invoice.buyer.name}
    )
    assert existing.status_code == 200  # a customer of that name, entered by hand without a tax id
    with connector(Sandbox("erpnext", url).settings()) as erp:
        receipt = erp.deliver(request_for(invoice))
    doc = httpx.get(f"{url}/api/resource/Sales Invoice/{receipt.remote_ref}", headers=headers).json()["data"]
    assert doc["customer"] == invoice.buyer.name and doc["grand_total"] == 113.0
    assert Sandbox("erpnext", url).stats()["records"]["Customer"] == 1


@pytest.mark.parametrize("name", ["odoo", "erpnext"])
def test_one_command_starts_the_sandbox(name: str) -> None:
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parent.parent
    key = ODOO_KEY if name == "odoo" else f"{ERPNEXT_KEY}:{ERPNEXT_SECRET}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "contrib.sandbox",
            name,
            "--port",
            str(port),
            "--option",
            f'api_keys=["{key}"]',
        ],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/_sandbox/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        with connector(Sandbox(name, url).settings()) as erp:
            receipt = erp.deliver(request_for(make_invoice(70)))
        assert receipt.detail["created"] is True and Sandbox(name, url).count() == 1
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_odoo_database_header_is_sent(servers: dict[str, str]) -> None:
    from contrib.sandbox import odoo

    with run_asgi(odoo.create_app(api_keys=[ODOO_KEY], database="books")) as url:
        sandbox = Sandbox("odoo", url)
        with connector(sandbox.settings(odoo={"database": "books"})) as erp:
            assert erp.health().ok
        with connector(sandbox.settings(odoo={"database": "other"})) as erp:
            with pytest.raises(PermanentError) as caught:
                erp.deliver(request_for(make_invoice(71)))
            assert caught.value.remote_status == 404 and "other" in str(caught.value)


def test_generic_basic_auth() -> None:
    seen: list[str] = []

    async def invoices(request: Request) -> Response:
        seen.append(request.headers.get("authorization", ""))
        if request.headers.get("authorization") != "Basic " + base64.b64encode(b"hub:pw").decode():
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if request.method == "POST":
            return JSONResponse({"id": 1, **(await request.json())}, status_code=201)
        return JSONResponse({"items": []})

    app = Starlette(routes=[Route("/invoices", invoices, methods=["GET", "POST"])])
    with run_asgi(app) as url:
        settings = {"base_url": url, "auth": {"type": "basic", "username": "hub", "password": "pw"}}
        with connector(settings) as erp:
            assert erp.deliver(request_for(make_invoice(72))).remote_ref == "1"
        wrong = {**settings, "auth": {"type": "basic", "username": "hub", "password": "no"}}
        with connector(wrong) as erp, pytest.raises(PermanentError) as refused:
            erp.deliver(request_for(make_invoice(72)))
    assert refused.value.remote_status == 401 and refused.value.code == "unauthorized"
    assert len(seen) == 3  # search + create, then the refused search


def test_parallel_deliveries_of_one_key_make_one_record(sandbox: Sandbox) -> None:
    import threading

    request = request_for(make_invoice(80))
    refs: list[str | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)
    with connector(sandbox.settings()) as erp:

        def deliver() -> None:
            barrier.wait()
            try:
                refs.append(erp.deliver(request).remote_ref)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=deliver) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == [] and len(set(refs)) == 1 and len(refs) == 6
    assert sandbox.count() == 1


@pytest.mark.slow
def test_hub_run_books_invoices_in_odoo_and_erpnext(servers: dict[str, str], tmp_path: Path) -> None:
    """Through a whole hub: JSON invoices dropped in a folder are booked once in both ERPs."""
    from tests.conftest import run_hub, write_hub_yaml

    for url in servers.values():
        httpx.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    invoices = [make_invoice(90 + i) for i in range(3)]
    for invoice in invoices:
        # a valid buyer credit code: the hub validates at intake
        data = invoice.model_dump(mode="json")
        data["buyer"]["tax_id"] = "91310000MA1FL0LP00"
        (inbox / f"{invoice.number}.json").write_text(json.dumps(data), encoding="utf-8")
    config = {
        "connectors": {
            "inbox": {"type": "files", "settings": {"path": str(inbox)}},
            "odoo": {
                "type": "erp.rest",
                "settings": {
                    "base_url": servers["odoo"],
                    "preset": "odoo",
                    "auth": {"type": "bearer", "token": "${ODOO_API_KEY}"},
                },
            },
            "erpnext": {
                "type": "erp.rest",
                "settings": {
                    "base_url": servers["erpnext"],
                    "preset": "erpnext",
                    "auth": {"type": "token", "key": ERPNEXT_KEY, "secret": "${ERPNEXT_SECRET}"},
                },
            },
        },
        "routes": [{"from": "inbox", "to": ["odoo", "erpnext"]}],
    }
    write_hub_yaml(tmp_path / "hub.yaml", config)
    env = {"ODOO_API_KEY": ODOO_KEY, "ERPNEXT_SECRET": ERPNEXT_SECRET}
    result = run_hub("run", "--until-idle", "--quiet", cwd=tmp_path, env=env, timeout=120)
    assert "6 delivered" in result.stdout, result.stdout + result.stderr
    assert (
        ODOO_KEY not in result.stdout + result.stderr and ERPNEXT_SECRET not in result.stdout + result.stderr
    )
    assert Sandbox("odoo", servers["odoo"]).count() == 3
    assert Sandbox("erpnext", servers["erpnext"]).count() == 3
    again = run_hub("run", "--until-idle", "--quiet", cwd=tmp_path, env=env, timeout=120)
    assert "0 delivered" in again.stdout
    assert Sandbox("odoo", servers["odoo"]).count() == 3


def test_business_refusal_keeps_the_erps_code_and_message(sandbox: Sandbox) -> None:
    sandbox.faults(refuse_creates=True)
    try:
        with connector(sandbox.settings()) as erp, pytest.raises(PermanentError) as refused:
            erp.deliver(request_for(make_invoice(85)))
    finally:
        sandbox.faults(refuse_creates=False)
    expected = {"odoo": ("odoo.exceptions.ValidationError", 422), "erpnext": ("ValidationError", 417)}
    assert (refused.value.code, refused.value.remote_status) == expected[sandbox.preset]
    assert "closed" in str(refused.value) or "locked" in str(refused.value)
    assert refused.value.remote_body and sandbox.count() == 0
