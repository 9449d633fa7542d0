"""The web console over real HTTP (no browser): login and session cookies, CSRF on every form, roles,
the bulk-replay confirmation, masked secrets that survive an edit, and the four-eyes pages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from hub.engine import Hub
from hub.ledger import schema as t
from tests.test_http import _serve, post_invoice
from tests.test_http_server import INTAKE, OPERATOR, SECOND_OPERATOR, VIEWER, invoice


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Hub]]:
    with _serve(tmp_path, four_eyes=False) as server:
        yield server


def login(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base)
    form = client.get("/login?next=/dead-letters")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    resp = client.post("/login", data={"csrf": csrf, "token": token, "next": "/dead-letters"})
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/dead-letters"
    return client


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def test_login_sets_a_strict_httponly_session_without_the_token(live: tuple[str, Hub]) -> None:
    base, _hub = live
    first = httpx.get(f"{base}/dead-letters")
    assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
    client = login(base, OPERATOR)
    cookie = next(h for h in client.cookies.jar)
    assert cookie.name == "hub_session"
    set_cookie = [v for k, v in client.get("/login").headers.multi_items() if k == "set-cookie"]
    assert set_cookie  # the login page sets its own CSRF cookie
    raw = client.cookies["hub_session"]
    assert OPERATOR not in raw
    page = client.get("/")
    assert page.status_code == 200 and "alice (operator)" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    # A cookie with a changed name is refused (the signature no longer matches).
    payload, sig = raw.rsplit(".", 1)
    forged = httpx.get(f"{base}/", cookies={"hub_session": payload[:-2] + "xx." + sig})
    assert forged.status_code == 303
    client.close()


def test_login_response_cookie_flags(live: tuple[str, Hub]) -> None:
    base, _hub = live
    with httpx.Client(base_url=base) as client:
        form = client.get("/login")
        resp = client.post("/login", data={"csrf": csrf_of(form.text), "token": OPERATOR, "next": "/"})
    header = next(
        v for k, v in resp.headers.multi_items() if k == "set-cookie" and v.startswith("hub_session=")
    )
    assert "HttpOnly" in header and "SameSite=strict" in header.replace("Strict", "strict")


def test_intake_tokens_and_unknown_tokens_cannot_log_in(live: tuple[str, Hub]) -> None:
    base, _hub = live
    for token in (INTAKE, "no-such-token-no-such-token"):
        with httpx.Client(base_url=base) as client:
            form = client.get("/login")
            resp = client.post("/login", data={"csrf": csrf_of(form.text), "token": token})
            assert resp.status_code == 401 and "unknown token" in resp.text
            assert token not in resp.text


def test_every_form_needs_its_csrf_token_and_viewers_cannot_act(live: tuple[str, Hub]) -> None:
    base, hub = live
    post_invoice(base, invoice(number="25322000000000000081", totals__gross="3.00"))
    [letter_id] = [r.id for r in _letters(hub)]
    operator = login(base, OPERATOR)
    page = operator.get(f"/dead-letters/{letter_id}")
    assert page.status_code == 200
    no_csrf = operator.post(f"/dead-letters/{letter_id}/discard", data={"reason": "test"})
    assert no_csrf.status_code == 400 and "CSRF" in no_csrf.text
    wrong = operator.post(f"/dead-letters/{letter_id}/discard", data={"reason": "test", "csrf": "x" * 32})
    assert wrong.status_code == 400
    assert [r.state for r in _letters(hub)] == ["open"]

    viewer = login(base, VIEWER)
    vpage = viewer.get(f"/dead-letters/{letter_id}")
    assert 'id="replay"' not in vpage.text and 'id="check-edit"' not in vpage.text
    denied = viewer.post(f"/dead-letters/{letter_id}/replay", data={"csrf": csrf_of(vpage.text)})
    assert denied.status_code == 400 and "viewer" in denied.text

    done = operator.post(
        f"/dead-letters/{letter_id}/discard", data={"reason": "sent by mistake", "csrf": csrf_of(page.text)}
    )
    assert done.status_code == 303
    assert [r.state for r in _letters(hub)] == ["discarded"]
    with hub.ledger.engine.connect() as conn:
        actors = set(conn.execute(sa.select(t.audit_log.c.actor)).scalars())
    assert actors == {"alice"}
    operator.close()
    viewer.close()


def _letters(hub: Hub) -> list[sa.Row[tuple[int, str]]]:
    with hub.ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(t.dead_letters.c.id, t.dead_letters.c.state)))


def test_bulk_replay_asks_first_with_the_count_and_destinations(live: tuple[str, Hub]) -> None:
    base, hub = live
    post_invoice(base, invoice(number="25322000000000000082", totals__gross="4.00"))
    post_invoice(base, invoice(number="25322000000000000083", totals__gross="5.00"))
    client = login(base, OPERATOR)
    page = client.get("/dead-letters?group_by=error")
    assert "InvoiceInvalid" in page.text and ">2<" in page.text
    confirm = client.post("/dead-letters/bulk", data={"csrf": csrf_of(page.text), "destination": ""})
    assert confirm.status_code == 200
    summary = re.sub(r"\s+", " ", re.search(r'<p id="bulk-summary">(.*?)</p>', confirm.text, re.S).group(1))  # type: ignore[union-attr]
    assert "<b>2</b> dead letter(s)" in summary and "intake:inbox" in summary
    assert [r.state for r in _letters(hub)] == ["open", "open"]  # nothing happened yet
    ids = re.search(r'name="ids" value="([^"]*)"', confirm.text).group(1)  # type: ignore[union-attr]
    done = client.post(
        "/dead-letters/bulk",
        data={"csrf": csrf_of(confirm.text), "ids": ids, "confirm": "yes", "reason": "retry"},
    )
    assert done.status_code == 303 and "flash=" in done.headers["location"]
    # Both were replayed and failed again (still invalid): the letters record the second failure.
    with hub.ledger.engine.connect() as conn:
        attempts = list(conn.execute(sa.select(t.dead_letters.c.attempts)).scalars())
    assert attempts == [1, 1]
    # A group's own button asks for exactly that group.
    groups = client.get("/dead-letters?group_by=error")
    assert "Replay these 2…" in groups.text
    group_ids = re.search(r'name="ids" value="([\d,]+)"', groups.text).group(1)  # type: ignore[union-attr]
    asked = client.post(
        "/dead-letters/bulk", data={"csrf": csrf_of(groups.text), "ids": group_ids.split(",")[0]}
    )
    assert "<b>1</b> dead letter(s)" in asked.text
    client.close()


def test_masked_bank_account_is_never_rendered_and_survives_an_edit(live: tuple[str, Hub]) -> None:
    base, hub = live
    broken = invoice(number="25322000000000000084", totals__gross="6.00")
    account = broken["seller"]["bank_account"]
    post_invoice(base, broken)
    [letter_id] = [r.id for r in _letters(hub)]
    client = login(base, OPERATOR)
    page = client.get(f"/dead-letters/{letter_id}")
    assert account not in page.text and "••••" + account[-4:] in page.text
    fields = dict(re.findall(r'name="(f:[^"]+)" value="([^"]*)"', page.text))
    fields = {k: v.replace("&#34;", '"').replace("&amp;", "&") for k, v in fields.items()}
    fields["f:totals.gross"] = "14480.00"
    preview = client.post(f"/dead-letters/{letter_id}/edit", data={**fields, "csrf": csrf_of(page.text)})
    assert preview.status_code == 200 and 'id="diff"' in preview.text
    assert account not in preview.text
    changed = re.findall(r"<tr><td>([^<]+)</td><td class=\"before\">", preview.text)
    assert changed == ["totals.gross"]
    confirm = client.post(
        f"/dead-letters/{letter_id}/edit", data={**fields, "step": "confirm", "csrf": csrf_of(page.text)}
    )
    assert confirm.status_code == 303 and confirm.headers["location"].startswith("/trace?")
    with hub.ledger.engine.connect() as conn:
        stored = json.loads(conn.execute(sa.select(t.invoice_versions.c.invoice_json)).scalar_one())
    assert stored["seller"]["bank_account"] == account
    assert stored["totals"]["gross"] in ("14480.00", "14480")
    client.close()


def test_four_eyes_pages(tmp_path: Path) -> None:
    with _serve(tmp_path, four_eyes=True) as (base, hub):
        post_invoice(base, invoice(number="25322000000000000085", totals__gross="7.00"))
        [letter_id] = [r.id for r in _letters(hub)]
        alice = login(base, OPERATOR)
        page = alice.get(f"/dead-letters/{letter_id}")
        fields = dict(re.findall(r'name="(f:[^"]+)" value="([^"]*)"', page.text))
        fields["f:totals.gross"] = "14480.00"
        sent = alice.post(
            f"/dead-letters/{letter_id}/edit", data={**fields, "step": "confirm", "csrf": csrf_of(page.text)}
        )
        assert sent.status_code == 303 and sent.headers["location"].startswith("/edits?")
        edits = alice.get("/edits")
        assert "awaiting approval" in edits.text and "disabled" in edits.text  # alice cannot approve her own
        assert [r.state for r in _letters(hub)] == ["open"]
        bob = login(base, SECOND_OPERATOR)
        bob_page = bob.get("/edits")
        edit_id = re.search(r'action="/edits/(\d+)/approve"', bob_page.text).group(1)  # type: ignore[union-attr]
        approved = bob.post(f"/edits/{edit_id}/approve", data={"csrf": csrf_of(bob_page.text)})
        assert approved.status_code == 303 and "approved" in approved.headers["location"]
        assert [r.state for r in _letters(hub)] == ["replayed"]
        alice.close()
        bob.close()


def test_overview_trace_and_reconcile_pages(live: tuple[str, Hub]) -> None:
    base, hub = live
    post_invoice(base, invoice())
    hub.relay_once()
    with hub.ledger.engine.connect() as conn:
        pending = list(
            conn.execute(
                sa.select(t.deliveries.c.id).where(
                    t.deliveries.c.destination == "erp", t.deliveries.c.state == "pending"
                )
            ).scalars()
        )
    hub.worker.handle("erp", pending)
    client = login(base, VIEWER)
    overview = client.get("/")
    assert overview.status_code == 200
    for name in ("inbox", "erp", "archive"):
        assert f"<td>{name}</td>" in overview.text  # connector health table
    trace = client.get("/trace", params={"q": "25322000000000000001"})
    assert "delivery delivered" in trace.text and "delivery pending" in trace.text
    missing = client.get("/trace", params={"q": "nothing-like-this"})
    assert missing.status_code == 200 and "nothing in the ledger matches" in missing.text
    rec = client.get("/reconcile", params={"a": "erp", "b": "archive"})
    assert rec.status_code == 200 and 'id="gaps"' in rec.text and "only in erp" in rec.text
    assert "pending" in rec.text and 'id="summary"' in rec.text
    assert "erp ↔ archive" in client.get("/").text  # the run is listed on the overview
    client.close()
