"""The Acme Ledger sandbox: a small Starlette app that speaks the (fictitious) Acme Ledger API, so the
connector is tested over real HTTP on a loopback socket.

API (what the real platform documents; the sandbox keeps its records in memory):

* ``GET  /health`` → ``{"ok": true}``
* ``POST /v1/invoices`` with ``Authorization: Bearer <token>`` and ``Idempotency-Key: <key>``, a JSON
  invoice → ``201 {"id": "AL-000001", ...}``; the same key again → ``200`` with the record already
  created (the platform's own idempotency). ``401`` for a wrong token, ``400 {"error": {"code",
  "message"}}`` when a business rule refuses the invoice, ``429`` with ``Retry-After``, ``503``.
* ``GET  /v1/invoices?issued_from=&issued_to=&cursor=`` → ``{"items": [...], "next": cursor|null}``

Test control (sandbox only): ``POST /_sandbox/faults {"mode": null|"transient"|"rate_limited"|
"permanent"}`` — ``transient`` answers 503 and ``rate_limited`` 429 (Retry-After 1) to the first call
for each idempotency key; ``permanent`` refuses every invoice (400 ``E_BUYER_BLOCKED``).

Run it by hand with ``python -m invoice_hub_acme_ledger.sandbox --port 8765 --token t``.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PAGE_SIZE = 3  # small, so clients must follow the cursor


class AcmeLedgerState:
    def __init__(self, token: str) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = {}  # idempotency key → record
        self.fault: str | None = None
        self.failed_once: set[str] = set()
        self.calls = 0


def create_app(token: str = "sandbox-token") -> Starlette:
    state = AcmeLedgerState(token)

    def error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {state.token}"

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def create_invoice(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "E_UNAUTHORIZED", "missing or wrong bearer token")
        key = request.headers.get("idempotency-key")
        if not key:
            return error(400, "E_NO_IDEMPOTENCY_KEY", "the Idempotency-Key header is required")
        body = await request.json()
        with state.lock:
            state.calls += 1
            if key in state.records:
                return JSONResponse(state.records[key], 200)
            if state.fault == "permanent":
                return error(400, "E_BUYER_BLOCKED", "the buyer is blocked in this ledger")
            if state.fault in ("transient", "rate_limited") and key not in state.failed_once:
                state.failed_once.add(key)
                if state.fault == "transient":
                    return error(503, "E_MAINTENANCE", "back in a moment")
                return error(429, "E_RATE", "slow down", **{"Retry-After": "1"})
            missing = [
                f for f in ("identity", "number", "issue_date", "currency", "gross") if not body.get(f)
            ]
            if missing:
                return error(400, "E_MISSING_FIELD", f"missing: {', '.join(missing)}")
            record = {"id": f"AL-{len(state.records) + 1:06d}", "key": key, **body}
            state.records[key] = record
        return JSONResponse(record, 201)

    async def list_invoices(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "E_UNAUTHORIZED", "missing or wrong bearer token")
        since = request.query_params.get("issued_from")
        until = request.query_params.get("issued_to")
        start = int(request.query_params.get("cursor") or 0)
        with state.lock:
            rows = [
                r
                for r in state.records.values()
                if (not since or r["issue_date"] >= since) and (not until or r["issue_date"] <= until)
            ]
        page = rows[start : start + PAGE_SIZE]
        nxt = str(start + PAGE_SIZE) if start + PAGE_SIZE < len(rows) else None
        return JSONResponse({"items": page, "next": nxt})

    async def faults(request: Request) -> JSONResponse:
        body = await request.json()
        with state.lock:
            state.fault = body.get("mode")
            state.failed_once.clear()
        return JSONResponse({"mode": state.fault})

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/invoices", create_invoice, methods=["POST"]),
            Route("/v1/invoices", list_invoices, methods=["GET"]),
            Route("/_sandbox/faults", faults, methods=["POST"]),
        ]
    )
    app.state.acme = state
    return app


@contextmanager
def serve(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on a loopback port in a thread; yield its base URL; stop on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http="h11", ws="none", lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the Acme Ledger sandbox did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Acme Ledger sandbox.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="sandbox-token")
    args = parser.parse_args()
    uvicorn.run(create_app(args.token), host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
