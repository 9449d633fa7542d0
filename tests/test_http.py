"""The HTTP API against a live server (uvicorn on a real socket, in this process so the test can read the
ledger): authentication and roles, document intake with tokens and HMAC, size limits, dead letters
through list, show, edit (422 with field paths), replay, discard, four-eyes, and the audit trail."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from hub.config import load_config
from hub.engine import Hub
from hub.http import serve_in_thread
from hub.ledger import schema as t
from tests.test_http_server import (
    HMAC_SECRET,
    INTAKE,
    OPERATOR,
    SECOND_OPERATOR,
    VIEWER,
    free_port,
    hub_config,
    invoice,
    wait_ready,
)


@contextmanager
def _serve(tmp_path: Path, four_eyes: bool) -> Iterator[tuple[str, Hub]]:
    os.environ["HUB_TEST_OPERATOR"] = OPERATOR
    hub = Hub(load_config(hub_config(tmp_path, four_eyes=four_eyes)))
    port = free_port()
    thread = serve_in_thread(hub, port=port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base, hub
    finally:
        hub.stop()
        thread.join(timeout=10)
        hub.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Hub]]:
    with _serve(tmp_path, four_eyes=False) as live:
        yield live


@pytest.fixture
def four_eyes_server(tmp_path: Path) -> Iterator[tuple[str, Hub]]:
    with _serve(tmp_path, four_eyes=True) as live:
        yield live


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_invoice(base: str, data: dict[str, Any], token: str = OPERATOR) -> httpx.Response:
    body = json.dumps(data, ensure_ascii=False).encode()
    return httpx.post(
        f"{base}/api/documents?filename={data['number']}.json",
        content=body,
        headers={**auth(token), "Content-Type": "application/json"},
    )


def test_reads_need_a_token_and_writes_need_an_operator(server: tuple[str, Hub]) -> None:
    base, _hub = server
    assert httpx.get(f"{base}/api/status").status_code == 401
    assert httpx.get(f"{base}/api/status", headers=auth("not-a-token-at-all-xx")).status_code == 401
    assert httpx.get(f"{base}/api/status", headers=auth(VIEWER)).status_code == 200
    assert httpx.get(f"{base}/api/status", headers=auth(INTAKE)).status_code == 403
    denied = httpx.post(f"{base}/api/dead-letters/1/replay", headers=auth(VIEWER), json={})
    assert denied.status_code == 403 and "viewer" in denied.json()["error"]
    assert httpx.post(f"{base}/api/dead-letters/1/replay", headers=auth(OPERATOR), json={}).status_code == 404
    plugins = httpx.get(f"{base}/api/plugins", headers=auth(VIEWER)).json()
    assert {"recording", "archive.fs", "files"} <= {c for p in plugins for c in p["connector_types"]}


def test_document_intake_by_token_and_by_hmac_with_a_size_limit(server: tuple[str, Hub]) -> None:
    base, hub = server
    ok = post_invoice(base, invoice(), token=INTAKE)
    assert ok.status_code == 200, ok.text
    assert ok.json()["accepted"] == 1 and ok.json()["identities"] == ["CN:25322000000000000001"]
    again = post_invoice(base, invoice(), token=OPERATOR)
    assert again.json()["duplicates"] == 1

    body = json.dumps(invoice("02-25112000000000000002.json"), ensure_ascii=False).encode()
    signature = "sha256=" + hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    signed = httpx.post(
        f"{base}/api/documents",
        content=body,
        headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
    )
    assert signed.status_code == 200 and signed.json()["accepted"] == 1
    forged = httpx.post(
        f"{base}/api/documents",
        content=body + b" ",
        headers={"X-Hub-Signature-256": signature, "Content-Type": "application/json"},
    )
    assert forged.status_code == 401
    assert httpx.post(f"{base}/api/documents", content=body).status_code == 401
    assert post_invoice(base, invoice(), token=VIEWER).status_code == 403

    huge = httpx.post(
        f"{base}/api/documents",
        content=b"x" * 300_000,
        headers={**auth(INTAKE), "Content-Type": "text/plain"},
    )
    assert huge.status_code == 413

    # The documents are in the ledger under the configured source, with the token's name as origin.
    with hub.ledger.engine.connect() as conn:
        origins = set(conn.execute(sa.select(t.documents.c.origin, t.documents.c.source)).all())
    assert origins == {("http:scanner", "inbox"), ("http:hmac", "inbox")}


def test_dead_letter_list_show_edit_and_replay_with_the_audit_trail(server: tuple[str, Hub]) -> None:
    base, hub = server
    broken = invoice(number="25322000000000000077", totals__gross="1.00")
    out = post_invoice(base, broken).json()
    assert out["dead_letters"] == 1
    letters = httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json()
    [letter] = letters
    assert letter["stage"] == "intake" and letter["error_class"] == "InvoiceInvalid"
    grouped = httpx.get(f"{base}/api/dead-letters?group_by=error", headers=auth(VIEWER)).json()
    assert grouped == [
        {
            "destination": "intake:inbox",
            "error": "InvoiceInvalid",
            "count": 1,
            "first": letter["created_at"],
            "last": letter["created_at"],
            "ids": [letter["id"]],
        }
    ]
    assert httpx.get(f"{base}/api/dead-letters?destination=erp", headers=auth(VIEWER)).json() == []
    bad_filter = httpx.get(f"{base}/api/dead-letters?since=yesterday-ish", headers=auth(VIEWER))
    assert bad_filter.status_code == 400 and "since" in bad_filter.json()["error"]

    shown = httpx.get(f"{base}/api/dead-letters/{letter['id']}", headers=auth(VIEWER)).json()
    kept = shown["invoice"]
    assert kept["number"] == "25322000000000000077"

    # Still wrong, and a new mistake: 422 naming each field.
    wrong = dict(kept, number="123")
    resp = httpx.post(
        f"{base}/api/dead-letters/{letter['id']}/edit", headers=auth(OPERATOR), json={"invoice": wrong}
    )
    assert resp.status_code == 422
    paths = {p["path"] for p in resp.json()["problems"]}
    assert paths == {"number", "totals.gross"}

    fixed = json.loads(json.dumps(kept))
    fixed["totals"]["gross"] = "14480.00"
    resp = httpx.post(
        f"{base}/api/dead-letters/{letter['id']}/edit",
        headers=auth(OPERATOR),
        json={"invoice": fixed, "reason": "gross typed wrong"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["action"] == "replayed"

    story = httpx.get(f"{base}/api/trace/25322000000000000077", headers=auth(VIEWER)).json()
    assert {d["destination"] for d in story["deliveries"]} == {"erp", "archive"}
    assert any("operator alice" in e["what"] for e in story["timeline"])
    with hub.ledger.engine.connect() as conn:
        actors = {r.actor for r in conn.execute(sa.select(t.audit_log.c.actor, t.audit_log.c.action))}
    assert actors == {"alice"}

    # Replaying or discarding a letter that is no longer open changes nothing.
    again = httpx.post(f"{base}/api/dead-letters/{letter['id']}/replay", headers=auth(OPERATOR), json={})
    assert again.json()[0]["action"] == "skipped"
    no_reason = httpx.post(f"{base}/api/dead-letters/{letter['id']}/discard", headers=auth(OPERATOR), json={})
    assert no_reason.status_code == 400


def test_bulk_replay_dry_run_counts_and_names_destinations(server: tuple[str, Hub]) -> None:
    base, hub = server
    (hub.data_dir.parent / "erp.down").touch()
    post_invoice(base, invoice())
    post_invoice(base, invoice("02-25112000000000000002.json"))
    hub.relay_once()
    with hub.ledger.engine.connect() as conn:
        ids = {d: ids for d, ids in _pending(conn).items()}
    for dest, delivery_ids in ids.items():
        hub.worker.handle(dest, delivery_ids)
    letters = httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json()
    assert {x["destination"] for x in letters} == {"erp"} and len(letters) == 2

    dry = httpx.post(
        f"{base}/api/dead-letters/replay",
        headers=auth(OPERATOR),
        json={"destination": "erp", "dry_run": True},
    ).json()
    assert (dry["count"], dry["destinations"], dry["dry_run"]) == (2, ["erp"], True)
    assert {r["action"] for r in dry["results"]} == {"would_replay"}
    assert len(httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json()) == 2

    (hub.data_dir.parent / "erp.down").unlink()
    done = httpx.post(
        f"{base}/api/dead-letters/replay", headers=auth(OPERATOR), json={"destination": "erp", "reason": "up"}
    ).json()
    assert {r["action"] for r in done["results"]} == {"replayed"}
    assert httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json() == []


def _pending(conn: Any) -> dict[str, list[int]]:
    d = t.deliveries
    out: dict[str, list[int]] = {}
    for row in conn.execute(sa.select(d.c.id, d.c.destination).where(d.c.state == "pending")):
        out.setdefault(row.destination, []).append(row.id)
    return out


def test_four_eyes_edit_waits_for_a_second_operator(four_eyes_server: tuple[str, Hub]) -> None:
    base, _hub = four_eyes_server
    post_invoice(base, invoice(number="25322000000000000078", totals__gross="2.00"))
    [letter] = httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json()
    kept = httpx.get(f"{base}/api/dead-letters/{letter['id']}", headers=auth(VIEWER)).json()["invoice"]
    kept["totals"]["gross"] = "14480.00"
    proposed = httpx.post(
        f"{base}/api/dead-letters/{letter['id']}/edit", headers=auth(OPERATOR), json={"invoice": kept}
    )
    assert proposed.status_code == 202
    edit_id = proposed.json()["edit_id"]
    # Not replayed yet.
    assert len(httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json()) == 1
    [pending] = httpx.get(f"{base}/api/edits", headers=auth(VIEWER)).json()
    assert pending["changes"] == [{"path": "totals.gross", "before": "2.00", "after": "14480.00"}]

    own = httpx.post(f"{base}/api/edits/{edit_id}/approve", headers=auth(OPERATOR), json={})
    assert own.status_code == 409 and "second operator" in own.json()["error"]
    approved = httpx.post(f"{base}/api/edits/{edit_id}/approve", headers=auth(SECOND_OPERATOR), json={})
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved" and approved.json()["replay"]["action"] == "replayed"
    assert httpx.get(f"{base}/api/dead-letters", headers=auth(VIEWER)).json() == []
    twice = httpx.post(f"{base}/api/edits/{edit_id}/approve", headers=auth(SECOND_OPERATOR), json={})
    assert twice.status_code == 409


def test_reconcile_over_http(server: tuple[str, Hub]) -> None:
    base, hub = server
    post_invoice(base, invoice())
    hub.relay_once()
    with hub.ledger.engine.connect() as conn:
        pending = _pending(conn)
    hub.worker.handle("erp", pending["erp"])  # the archive's delivery is still pending
    report = httpx.get(f"{base}/api/reconcile?a=erp&b=archive&summary=true", headers=auth(VIEWER)).json()
    [gap] = report["gaps"]
    assert (gap["kind"], gap["ledger"], gap["missing_at"]) == ("only_in_a", "pending", "archive")
    assert report["summary"][0]["a_count"] == 1 and report["summary"][0]["b_count"] == 0
    unknown = httpx.get(f"{base}/api/reconcile?a=erp&b=nowhere", headers=auth(VIEWER))
    assert unknown.status_code == 400 and "nowhere" in unknown.json()["error"]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'hub_reconcile_gaps{a="erp",b="archive",kind="only_in_a"} 1.0' in metrics
    from hub.reconcile import last_runs

    assert [r["actor"] for r in last_runs(hub.ledger)] == ["victor"]


def test_grafana_dashboard_queries_only_metrics_the_hub_exports(server: tuple[str, Hub]) -> None:
    import re

    from tests.conftest import REPO

    base, _hub = server
    dashboard = json.loads((REPO / "contrib" / "grafana" / "invoice-hub.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bhub_[a-z_]+", e)}
    exported = set(re.findall(r"^# TYPE (hub_[a-z_]+) (\w+)", httpx.get(f"{base}/metrics").text, re.M))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "counter":
            names.add(f"{name}_total")
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert used and used <= names, used - names
