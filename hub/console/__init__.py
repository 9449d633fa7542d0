"""The web console: dead letters, traces, edit-and-replay, reconcile reports and connector health.

Server-rendered (Jinja2 templates in ``templates/``, a little vanilla JS in ``static/``, no build step),
served by the same Starlette app as the API (``hub.http.create_app``) and calling the same ``hub.ops``
functions. Login is with an operator or viewer token; the session cookie holds only the token's name,
its role and a CSRF token, signed with HMAC-SHA256 (HttpOnly, SameSite=Strict). Every form carries the
CSRF token and every POST checks it. Secrets are never rendered: tokens are never echoed back, and bank
accounts in invoices are masked (an edit that leaves the mask in place keeps the stored value).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from hub import ops
from hub.errors import HubError, InvoiceInvalid, LedgerError

if TYPE_CHECKING:
    from hub.engine import Hub
    from hub.http import HttpConfig

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "hub_session"
LOGIN_COOKIE = "hub_login_csrf"
MASK_KEYS = re.compile(r"(bank_?account|iban|account_?number|card_?number)$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------
# Invoice fields: flatten for the form, unflatten what comes back, mask secrets
# ---------------------------------------------------------------------------------------------------
def norm_path(path: str) -> str:
    """``lines.0.amount`` (pydantic) and ``lines[0].amount`` (rules) name the same field."""
    return re.sub(r"\.(\d+)(?=\.|\[|$)", r"[\1]", path)


def flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out += flatten(item, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            out += flatten(item, f"{path}[{i}]")
        return out
    return [(path, value)]


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _set(root: dict[str, Any], path: str, value: Any) -> None:
    parts: list[str | int] = [
        int(m.group(2)) if m.group(2) is not None else m.group(1) for m in _TOKEN.finditer(path)
    ]
    node: Any = root
    for here, nxt in itertools.pairwise(parts):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(here, int):
            while len(node) <= here:
                node.append(None)
            if node[here] is None:
                node[here] = empty
            node = node[here]
        else:
            node = node.setdefault(here, empty)
    last = parts[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
        node[last] = value
    else:
        node[last] = value


def is_secret(path: str) -> bool:
    return bool(MASK_KEYS.search(path.rsplit(".", 1)[-1]))


def mask(value: Any) -> str:
    text = "" if value is None else str(value)
    return "••••" + text[-4:] if len(text) > 4 else "••••"


def masked(value: Any, path: str = "") -> Any:
    """A copy of a JSON value with secret fields masked (for display)."""
    if isinstance(value, dict):
        return {k: masked(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return mask(value) if path and is_secret(path) and value not in (None, "") else value


def unflatten(fields: dict[str, str], original: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the invoice from posted fields, restoring types the form cannot carry (null, booleans)
    and secret values the form only showed masked."""
    before = dict(flatten(original))
    out: dict[str, Any] = {}
    for path, posted in fields.items():
        old = before.get(path)
        value: Any = posted
        if path in before and is_secret(path) and old not in (None, "") and posted == mask(old):
            value = old
        elif old is None and posted == "":
            value = None
        elif isinstance(old, bool):
            value = posted.strip().lower() in ("true", "1", "yes")
        _set(out, path, value)
    return out


# ---------------------------------------------------------------------------------------------------
# Sessions and CSRF
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    name: str
    role: str
    csrf: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


class Console:
    def __init__(self, hub: Hub, cfg: HttpConfig) -> None:
        self.hub = hub
        self.cfg = cfg
        self.key = (
            cfg.session_secret.get_secret_value().encode() if cfg.session_secret else secrets.token_bytes(32)
        )
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["masked"] = masked
        self.templates.env.filters["when"] = lambda v: (
            v.strftime("%Y-%m-%d %H:%M:%S") if hasattr(v, "strftime") else (v or "")
        )
        self.templates.env.filters["urlq"] = lambda v: quote(str(v), safe="")

    def routes(self) -> list[Any]:
        return [
            Route("/", self._page(self.index), methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self._page(self.logout), methods=["POST"]),
            Route("/dead-letters", self._page(self.letters), methods=["GET"]),
            Route("/dead-letters/bulk", self._page(self.bulk), methods=["POST"]),
            Route("/dead-letters/{letter_id:int}", self._page(self.letter), methods=["GET"]),
            Route("/dead-letters/{letter_id:int}/edit", self._page(self.edit), methods=["POST"]),
            Route("/dead-letters/{letter_id:int}/replay", self._page(self.replay), methods=["POST"]),
            Route("/dead-letters/{letter_id:int}/discard", self._page(self.discard), methods=["POST"]),
            Route("/trace", self._page(self.trace), methods=["GET"]),
            Route("/reconcile", self._page(self.reconcile), methods=["GET"]),
            Route("/edits", self._page(self.edits), methods=["GET"]),
            Route("/edits/{edit_id:int}/{decision}", self._page(self.decide), methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

    # -- sessions ---------------------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self.key, payload, hashlib.sha256).digest())

    def _cookie_for(self, name: str, role: str) -> str:
        exp = int(time.time() + self.cfg.session_hours * 3600)
        payload = orjson.dumps({"n": name, "r": role, "c": secrets.token_urlsafe(24), "e": exp})
        return f"{_b64(payload)}.{self._sign(payload)}"

    def session(self, request: Request) -> Session | None:
        from hub.http import principal_named

        raw = request.cookies.get(SESSION_COOKIE)
        if not raw or "." not in raw:
            return None
        body, sig = raw.rsplit(".", 1)
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), sig):
            return None
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if data.get("e", 0) < time.time():
            return None
        who = principal_named(self.cfg, data.get("n", ""))  # a token removed from hub.yaml logs out
        if who is None or who.role == "intake":
            return None
        return Session(who.name, who.role, data.get("c", ""))

    def _require(self, request: Request, operator: bool = False) -> Session:
        s = self.session(request)
        if s is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise _Redirect("/login?" + urlencode({"next": target}))
        if operator and not s.operator:
            raise HubError(f"{s.name} is a viewer; this needs an operator token")
        return s

    async def _form(self, request: Request, s: Session) -> dict[str, str]:
        form = await request.form()
        token = str(form.get("csrf", ""))
        if not s.csrf or not hmac.compare_digest(token, s.csrf):
            raise HubError("the form's CSRF token does not match this session; reload the page and try again")
        return {k: str(v) for k, v in form.multi_items() if isinstance(v, str)}

    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        s = self.session(request)
        ctx.setdefault("flash", request.query_params.get("flash"))
        return self.templates.TemplateResponse(
            request,
            template,
            {"session": s, "csrf": s.csrf if s else "", "four_eyes": self.cfg.four_eyes, **ctx},
            status_code=status,
        )

    def _page(self, fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)  # type: ignore[no-any-return]
            except _Redirect as r:
                return RedirectResponse(r.url, status_code=303)
            except ops.NotFound as exc:
                return self.render(request, "error.html", status=404, message=str(exc))
            except LedgerError:
                return self.render(request, "error.html", status=503, message="the ledger is not reachable")
            except HubError as exc:
                return self.render(request, "error.html", status=400, message=str(exc))

        return wrapped

    # -- login ------------------------------------------------------------------------------------
    async def login_form(
        self, request: Request, error: str | None = None, status: int = 200, next_url: str | None = None
    ) -> Response:
        token = secrets.token_urlsafe(24)
        response = self.templates.TemplateResponse(
            request,
            "login.html",
            {
                "session": None,
                "csrf": token,
                "error": error,
                "next": _safe_next(next_url or request.query_params.get("next")),
                "flash": None,
            },
            status_code=status,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=self.cfg.secure_cookies,
            path="/login",
        )
        return response

    async def login(self, request: Request) -> Response:
        from hub.http import find_token

        form = await request.form()
        sent, cookie = str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
        next_url = str(form.get("next", "/"))
        if not cookie or not hmac.compare_digest(sent, cookie):
            return await self.login_form(request, "the login form expired; try again", 400, next_url)
        who = find_token(self.cfg, str(form.get("token", "")).strip())
        if who is None or who.role == "intake":
            return await self.login_form(request, "unknown token (or an intake-only token)", 401, next_url)
        response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self._cookie_for(who.name, who.role),
            max_age=int(self.cfg.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=self.cfg.secure_cookies,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        s = self._require(request)
        await self._form(request, s)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- pages ------------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        self._require(request)
        from hub.http import connector_health
        from hub.reconcile import last_runs

        status = await run_in_threadpool(ops.status, self.hub.ledger)
        health = await run_in_threadpool(connector_health, self.hub)
        runs = await run_in_threadpool(last_runs, self.hub.ledger)
        groups = await run_in_threadpool(lambda: ops.dlq_list(self.hub.ledger, group_by="error"))
        return self.render(
            request,
            "index.html",
            st=status,
            health=health,
            runs=runs,
            groups=groups,
            inventories=sorted(self.hub.inventories),
        )

    def _filters(self, q: Any) -> dict[str, Any]:
        return {
            "destination": q.get("destination") or None,
            "error": q.get("error") or None,
            "since": q.get("since") or None,
        }

    async def letters(self, request: Request) -> Response:
        self._require(request)
        q = request.query_params
        f = self._filters(q)
        state = q.get("state") or "open"
        if state not in ("open", "replayed", "discarded", "all"):
            raise HubError(f"state: {state!r} is not one of open, replayed, discarded, all")
        group_by = q.get("group_by") or None
        if group_by not in (None, "error", "destination"):
            raise HubError(f"group_by: {group_by!r} is not one of error, destination")
        rows = await run_in_threadpool(
            lambda: ops.dlq_list(
                self.hub.ledger,
                destination=f["destination"],
                error=f["error"],
                since=ops.parse_since(f["since"]),
                state=state,
                group_by=group_by,
                limit=500,
            )
        )
        return self.render(
            request,
            "letters.html",
            rows=rows,
            filters=f,
            state=state,
            group_by=group_by,
            destinations=self.hub.destinations(),
        )

    async def bulk(self, request: Request) -> Response:
        s = self._require(request, operator=True)
        form = await self._form(request, s)
        f = self._filters(form)
        since = ops.parse_since(f["since"])
        # A group's button (or the confirmation page) posts the letters' ids; the filters post none.
        posted = {int(x) for x in form.get("ids", "").split(",") if x.isdigit()}

        def plan() -> tuple[list[int], list[str]]:
            rows = ops.dlq_list(
                self.hub.ledger, destination=f["destination"], error=f["error"], since=since, limit=1_000_000
            )
            if posted:
                rows = [r for r in rows if r["id"] in posted]
            return [r["id"] for r in rows], sorted(
                {r["destination"] or f"intake:{r['source']}" for r in rows}
            )

        ids, destinations = await run_in_threadpool(plan)
        if form.get("confirm") != "yes":
            return self.render(request, "bulk_confirm.html", ids=ids, destinations=destinations, filters=f)
        # Replay exactly what the operator confirmed (the count shown), not what matches now.
        chosen = [i for i in sorted(posted) if i in set(ids)]
        reason = form.get("reason") or None
        results = await run_in_threadpool(
            lambda: ops.dlq_replay(self.hub, chosen, actor=s.name, reason=reason)
        )
        done = sum(1 for r in results if r.action in ("replayed", "already_delivered"))
        return RedirectResponse(
            "/dead-letters?" + urlencode({"flash": f"{done} of {len(chosen)} dead letter(s) replayed"}),
            status_code=303,
        )

    async def letter(
        self,
        request: Request,
        *,
        fields: dict[str, str] | None = None,
        problems: list[Any] | None = None,
        status: int = 200,
    ) -> Response:
        self._require(request)
        letter_id = request.path_params["letter_id"]
        shown = await run_in_threadpool(ops.dlq_show, self.hub.ledger, letter_id)
        template = await run_in_threadpool(ops.edit_template, self.hub.ledger, letter_id)
        if fields is None:
            fields = {
                p: ("" if v is None else (mask(v) if is_secret(p) and v not in (None, "") else str(v)))
                for p, v in flatten(template)
            }
        by_field: dict[str, list[str]] = {}
        general: list[str] = []
        for p in problems or []:
            path = norm_path(p.path)
            if path in fields:
                by_field.setdefault(path, []).append(p.message)
            else:
                general.append(f"{path or 'invoice'}: {p.message}")
        for p in (shown.get("detail") or {}).get("problems", []) if problems is None else []:
            path = norm_path(p.get("path", ""))
            if path in fields:
                by_field.setdefault(path, []).append(p.get("message", ""))
        return self.render(
            request,
            "letter.html",
            status=status,
            letter=masked(shown),
            fields=fields,
            secret_fields={p for p in fields if is_secret(p)},
            field_errors=by_field,
            general_errors=general,
            validated=problems is not None,
        )

    async def edit(self, request: Request) -> Response:
        s = self._require(request, operator=True)
        form = await self._form(request, s)
        letter_id = request.path_params["letter_id"]
        posted = {k[2:]: v for k, v in form.items() if k.startswith("f:")}
        original = await run_in_threadpool(ops.edit_template, self.hub.ledger, letter_id)
        data = unflatten(posted, original)
        invoice, found = await run_in_threadpool(ops.check_edit, self.hub, data)
        errors = [p for p in found if p.severity == "error"]
        if invoice is None or errors:
            return await self.letter(request, fields=posted, problems=errors, status=422)
        reason = form.get("reason") or None
        if form.get("step") != "confirm":
            changes = ops.diff(original, data)
            for c in changes:
                if is_secret(c["path"]):
                    c["before"], c["after"] = mask(c["before"]), mask(c["after"])
            return self.render(
                request,
                "edit_preview.html",
                letter_id=letter_id,
                changes=changes,
                fields=posted,
                reason=reason,
            )
        if self.cfg.four_eyes:
            proposed = await run_in_threadpool(
                lambda: ops.edit_propose(self.hub, letter_id, data, actor=s.name, reason=reason)
            )
            msg = f"edit {proposed['edit_id']} recorded; a second operator must approve it"
            return RedirectResponse("/edits?" + urlencode({"flash": msg}), status_code=303)
        try:
            result = await run_in_threadpool(
                lambda: ops.dlq_edit(self.hub, letter_id, data, actor=s.name, reason=reason)
            )
        except InvoiceInvalid as exc:
            return await self.letter(request, fields=posted, problems=exc.problems, status=422)
        return RedirectResponse(
            f"/trace?{urlencode({'q': invoice.number, 'flash': f'{result.action}: {result.detail}'})}",
            status_code=303,
        )

    async def replay(self, request: Request) -> Response:
        s = self._require(request, operator=True)
        form = await self._form(request, s)
        letter_id = request.path_params["letter_id"]
        [result] = await run_in_threadpool(
            lambda: ops.dlq_replay(self.hub, [letter_id], actor=s.name, reason=form.get("reason") or None)
        )
        return RedirectResponse(
            f"/dead-letters/{letter_id}?{urlencode({'flash': f'{result.action}: {result.detail}'})}",
            status_code=303,
        )

    async def discard(self, request: Request) -> Response:
        s = self._require(request, operator=True)
        form = await self._form(request, s)
        letter_id = request.path_params["letter_id"]
        reason = form.get("reason", "").strip()
        if not reason:
            raise HubError("discarding needs a reason (it is recorded in the audit log)")
        [result] = await run_in_threadpool(
            lambda: ops.dlq_discard(self.hub.ledger, [letter_id], actor=s.name, reason=reason)
        )
        return RedirectResponse(
            f"/dead-letters/{letter_id}?{urlencode({'flash': f'{result.action}: {result.detail}'})}",
            status_code=303,
        )

    async def trace(self, request: Request) -> Response:
        self._require(request)
        q = (request.query_params.get("q") or "").strip()
        story = None
        error = None
        if q:
            try:
                story = await run_in_threadpool(ops.trace, self.hub.ledger, q)
            except ops.NotFound as exc:
                error = str(exc)
        return self.render(request, "trace.html", q=q, story=story, error=error)

    async def reconcile(self, request: Request) -> Response:
        self._require(request)
        from hub.reconcile import reconcile

        q = request.query_params
        a, b = q.get("a") or "", q.get("b") or ""
        report = None
        if a and b:
            report = await run_in_threadpool(
                lambda: reconcile(self.hub, a, b, summary=True, actor=self.session(request).name)  # type: ignore[union-attr]
            )
        return self.render(
            request, "reconcile.html", a=a, b=b, report=report, inventories=sorted(self.hub.inventories)
        )

    async def edits(self, request: Request) -> Response:
        self._require(request)
        rows = await run_in_threadpool(ops.edits_list, self.hub.ledger, pending_only=False)
        for r in rows:
            for c in r["changes"]:
                if is_secret(c.get("path", "")):
                    c["before"], c["after"] = mask(c.get("before")), mask(c.get("after"))
            r.pop("invoice", None)
        return self.render(request, "edits.html", rows=list(reversed(rows)))

    async def decide(self, request: Request) -> Response:
        s = self._require(request, operator=True)
        form = await self._form(request, s)
        edit_id = request.path_params["edit_id"]
        decision = request.path_params["decision"]
        if decision not in ("approve", "reject"):
            raise ops.NotFound(f"no action {decision!r}")
        try:
            out = await run_in_threadpool(
                lambda: ops.edit_decide(
                    self.hub,
                    edit_id,
                    actor=s.name,
                    approve=decision == "approve",
                    reason=form.get("reason") or None,
                )
            )
        except ops.Conflict as exc:
            return RedirectResponse("/edits?" + urlencode({"flash": str(exc)}), status_code=303)
        msg = f"edit {edit_id} {out['state']}"
        if out.get("replay"):
            msg += f": {out['replay']['action']} {out['replay']['detail']}"
        return RedirectResponse("/edits?" + urlencode({"flash": msg}), status_code=303)
