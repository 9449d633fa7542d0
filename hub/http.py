"""The HTTP side of the hub: JSON API, Prometheus metrics, health checks and the web console.

One Starlette app (``create_app``) on one ``Hub``: ``hub serve`` runs it alone, ``hub run --http PORT``
next to the run loop. Every operation goes through ``hub.ops`` (the same functions as the CLI), so an
action behaves the same wherever it is started, and every write is in the audit log with the token's
name as the actor.

Authentication (``http:`` in hub.yaml, typed by ``HttpConfig``)::

    http:
      tokens:
        - {name: alice, token: "${HUB_TOKEN_ALICE}", role: operator}   # read, replay, edit, discard
        - {name: grafana, token: "${HUB_TOKEN_VIEW}", role: viewer}    # read only
        - {name: scanner, token: "${HUB_TOKEN_SCAN}", role: intake}    # POST /api/documents only
      intake: {source: inbox, max_bytes: 10485760, hmac_secret: "${HUB_INTAKE_HMAC}"}
      four_eyes: false

API calls carry ``Authorization: Bearer <token>``; document intake also accepts
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``. ``/metrics``, ``/healthz`` and
``/readyz`` are open (bind to a private address). Tokens are ``SecretStr``: never logged, never
rendered. The console (``hub/console``) logs in with a token and keeps only the token's *name* in an
HMAC-signed, HttpOnly, SameSite=Strict cookie.

Metrics are derived from the ledger at scrape time (``LedgerCollector``: a few GROUP BY queries), so
they always agree with the ledger's own counts, across restarts and processes.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import orjson
import pydantic
import sqlalchemy as sa
import structlog
from kombu.exceptions import KombuError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import ops
from hub.connectors import Incoming
from hub.errors import ConfigError, HubError, InvoiceInvalid, LedgerError
from hub.ledger import schema as t
from hub.models import Document

if TYPE_CHECKING:
    from hub.config import LoadedConfig
    from hub.engine import Hub

log = structlog.get_logger()

Role = Literal["viewer", "operator", "intake"]


# ---------------------------------------------------------------------------------------------------
# Config: the `http:` section of hub.yaml
# ---------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenConfig(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    token: SecretStr
    role: Role = "viewer"


class IntakeConfig(_Strict):
    #: The source name documents posted to /api/documents are recorded under (routes from it apply).
    source: str = "http"
    max_bytes: int = Field(10 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    hmac_secret: SecretStr | None = None


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    tokens: list[TokenConfig] = Field(default_factory=list)
    intake: IntakeConfig = Field(default_factory=lambda: IntakeConfig.model_validate({}))
    #: An edit is replayed only after a second operator approves it.
    four_eyes: bool = False
    #: Key for the console's session cookies (default: random per process, so a restart logs out).
    session_secret: SecretStr | None = None
    session_hours: float = Field(8.0, gt=0, le=24 * 30)
    #: Mark cookies Secure (set when the console is served over HTTPS, e.g. behind a proxy).
    secure_cookies: bool = False


def http_config(loaded: LoadedConfig) -> HttpConfig:
    """Validate hub.yaml's ``http:`` section; errors name the YAML path and line."""
    try:
        cfg = HttpConfig.model_validate(loaded.config.http)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{loaded.where('http', *err['loc'])}: {msg}")
        error = ConfigError("\n".join(problems))
        error.context["errors"] = problems
        raise error from None
    names = [x.name for x in cfg.tokens]
    secrets = [x.token.get_secret_value() for x in cfg.tokens]
    problems = []
    for i, tok in enumerate(cfg.tokens):
        if names.index(tok.name) != i:
            problems.append(f"{loaded.where('http', 'tokens', i, 'name')}: token name {tok.name!r} repeats")
        if len(secrets[i]) < 16:
            problems.append(
                f"{loaded.where('http', 'tokens', i, 'token')}: a token needs 16 characters or more"
            )
        elif secrets.index(secrets[i]) != i:
            problems.append(f"{loaded.where('http', 'tokens', i, 'token')}: the same token is given twice")
    if problems:
        error = ConfigError("\n".join(problems))
        error.context["errors"] = problems
        raise error
    return cfg


# ---------------------------------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def can(self, need: Role) -> bool:
        if need == "intake":
            return self.role in ("intake", "operator")
        if need == "viewer":
            return self.role in ("viewer", "operator")
        return self.role == "operator"


class Unauthorized(HubError):
    pass


class Forbidden(HubError):
    pass


class TooLarge(HubError):
    pass


def find_token(cfg: HttpConfig, presented: str) -> Principal | None:
    """The token entry whose secret matches (compared in constant time against every entry)."""
    found = None
    given = presented.encode()
    for tok in cfg.tokens:
        if hmac.compare_digest(tok.token.get_secret_value().encode(), given):
            found = Principal(tok.name, tok.role)
    return found


def principal_named(cfg: HttpConfig, name: str) -> Principal | None:
    for tok in cfg.tokens:
        if tok.name == name:
            return Principal(tok.name, tok.role)
    return None


def bearer(request: Request, cfg: HttpConfig, need: Role) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    who = find_token(cfg, value.strip())
    if who is None:
        raise Unauthorized("unknown token")
    if not who.can(need):
        raise Forbidden(f"token {who.name!r} has role {who.role}; this needs {need}")
    return who


# ---------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------
def _default(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


def _error(status: int, message: str, **extra: Any) -> Json:
    return Json({"error": message, **extra}, status_code=status)


Handler = Callable[[Request], Awaitable[Response]]


def _guard(fn: Handler) -> Handler:
    """Map the hub's errors to HTTP answers (4xx for the caller's mistakes, 503 when the ledger is down)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except Unauthorized as exc:
            return Json({"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        except Forbidden as exc:
            return _error(403, str(exc))
        except TooLarge as exc:
            return _error(413, str(exc))
        except ops.NotFound as exc:
            return _error(404, str(exc))
        except ops.Conflict as exc:
            return _error(409, str(exc))
        except InvoiceInvalid as exc:
            return _error(
                422,
                str(exc),
                problems=[
                    {"path": p.path, "message": p.message, "severity": p.severity, "rule": p.rule}
                    for p in exc.problems
                ],
            )
        except LedgerError as exc:
            log.warning("http_ledger_unavailable", error=str(exc))
            return _error(503, "the ledger is not reachable")
        except HubError as exc:
            return _error(400, str(exc))

    wrapped.__name__ = fn.__name__
    return wrapped


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HubError(f"{name}: {raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise HubError(f"{name}: {value} is not between {lo} and {hi}")
    return value


def _choice(value: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise HubError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _letter_id(request: Request) -> int:
    raw = request.path_params["letter_id"]
    try:
        value = int(raw)
    except ValueError:
        raise ops.NotFound(f"no dead letter {raw!r}") from None
    if not 0 < value < 2**62:
        raise ops.NotFound(f"no dead letter {raw!r}")
    return value


async def _json_body(request: Request, limit: int = 5 * 1024 * 1024) -> Any:
    body = await _read_limited(request, limit)
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HubError(f"the request body is not valid JSON: {exc}") from None


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    return {
        "destination": q.get("destination") or None,
        "error": q.get("error") or None,
        "since": ops.parse_since(q.get("since") or None),
    }


def _filters_from(data: dict[str, Any]) -> dict[str, Any]:
    def text(key: str) -> str | None:
        value = data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise HubError(f"{key}: expected a string")
        return value

    return {
        "destination": text("destination"),
        "error": text("error"),
        "since": ops.parse_since(text("since")),
    }


def _reason(data: dict[str, Any]) -> str | None:
    value = data.get("reason")
    if value is not None and not isinstance(value, str):
        raise HubError("reason: expected a string")
    return value or None


def _flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise HubError(f"{key}: expected true or false")
    return value


# ---------------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------------
class Api:
    def __init__(self, hub: Hub, cfg: HttpConfig) -> None:
        self.hub = hub
        self.cfg = cfg
        self.ledger = hub.ledger

    def routes(self) -> list[Route]:
        g = _guard
        return [
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", g(self.readyz), methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/api/documents", g(self.post_document), methods=["POST"]),
            Route("/api/status", g(self.status), methods=["GET"]),
            Route("/api/trace/{query:path}", g(self.trace), methods=["GET"]),
            Route("/api/dead-letters", g(self.letters), methods=["GET"]),
            Route("/api/dead-letters/replay", g(self.replay_bulk), methods=["POST"]),
            Route("/api/dead-letters/{letter_id}", g(self.letter), methods=["GET"]),
            Route("/api/dead-letters/{letter_id}/replay", g(self.replay), methods=["POST"]),
            Route("/api/dead-letters/{letter_id}/discard", g(self.discard), methods=["POST"]),
            Route("/api/dead-letters/{letter_id}/edit", g(self.edit), methods=["POST"]),
            Route("/api/edits", g(self.edits), methods=["GET"]),
            Route("/api/edits/{edit_id}/approve", g(self.approve), methods=["POST"]),
            Route("/api/edits/{edit_id}/reject", g(self.reject), methods=["POST"]),
            Route("/api/reconcile", g(self.reconcile), methods=["GET"]),
            Route("/api/plugins", g(self.plugins), methods=["GET"]),
        ]

    # -- open endpoints ------------------------------------------------------------------------
    async def openapi(self, request: Request) -> Response:
        return Json(openapi_document(sorted(self.hub.inventories)))

    async def healthz(self, request: Request) -> Response:
        return Json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = await run_in_threadpool(readiness, self.hub)
        ok = all(c["ok"] for c in checks.values())
        return Json(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    async def metrics(self, request: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LedgerCollector(self.hub))
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- intake ---------------------------------------------------------------------------------
    async def post_document(self, request: Request) -> Response:
        intake = self.cfg.intake
        signature = request.headers.get("x-hub-signature-256")
        who: Principal | None = None
        if signature is None or request.headers.get("authorization"):
            who = bearer(request, self.cfg, "intake")
        elif intake.hmac_secret is None:
            raise Unauthorized(
                "HMAC signatures are not enabled (http.intake.hmac_secret); send a bearer token"
            )
        body = await _read_limited(request, intake.max_bytes)
        if who is None:
            assert intake.hmac_secret is not None and signature is not None
            expected = hmac.new(
                intake.hmac_secret.get_secret_value().encode(), body, hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(signature.strip().removeprefix("sha256=").lower(), expected):
                raise Unauthorized("the X-Hub-Signature-256 signature does not match the body")
            who = Principal("hmac", "intake")
        if not body:
            raise HubError("the request body is empty: send the document's bytes")
        media_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        filename = request.query_params.get("filename") or request.headers.get("x-filename") or None
        if filename is not None and (len(filename) > 255 or any(ord(ch) < 32 for ch in filename)):
            raise HubError("filename: at most 255 printable characters")
        doc = Document(
            content=body,
            media_type=media_type or "application/octet-stream",
            filename=filename,
            source=intake.source,
            origin=f"http:{who.name}",
        )
        item = Incoming(documents=[doc], key=f"http:{doc.sha256}")
        [outcome] = await run_in_threadpool(self.hub.ingest, [item], intake.source)
        log.info("http_document_received", actor=who.name, sha256=doc.sha256, accepted=outcome.accepted)
        return Json(
            {
                "sha256": doc.sha256,
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "amendments": outcome.amendments,
                "dead_letters": outcome.dead_letters,
                "identities": outcome.identities,
            }
        )

    # -- reads ----------------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        bearer(request, self.cfg, "viewer")
        return Json(await run_in_threadpool(ops.status, self.ledger))

    async def trace(self, request: Request) -> Response:
        bearer(request, self.cfg, "viewer")
        query = request.path_params["query"]
        if not query.strip():
            raise ops.NotFound("give an invoice number, identity or content hash")
        return Json(await run_in_threadpool(ops.trace, self.ledger, query))

    async def letters(self, request: Request) -> Response:
        bearer(request, self.cfg, "viewer")
        q = request.query_params
        kwargs = _filters(request)
        kwargs["state"] = _choice(q.get("state"), "state", ("open", "replayed", "discarded", "all")) or "open"
        kwargs["group_by"] = _choice(q.get("group_by"), "group_by", ("error", "destination"))
        kwargs["limit"] = _int_param(request, "limit", 1000, 1, 100_000)
        rows = await run_in_threadpool(lambda: ops.dlq_list(self.ledger, **kwargs))
        return Json(rows)

    async def letter(self, request: Request) -> Response:
        bearer(request, self.cfg, "viewer")
        letter_id = _letter_id(request)
        return Json(await run_in_threadpool(ops.dlq_show, self.ledger, letter_id))

    async def edits(self, request: Request) -> Response:
        bearer(request, self.cfg, "viewer")
        state = _choice(request.query_params.get("state"), "state", ("pending", "all")) or "pending"
        return Json(await run_in_threadpool(ops.edits_list, self.ledger, pending_only=state == "pending"))

    async def reconcile(self, request: Request) -> Response:
        who = bearer(request, self.cfg, "viewer")
        from hub.reconcile import reconcile

        q = request.query_params
        a, b = q.get("a"), q.get("b")
        if not a or not b:
            raise HubError("give both connectors: ?a=NAME&b=NAME")

        def day(key: str) -> date | None:
            raw = q.get(key)
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                raise HubError(f"{key}: {raw!r} is not a date (YYYY-MM-DD)") from None

        since, until = day("since"), day("until")
        summary = q.get("summary") in ("1", "true", "yes")
        report = await run_in_threadpool(
            lambda: reconcile(self.hub, a, b, since=since, until=until, summary=summary, actor=who.name)
        )
        return Json(report.as_dict())

    async def plugins(self, request: Request) -> Response:
        bearer(request, self.cfg, "viewer")
        return Json(ops.plugin_rows(self.hub.plugins))

    # -- writes (operator; audited with the token's name) ---------------------------------------
    async def replay(self, request: Request) -> Response:
        who = bearer(request, self.cfg, "operator")
        letter_id = _letter_id(request)
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise HubError("the body must be a JSON object")
        force, dry_run, reason = _flag(data, "force"), _flag(data, "dry_run"), _reason(data)
        results = await run_in_threadpool(
            lambda: ops.dlq_replay(
                self.hub, [letter_id], actor=who.name, force=force, reason=reason, dry_run=dry_run
            )
        )
        return Json([r.as_dict() for r in results])

    async def replay_bulk(self, request: Request) -> Response:
        who = bearer(request, self.cfg, "operator")
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise HubError("the body must be a JSON object")
        filters = _filters_from(data)
        dry_run, reason = _flag(data, "dry_run"), _reason(data)

        def work() -> dict[str, Any]:
            chosen = ops.select_letters(self.ledger, None, **filters, state="open")
            destinations = sorted(
                {x["destination"] or f"intake:{x['source']}" for x in ops.dlq_list(self.ledger, **filters)}
            )
            results = ops.dlq_replay(self.hub, chosen, actor=who.name, reason=reason, dry_run=dry_run)
            return {
                "count": len(chosen),
                "destinations": destinations,
                "dry_run": dry_run,
                "results": [r.as_dict() for r in results],
            }

        return Json(await run_in_threadpool(work))

    async def discard(self, request: Request) -> Response:
        who = bearer(request, self.cfg, "operator")
        letter_id = _letter_id(request)
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise HubError("the body must be a JSON object")
        reason = _reason(data)
        if not reason:
            raise HubError("reason: discarding needs a reason (it is recorded in the audit log)")
        results = await run_in_threadpool(
            lambda: ops.dlq_discard(self.ledger, [letter_id], actor=who.name, reason=reason)
        )
        return Json([r.as_dict() for r in results])

    async def edit(self, request: Request) -> Response:
        who = bearer(request, self.cfg, "operator")
        letter_id = _letter_id(request)
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise HubError('the body must be a JSON object: {"invoice": {...}, "reason": "..."}')
        invoice = data.get("invoice")
        if not isinstance(invoice, dict):
            raise HubError("invoice: expected the corrected invoice as a JSON object")
        reason = _reason(data)
        await run_in_threadpool(ops.dlq_show, self.ledger, letter_id)  # 404 before validation
        if self.cfg.four_eyes:
            proposed = await run_in_threadpool(
                lambda: ops.edit_propose(self.hub, letter_id, invoice, actor=who.name, reason=reason)
            )
            return Json(proposed, status_code=202)
        result = await run_in_threadpool(
            lambda: ops.dlq_edit(self.hub, letter_id, invoice, actor=who.name, reason=reason)
        )
        return Json(result.as_dict())

    async def _decide(self, request: Request, approve: bool) -> Response:
        who = bearer(request, self.cfg, "operator")
        raw = request.path_params["edit_id"]
        if not raw.isdigit() or not 0 < int(raw) < 2**62:
            raise ops.NotFound(f"no proposed edit {raw!r}")
        data = await _json_body(request)
        if not isinstance(data, dict):
            raise HubError("the body must be a JSON object")
        reason = _reason(data)
        out = await run_in_threadpool(
            lambda: ops.edit_decide(self.hub, int(raw), actor=who.name, approve=approve, reason=reason)
        )
        return Json(out)

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, True)

    async def reject(self, request: Request) -> Response:
        return await self._decide(request, False)


# ---------------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------------
def readiness(hub: Hub) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    try:
        with hub.ledger.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["ledger"] = {"ok": True}
    except sa.exc.SQLAlchemyError as exc:
        checks["ledger"] = {"ok": False, "detail": type(exc).__name__}
    try:
        # One quick connection attempt (a probe must answer within its own timeout; declaring the
        # queues would retry for seconds). A `Bus.ping()` in hub/bus.py would be this code's home.
        with hub.bus.connection() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        checks["bus"] = {"ok": True}
    except (KombuError, OSError) as exc:
        checks["bus"] = {"ok": False, "detail": type(exc).__name__}
    return checks


def connector_health(hub: Hub) -> list[dict[str, Any]]:
    rows = []
    for name, conn in hub.connectors.items():
        try:
            health = conn.health()
            ok, detail = health.ok, health.detail
        except Exception as exc:  # a health check is a plugin's code: report it, do not crash the page
            ok, detail = False, f"health check raised {type(exc).__name__}"
        rows.append(
            {"name": name, "type": conn.type_name, "roles": sorted(conn.roles()), "ok": ok, "detail": detail}
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Metrics: derived from the ledger at scrape time
# ---------------------------------------------------------------------------------------------------
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)


class LedgerCollector:
    """Counts from the ledger, so ``/metrics`` always adds up to what ``hub status`` says."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        ledger = self.hub.ledger
        up = GaugeMetricFamily("hub_ledger_up", "1 when the ledger answered this scrape")
        try:
            families = self._families(ledger)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics_ledger_unavailable", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, ledger: Any) -> list[Metric]:
        e, v, d, dl, at = t.events, t.invoice_versions, t.deliveries, t.dead_letters, t.attempts
        out: list[Metric] = []
        with ledger.engine.connect() as conn:
            if ledger.dialect == "postgresql":  # one snapshot for every query of this scrape
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            received = CounterMetricFamily(
                "hub_received",
                "Invoices received (intake events recorded), by source and type",
                labels=["source", "type"],
            )
            for source, kind, n in conn.execute(
                sa.select(e.c.source, e.c.type, sa.func.count()).group_by(e.c.source, e.c.type)
            ):
                received.add_metric([source, kind], n)
            out.append(received)

            versions = CounterMetricFamily(
                "hub_invoice_versions", "Distinct invoice contents recorded, by source", labels=["source"]
            )
            for source, n in conn.execute(sa.select(v.c.source, sa.func.count()).group_by(v.c.source)):
                versions.add_metric([source], n)
            out.append(versions)

            p = t.invoice_versions.alias("p")
            earlier = sa.select(p.c.id).where(p.c.identity == v.c.identity, p.c.id < v.c.id).exists()
            amendments = CounterMetricFamily(
                "hub_amendments",
                "New content for an invoice identity already known, by source",
                labels=["source"],
            )
            for source, n in conn.execute(
                sa.select(v.c.source, sa.func.count()).where(earlier).group_by(v.c.source)
            ):
                amendments.add_metric([source], n)
            out.append(amendments)

            by_state: dict[str, dict[str, int]] = {}
            for dest, state, n in conn.execute(
                sa.select(d.c.destination, d.c.state, sa.func.count()).group_by(d.c.destination, d.c.state)
            ):
                by_state.setdefault(dest, {})[state] = n
            deliveries = GaugeMetricFamily(
                "hub_deliveries",
                "Deliveries by destination and current state",
                labels=["destination", "state"],
            )
            delivered = CounterMetricFamily(
                "hub_delivered", "Deliveries acknowledged", labels=["destination"]
            )
            skipped = CounterMetricFamily(
                "hub_skipped", "Deliveries skipped (duplicate or by route policy)", labels=["destination"]
            )
            depth = GaugeMetricFamily(
                "hub_queue_depth", "Open deliveries (pending, in flight, retrying)", labels=["destination"]
            )
            for dest, states in sorted(by_state.items()):
                for state, n in sorted(states.items()):
                    deliveries.add_metric([dest, state], n)
                delivered.add_metric([dest], states.get(t.DELIVERED, 0))
                skipped.add_metric([dest], states.get(t.SKIPPED, 0))
                depth.add_metric([dest], sum(states.get(s, 0) for s in t.OPEN_STATES))
            out += [deliveries, delivered, skipped, depth]

            amended = CounterMetricFamily(
                "hub_amendments_delivered",
                "Amendments acknowledged by a destination that held an earlier version",
                labels=["destination"],
            )
            for dest, n in conn.execute(
                sa.select(d.c.destination, sa.func.count())
                .where(d.c.state == t.DELIVERED, d.c.amends.is_not(None))
                .group_by(d.c.destination)
            ):
                amended.add_metric([dest], n)
            out.append(amended)

            attempts = CounterMetricFamily(
                "hub_delivery_attempts",
                "Delivery attempts by destination and outcome",
                labels=["destination", "outcome"],
            )
            retried = CounterMetricFamily(
                "hub_retried", "Attempts that failed and were scheduled again", labels=["destination"]
            )
            for dest, outcome, n in conn.execute(
                sa.select(d.c.destination, at.c.outcome, sa.func.count())
                .select_from(at.join(d, d.c.id == at.c.delivery_id))
                .group_by(d.c.destination, at.c.outcome)
            ):
                attempts.add_metric([dest, outcome], n)
                if outcome == t.RETRYING:
                    retried.add_metric([dest], n)
            out += [attempts, retried]

            dead = CounterMetricFamily(
                "hub_dead_lettered",
                "Dead letters ever written, by stage and connector",
                labels=["stage", "connector"],
            )
            size = GaugeMetricFamily(
                "hub_dead_letters_open", "Open dead letters", labels=["stage", "connector"]
            )
            who = sa.func.coalesce(dl.c.destination, dl.c.source, "")
            for stage, name, state, n in conn.execute(
                sa.select(dl.c.stage, who, dl.c.state, sa.func.count()).group_by(dl.c.stage, who, dl.c.state)
            ):
                dead.add_metric([stage, name], n)
                if state == "open":
                    size.add_metric([stage, name], n)
            out += [_merge(dead), _merge(size)]

            out.append(self._latency(conn, ledger.dialect))

        from hub.reconcile import last_runs

        gaps = GaugeMetricFamily(
            "hub_reconcile_gaps", "Gaps found by the last reconcile of each pair", labels=["a", "b", "kind"]
        )
        last = GaugeMetricFamily(
            "hub_reconcile_last_run_timestamp_seconds",
            "When each pair was last reconciled",
            labels=["a", "b"],
        )
        for run in last_runs(ledger):
            for kind, n in (run.get("gaps") or {}).items():
                gaps.add_metric([run["a"], run["b"], kind], n)
            last.add_metric([run["a"], run["b"]], run["at"].timestamp())
        out += [gaps, last]
        return out

    def _latency(self, conn: Any, dialect: str) -> Metric:
        d, e = t.deliveries, t.events
        if dialect == "sqlite":
            seconds = (sa.func.julianday(d.c.updated_at) - sa.func.julianday(e.c.received_at)) * 86400.0
        else:
            seconds = sa.extract("epoch", d.c.updated_at - e.c.received_at)
        cols = [sa.func.sum(sa.case((seconds <= b, 1), else_=0)) for b in LATENCY_BUCKETS]
        hist = HistogramMetricFamily(
            "hub_delivery_latency_seconds",
            "From intake to the destination's acknowledgement",
            labels=["destination"],
        )
        for row in conn.execute(
            sa.select(d.c.destination, sa.func.count(), sa.func.sum(seconds), *cols)
            .select_from(d.join(e, e.c.id == d.c.event_id))
            .where(d.c.state == t.DELIVERED)
            .group_by(d.c.destination)
        ):
            dest, count, total, *cum = row
            buckets = [(str(b), int(c or 0)) for b, c in zip(LATENCY_BUCKETS, cum, strict=True)]
            buckets.append(("+Inf", int(count)))
            hist.add_metric([dest], buckets, float(total or 0.0))
        return hist


def _merge(family: Metric) -> Metric:
    """Sum samples with the same labels (a GROUP BY over state gives one row per state)."""
    totals: dict[tuple[str, ...], float] = {}
    for s in family.samples:
        key = tuple(s.labels[k] for k in ("stage", "connector"))
        totals[key] = totals.get(key, 0) + s.value
    cls = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
    merged = cls(family.name, family.documentation, labels=["stage", "connector"])
    for key, value in sorted(totals.items()):
        merged.add_metric(list(key), value)
    return merged


# ---------------------------------------------------------------------------------------------------
# The app and serving it
# ---------------------------------------------------------------------------------------------------
class _SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (
                        b"content-security-policy",
                        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                        b"form-action 'self'; frame-ancestors 'none'",
                    ),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(hub: Hub, cfg: HttpConfig | None = None) -> Starlette:
    """The API, metrics, health checks and the console, on one hub."""
    from hub.console import Console

    cfg = cfg or http_config(hub.loaded)
    api = Api(hub, cfg)
    console = Console(hub, cfg)

    async def not_routed(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        detail = getattr(exc, "detail", "Not Found")
        if request.url.path.startswith("/api/"):
            return _error(code, f"{detail}: {request.method} {request.url.path}")
        return Response(str(detail), status_code=code, media_type="text/plain")

    app = Starlette(
        routes=[*api.routes(), *console.routes()],
        exception_handlers={404: not_routed, 405: not_routed},
    )
    app.state.hub = hub
    app.state.http = cfg
    app.add_middleware(_SecurityHeaders)
    return app


def _server(hub: Hub, host: str | None, port: int | None) -> Any:
    import uvicorn

    cfg = http_config(hub.loaded)
    config = uvicorn.Config(
        create_app(hub, cfg),
        host=host or cfg.host,
        port=port or cfg.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return uvicorn.Server(config)


def serve_forever(hub: Hub, *, host: str | None = None, port: int | None = None) -> None:
    """``hub serve``: block serving the app until SIGINT/SIGTERM."""
    server = _server(hub, host, port)
    log.info("http_serving", host=server.config.host, port=server.config.port)
    server.run()


def serve_in_thread(hub: Hub, *, host: str | None = None, port: int | None = None) -> threading.Thread:
    """``hub run --http PORT``: serve in a thread; it stops when the hub's stop event is set."""
    server = _server(hub, host, port)

    def watch() -> None:
        hub.stop_event.wait()
        server.should_exit = True

    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    threading.Thread(target=watch, name="http-stop", daemon=True).start()
    log.info("http_serving", host=server.config.host, port=server.config.port)
    return thread


__all__ = [
    "Api",
    "HttpConfig",
    "IntakeConfig",
    "LedgerCollector",
    "Principal",
    "TokenConfig",
    "create_app",
    "http_config",
    "readiness",
    "serve_forever",
    "serve_in_thread",
]


# ---------------------------------------------------------------------------------------------------
# The OpenAPI document (by hand: it describes exactly what the handlers above answer)
# ---------------------------------------------------------------------------------------------------
def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_OBJ: dict[str, Any] = {"type": "object"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "The request is not valid (the message says what and where)",
        401: "No token, or an unknown token",
        403: "The token's role does not allow this",
        404: "Not found",
        409: "Contradicts what is recorded",
        413: "The body is over the size limit",
        422: "The invoice is not valid; each problem names its field path",
        503: "The ledger is not reachable",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    secured: bool = True,
    tag: str = "api",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {**ok, **_errors(*errors)}}
    op["operationId"] = summary.lower().replace(" ", "_").replace(",", "").replace("'", "")
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if not secured:
        op["security"] = []
    return op


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def openapi_document(inventories: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document; ``inventories`` (connector names) become the reconcile parameters' enum."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        hub_version = version("invoice-hub")
    except PackageNotFoundError:
        hub_version = "0"
    letter_id = _path("letter_id", {"type": "integer", "minimum": 1, "maximum": 2**62 - 1}, "Dead letter id")
    edit_id = _path("edit_id", {"type": "integer", "minimum": 1, "maximum": 2**62 - 1}, "Proposed edit id")
    filters = [
        _query("destination", _STR, "Only letters for this destination connector"),
        _query("error", _STR, "Error class, or text in the message"),
        _query("since", _STR, "Created since: a date, a date-time or an age (30m, 6h, 2d)"),
    ]

    def optional_json(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": False, "content": {"application/json": {"schema": schema}}}

    letter_summary = {
        "type": "object",
        "required": ["id", "stage", "state", "error_class", "message", "attempts", "created_at"],
        "properties": {
            "id": _INT,
            "stage": {"type": "string", "enum": ["intake", "delivery"]},
            "state": {"type": "string", "enum": ["open", "replayed", "discarded"]},
            "destination": _nullable(_STR),
            "source": _nullable(_STR),
            "identity": _nullable(_STR),
            "error_class": _STR,
            "message": _STR,
            "remote_status": _nullable(_INT),
            "attempts": _INT,
            "created_at": _TIME,
            "updated_at": _TIME,
        },
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _STR, "problems": {"type": "array", "items": _ref("Problem")}},
        },
        "Problem": {
            "type": "object",
            "required": ["path", "message"],
            "properties": {"path": _STR, "message": _STR, "severity": _STR, "rule": _STR},
        },
        "IntakeOutcome": {
            "type": "object",
            "required": ["sha256", "accepted", "duplicates", "amendments", "dead_letters", "identities"],
            "properties": {
                "sha256": _STR,
                "accepted": _INT,
                "duplicates": _INT,
                "amendments": _INT,
                "dead_letters": _INT,
                "identities": {"type": "array", "items": _STR},
            },
        },
        "Status": {
            "type": "object",
            "required": ["deliveries", "destinations", "dead_letters", "invoices", "documents"],
            "properties": {
                "deliveries": {"type": "object", "additionalProperties": _INT},
                "destinations": {
                    "type": "object",
                    "additionalProperties": {"type": "object", "additionalProperties": _INT},
                },
                "dead_letters": {
                    "type": "object",
                    "required": ["open", "replayed", "discarded"],
                    "properties": {"open": _INT, "replayed": _INT, "discarded": _INT},
                },
                "invoices": {
                    "type": "object",
                    "required": ["identities", "versions"],
                    "properties": {"identities": _INT, "versions": _INT},
                },
                "documents": _INT,
            },
        },
        "Trace": {
            "type": "object",
            "required": ["query", "identities", "versions", "deliveries", "dead_letters", "timeline"],
            "properties": {
                "query": _STR,
                "identities": {"type": "array", "items": _STR},
                "versions": {"type": "array", "items": _OBJ},
                "deliveries": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "destination", "state"],
                        "properties": {"id": _INT, "destination": _STR, "state": _STR},
                    },
                },
                "dead_letters": {"type": "array", "items": _ref("LetterSummary")},
                "timeline": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["at", "what", "detail"],
                        "properties": {"at": _TIME, "what": _STR, "detail": _STR},
                    },
                },
            },
        },
        "LetterSummary": letter_summary,
        "Incident": {
            "type": "object",
            "required": ["destination", "error", "count", "first", "last", "ids"],
            "properties": {
                "destination": _STR,
                "error": _STR,
                "count": _INT,
                "first": _TIME,
                "last": _TIME,
                "ids": {"type": "array", "items": _INT},
            },
        },
        "LetterDetail": {
            "allOf": [
                _ref("LetterSummary"),
                {
                    "type": "object",
                    "required": ["detail", "attempt_history"],
                    "properties": {
                        "content_hash": _nullable(_STR),
                        "event_id": _nullable(_STR),
                        "traceback": _nullable(_STR),
                        "detail": _OBJ,
                        "invoice": _nullable(_OBJ),
                        "document": _nullable(_OBJ),
                        "attempt_history": {"type": "array", "items": _OBJ},
                    },
                },
            ]
        },
        "ReplayResult": {
            "type": "object",
            "required": ["id", "action", "detail"],
            "properties": {
                "id": _INT,
                "action": {
                    "type": "string",
                    "enum": [
                        "replayed",
                        "already_delivered",
                        "resent",
                        "failed_again",
                        "would_replay",
                        "skipped",
                        "discarded",
                    ],
                },
                "detail": _STR,
            },
        },
        "BulkReplay": {
            "type": "object",
            "required": ["count", "destinations", "dry_run", "results"],
            "properties": {
                "count": _INT,
                "destinations": {"type": "array", "items": _STR},
                "dry_run": {"type": "boolean"},
                "results": {"type": "array", "items": _ref("ReplayResult")},
            },
        },
        "EditProposed": {
            "type": "object",
            "required": ["edit_id", "letter_id", "state", "proposed_by"],
            "properties": {"edit_id": _INT, "letter_id": _INT, "state": _STR, "proposed_by": _STR},
        },
        "Edit": {
            "type": "object",
            "required": ["edit_id", "letter_id", "proposed_by", "proposed_at", "state", "changes"],
            "properties": {
                "edit_id": _INT,
                "letter_id": _INT,
                "proposed_by": _STR,
                "proposed_at": _TIME,
                "reason": _nullable(_STR),
                "changes": {"type": "array", "items": _OBJ},
                "invoice": _nullable(_OBJ),
                "state": {"type": "string", "enum": ["awaiting_approval", "approved", "rejected"]},
                "decided_by": _nullable(_STR),
            },
        },
        "EditDecision": {
            "type": "object",
            "required": ["edit_id", "letter_id", "state"],
            "properties": {
                "edit_id": _INT,
                "letter_id": _INT,
                "state": {"type": "string", "enum": ["approved", "rejected"]},
                "replay": _ref("ReplayResult"),
            },
        },
        "Gap": {
            "type": "object",
            "required": ["identity", "kind", "ledger", "reason", "repairable"],
            "properties": {
                "identity": _STR,
                "kind": {"type": "string", "enum": ["only_in_a", "only_in_b", "differs"]},
                "missing_at": _nullable(_STR),
                "content_hash": _nullable(_STR),
                "hash_a": _nullable(_STR),
                "hash_b": _nullable(_STR),
                "number": _nullable(_STR),
                "issue_date": _nullable(_STR),
                "gross": _nullable(_STR),
                "currency": _nullable(_STR),
                "ledger": _STR,
                "reason": _STR,
                "repairable": {"type": "boolean"},
                "repair": _nullable(_STR),
                "delivery_id": _nullable(_INT),
                "dead_letter_id": _nullable(_INT),
            },
        },
        "ReconcileReport": {
            "type": "object",
            "required": ["a", "b", "counts", "gap_counts", "gaps", "duplicates", "repaired"],
            "properties": {
                "a": _STR,
                "b": _STR,
                "since": _nullable({"type": "string", "format": "date"}),
                "until": _nullable({"type": "string", "format": "date"}),
                "started_at": _TIME,
                "elapsed": {"type": "number"},
                "counts": {"type": "object", "additionalProperties": _INT},
                "gap_counts": {"type": "object", "additionalProperties": _INT},
                "gaps": {"type": "array", "items": _ref("Gap")},
                "duplicates": {"type": "array", "items": _OBJ},
                "summary": _nullable({"type": "array", "items": _OBJ}),
                "repaired": _INT,
            },
        },
        "Plugin": {
            "type": "object",
            "required": ["name", "hooks", "connector_types", "parsers", "ok"],
            "properties": {
                "name": _STR,
                "distribution": _nullable(_STR),
                "version": _nullable(_STR),
                "hooks": {"type": "array", "items": _STR},
                "connector_types": {"type": "array", "items": _STR},
                "parsers": {"type": "array", "items": _STR},
                "ok": {"type": "boolean"},
                "error": _nullable(_STR),
            },
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {"ok": {"type": "boolean"}, "detail": _STR},
                    },
                },
            },
        },
    }
    reason_body = {"type": "object", "properties": {"reason": _STR}}
    connector: dict[str, Any] = {"type": "string", "enum": inventories} if inventories else _STR
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op(
                "Liveness",
                {
                    "200": _json(
                        {"type": "object", "required": ["status"], "properties": {"status": _STR}}, "Up"
                    )
                },
                (),
                secured=False,
                tag="health",
            )
        },
        "/readyz": {
            "get": {
                **_op(
                    "Readiness",
                    _json(_ref("Ready"), "Ledger and bus reachable"),
                    (),
                    secured=False,
                    tag="health",
                ),
                "responses": {
                    "200": _json(_ref("Ready"), "Ledger and bus reachable"),
                    "503": _json(_ref("Ready"), "The ledger or the bus is not reachable"),
                },
            }
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Metrics in the Prometheus text format",
                        "content": {"text/plain": {"schema": _STR}},
                    }
                },
                (),
                secured=False,
                tag="health",
            )
        },
        "/api/documents": {
            "post": {
                **_op(
                    "Post a document",
                    {"200": _json(_ref("IntakeOutcome"), "What intake made of the document")},
                    (400, 401, 403, 413, 503),
                    params=[
                        _query("filename", {"type": "string", "maxLength": 255}, "The document's file name")
                    ],
                    body={
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": _OBJ},
                        },
                    },
                ),
                "security": [{"bearer": []}, {"hmac": []}],
            }
        },
        "/api/status": {"get": _op("Status", {"200": _json(_ref("Status"), "Counts")}, (401, 403, 503))},
        "/api/trace/{query}": {
            "get": _op(
                "Trace an invoice",
                {"200": _json(_ref("Trace"), "The invoice's story")},
                (400, 401, 403, 404, 503),
                params=[
                    _path("query", {"type": "string", "minLength": 1}, "Invoice number, identity or hash")
                ],
            )
        },
        "/api/dead-letters": {
            "get": _op(
                "List dead letters",
                {
                    "200": _json(
                        {"type": "array", "items": {"anyOf": [_ref("LetterSummary"), _ref("Incident")]}},
                        "Letters, or incidents with group_by",
                    )
                },
                (400, 401, 403, 503),
                params=[
                    *filters,
                    _query(
                        "state", {"type": "string", "enum": ["open", "replayed", "discarded", "all"]}, "State"
                    ),
                    _query("group_by", {"type": "string", "enum": ["error", "destination"]}, "Incidents"),
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": 100000}, "At most this many"
                    ),
                ],
            )
        },
        "/api/dead-letters/replay": {
            "post": _op(
                "Replay dead letters in bulk",
                {"200": _json(_ref("BulkReplay"), "What was (or would be) replayed")},
                (400, 401, 403, 413, 503),
                body=optional_json(
                    {
                        "type": "object",
                        "properties": {
                            "destination": _STR,
                            "error": _STR,
                            "since": _STR,
                            "dry_run": {"type": "boolean"},
                            "reason": _STR,
                        },
                    }
                ),
            )
        },
        "/api/dead-letters/{letter_id}": {
            "get": _op(
                "Show a dead letter",
                {"200": _json(_ref("LetterDetail"), "The letter, its attempts and the kept invoice")},
                (400, 401, 403, 404, 503),
                params=[letter_id],
            )
        },
        "/api/dead-letters/{letter_id}/replay": {
            "post": _op(
                "Replay a dead letter",
                {"200": _json({"type": "array", "items": _ref("ReplayResult")}, "The outcome")},
                (400, 401, 403, 404, 413, 503),
                params=[letter_id],
                body=optional_json(
                    {
                        "type": "object",
                        "properties": {
                            "force": {"type": "boolean"},
                            "dry_run": {"type": "boolean"},
                            "reason": _STR,
                        },
                    }
                ),
            )
        },
        "/api/dead-letters/{letter_id}/discard": {
            "post": _op(
                "Discard a dead letter",
                {"200": _json({"type": "array", "items": _ref("ReplayResult")}, "The outcome")},
                (400, 401, 403, 404, 413, 503),
                params=[letter_id],
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["reason"],
                                "properties": {"reason": {"type": "string", "minLength": 1}},
                            }
                        }
                    },
                },
            )
        },
        "/api/dead-letters/{letter_id}/edit": {
            "post": _op(
                "Edit and replay a dead letter",
                {
                    "200": _json(_ref("ReplayResult"), "Validated, recorded and replayed"),
                    "202": _json(_ref("EditProposed"), "Four-eyes: recorded, waiting for a second operator"),
                },
                (400, 401, 403, 404, 413, 422, 503),
                params=[letter_id],
                body={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["invoice"],
                                "properties": {"invoice": _OBJ, "reason": _STR},
                            }
                        }
                    },
                },
            )
        },
        "/api/edits": {
            "get": _op(
                "List proposed edits",
                {"200": _json({"type": "array", "items": _ref("Edit")}, "Edits (four-eyes)")},
                (400, 401, 403, 503),
                params=[
                    _query("state", {"type": "string", "enum": ["pending", "all"]}, "Only pending (default)")
                ],
            )
        },
        "/api/edits/{edit_id}/approve": {
            "post": _op(
                "Approve an edit",
                {"200": _json(_ref("EditDecision"), "Approved and replayed")},
                (400, 401, 403, 404, 409, 413, 503),
                params=[edit_id],
                body=optional_json(reason_body),
            )
        },
        "/api/edits/{edit_id}/reject": {
            "post": _op(
                "Reject an edit",
                {"200": _json(_ref("EditDecision"), "Rejected")},
                (400, 401, 403, 404, 409, 413, 503),
                params=[edit_id],
                body=optional_json(reason_body),
            )
        },
        "/api/reconcile": {
            "get": _op(
                "Reconcile two connectors",
                {"200": _json(_ref("ReconcileReport"), "Gaps with what the ledger knows")},
                (400, 401, 403, 503),
                params=[
                    _query("a", connector, "First connector (inventory role)", required=True),
                    _query("b", connector, "Second connector (inventory role)", required=True),
                    _query("since", {"type": "string", "format": "date"}, "Issued on or after"),
                    _query("until", {"type": "string", "format": "date"}, "Issued on or before"),
                    _query("summary", {"type": "boolean"}, "Counts and amounts per day"),
                ],
            )
        },
        "/api/plugins": {
            "get": _op(
                "Plugins", {"200": _json({"type": "array", "items": _ref("Plugin")}, "Plugins")}, (401, 403)
            )
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "invoice-hub",
            "version": hub_version,
            "description": "Operate an invoice hub: intake, status, traces, dead letters, reconcile.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "hmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Hub-Signature-256",
                    "description": "sha256=<hex HMAC-SHA256 of the body with http.intake.hmac_secret>",
                },
            },
        },
        "security": [{"bearer": []}],
    }
