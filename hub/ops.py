"""Operator actions and queries: status, trace, dead letters (list, show, replay, discard, edit).

The CLI and the HTTP API both call these, so an operation behaves the same wherever it is started,
and every write is recorded in the audit log with who did it and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pydantic
import sqlalchemy as sa

from hub.connectors import Incoming
from hub.errors import HubError, InvoiceInvalid, Problem
from hub.ledger import Ledger, dumps, loads, now
from hub.ledger import schema as t
from hub.models import Invoice
from hub.validation import builtin_rules, validate

if TYPE_CHECKING:
    from hub.engine import Hub


class NotFound(HubError):
    """What an operator asked for does not exist."""


def parse_since(value: str | None) -> datetime | None:
    """``2026-11-23``, ``2026-11-23T10:00``, or relative: ``30m``, ``6h``, ``2d``."""
    if not value:
        return None
    m = re.fullmatch(r"(\d+)\s*([smhd])", value.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now() - timedelta(**{unit: int(m.group(1))})
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise HubError(f"--since {value!r}: not a date, date-time or age like 30m, 6h, 2d") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------------
def status(ledger: Ledger) -> dict[str, Any]:
    d = t.deliveries
    with ledger.engine.connect() as conn:
        by_dest: dict[str, dict[str, int]] = {}
        totals: dict[str, int] = {}
        for dest, state, n in conn.execute(
            sa.select(d.c.destination, d.c.state, sa.func.count()).group_by(d.c.destination, d.c.state)
        ):
            by_dest.setdefault(dest, {})[state] = n
            totals[state] = totals.get(state, 0) + n
        dl: dict[str, int] = dict(
            conn.execute(
                sa.select(t.dead_letters.c.state, sa.func.count()).group_by(t.dead_letters.c.state)
            ).all()
        )
        versions = conn.execute(sa.select(sa.func.count()).select_from(t.invoice_versions)).scalar() or 0
        identities = (
            conn.execute(sa.select(sa.func.count(sa.distinct(t.invoice_versions.c.identity)))).scalar() or 0
        )
        documents = conn.execute(sa.select(sa.func.count()).select_from(t.documents)).scalar() or 0
    return {
        "deliveries": totals,
        "destinations": by_dest,
        "dead_letters": {
            "open": dl.get("open", 0),
            "replayed": dl.get("replayed", 0),
            "discarded": dl.get("discarded", 0),
        },
        "invoices": {"identities": identities, "versions": versions},
        "documents": documents,
    }


# ---------------------------------------------------------------------------------------------------
# Trace
# ---------------------------------------------------------------------------------------------------
def trace(ledger: Ledger, query: str) -> dict[str, Any]:
    """The whole story of an invoice: documents, versions, deliveries, attempts, dead letters, audit."""
    v, d, e, dl = t.invoice_versions, t.deliveries, t.events, t.dead_letters
    q = query.strip()
    with ledger.engine.connect() as conn:
        hex_prefix = re.fullmatch(r"[0-9a-f]{8,64}", q) is not None

        def starts_with_q(column: Any) -> Any:
            # A prefix as a range ("g" sorts after every hex digit): ``LIKE 'q%'`` is case-insensitive
            # on SQLite, reads no index, and made every trace by invoice number (20 digits look like
            # hex) read the whole table.
            return sa.and_(column >= q, column < q + "g")

        cond = sa.or_(v.c.number == q, v.c.identity == q)
        if hex_prefix:
            cond = sa.or_(cond, starts_with_q(v.c.content_hash))
        versions = [dict(r) for r in conn.execute(sa.select(v).where(cond).order_by(v.c.id)).mappings()]
        identities = sorted({r["identity"] for r in versions})
        # Each term by an index of its own (migration 6): a trace never reads the dead letters whole.
        dl_cond = sa.or_(dl.c.identity == q, dl.c.number == q)
        if identities:
            dl_cond = sa.or_(dl_cond, dl.c.identity.in_(identities))
        if hex_prefix:
            dl_cond = sa.or_(dl_cond, starts_with_q(dl.c.content_hash), starts_with_q(dl.c.document_sha256))
        letters = [dict(r) for r in conn.execute(sa.select(dl).where(dl_cond).order_by(dl.c.id)).mappings()]
        identities = sorted(set(identities) | {r["identity"] for r in letters if r["identity"]})
        if not versions and not letters:
            raise NotFound(
                f"nothing in the ledger matches {query!r} (an invoice number, identity or content hash)"
            )
        events = (
            [
                dict(r)
                for r in conn.execute(
                    sa.select(e).where(e.c.identity.in_(identities)).order_by(e.c.received_at)
                ).mappings()
            ]
            if identities
            else []
        )
        # By the events' keys: no index on deliveries starts with the identity (a query by identity read
        # every delivery), and each delivery belongs to an event of its invoice.
        event_ids = [x["id"] for x in events]
        deliveries = (
            [
                dict(r)
                for r in conn.execute(
                    sa.select(d).where(d.c.event_id.in_(event_ids)).order_by(d.c.id)
                ).mappings()
            ]
            if event_ids
            else []
        )
        ids = [x["id"] for x in deliveries]
        transitions = (
            [
                dict(r)
                for r in conn.execute(
                    sa.select(t.transitions).where(t.transitions.c.delivery_id.in_(ids))
                ).mappings()
            ]
            if ids
            else []
        )
        attempts = (
            [
                dict(r)
                for r in conn.execute(
                    sa.select(t.attempts).where(t.attempts.c.delivery_id.in_(ids))
                ).mappings()
            ]
            if ids
            else []
        )
        targets = identities + [f"dead_letter:{x['id']}" for x in letters]
        audit = [
            dict(r)
            for r in conn.execute(sa.select(t.audit_log).where(t.audit_log.c.target.in_(targets))).mappings()
        ]
        doc_shas = {x["document_sha256"] for x in versions + letters + events if x.get("document_sha256")}
        documents = (
            [
                dict(r)
                for r in conn.execute(
                    sa.select(
                        t.documents.c.sha256,
                        t.documents.c.media_type,
                        t.documents.c.filename,
                        t.documents.c.source,
                        t.documents.c.origin,
                        t.documents.c.parent_sha256,
                        t.documents.c.size,
                        t.documents.c.received_at,
                    ).where(t.documents.c.sha256.in_(doc_shas))
                ).mappings()
            ]
            if doc_shas
            else []
        )

    timeline: list[dict[str, Any]] = []
    for doc in documents:
        timeline.append(
            {
                "at": doc["received_at"],
                "what": "document received",
                "detail": f"{doc['filename'] or doc['sha256'][:12]} ({doc['media_type']}, {doc['size']} B) "
                f"from {doc['source']}" + (f" [{doc['origin']}]" if doc["origin"] else ""),
            }
        )
    for ver in versions:
        timeline.append(
            {
                "at": ver["received_at"],
                "what": "version recorded",
                "detail": f"{ver['identity']} content {ver['content_hash'][:12]} from {ver['source']}, "
                f"gross {ver['gross']} {ver['currency']}, status {ver['status']}",
            }
        )
    for ev in events:
        timeline.append(
            {
                "at": ev["received_at"],
                "what": ev["type"],
                "detail": f"from {ev['source']}, content {ev['content_hash'][:12]}, trace {ev['trace_id']}",
            }
        )
    dest_of = {x["id"]: x["destination"] for x in deliveries}
    for tr in transitions:
        timeline.append(
            {
                "at": tr["at"],
                "what": f"delivery {tr['delivery_id']} → {dest_of[tr['delivery_id']]}: "
                f"{tr['from_state'] or 'new'} → {tr['to_state']}",
                "detail": tr["detail"] or "",
            }
        )
    for at in attempts:
        if at["error_class"]:
            timeline.append(
                {
                    "at": at["finished_at"],
                    "what": f"attempt {at['number']} of delivery {at['delivery_id']} failed",
                    "detail": f"{at['error_class']}: {at['error_message']}"
                    + (f" (HTTP {at['remote_status']})" if at["remote_status"] else ""),
                }
            )
    for letter in letters:
        timeline.append(
            {
                "at": letter["created_at"],
                "what": f"dead letter {letter['id']} ({letter['stage']})",
                "detail": f"{letter['error_class']}: {letter['message']} [{letter['state']}]",
            }
        )
    for a in audit:
        timeline.append(
            {
                "at": a["at"],
                "what": f"operator {a['actor']}: {a['action']}",
                "detail": (a["reason"] or "") + (f" on {a['target']}" if a["target"] else ""),
            }
        )
    timeline.sort(key=lambda x: x["at"])
    return {
        "query": query,
        "identities": identities,
        "versions": [
            {
                k: ver[k]
                for k in (
                    "identity",
                    "content_hash",
                    "number",
                    "kind",
                    "status",
                    "issue_date",
                    "gross",
                    "currency",
                    "source",
                    "received_at",
                )
            }
            for ver in versions
        ],
        "deliveries": [
            {
                k: x[k]
                for k in (
                    "id",
                    "destination",
                    "state",
                    "content_hash",
                    "attempts",
                    "remote_ref",
                    "last_error",
                    "amends",
                    "duplicate_of",
                    "updated_at",
                )
            }
            for x in deliveries
        ],
        "dead_letters": [_letter_summary(x) for x in letters],
        "timeline": timeline,
    }


# ---------------------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------------------
def _letter_summary(row: dict[str, Any]) -> dict[str, Any]:
    detail = loads(row.get("detail")) or {}
    return {
        "id": row["id"],
        "stage": row["stage"],
        "state": row["state"],
        "destination": row["destination"],
        "source": row["source"],
        "identity": row["identity"],
        "error_class": row["error_class"],
        "message": row["message"],
        "remote_status": detail.get("remote_status"),
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def incident_label(row: dict[str, Any]) -> str:
    detail = loads(row.get("detail")) if isinstance(row.get("detail"), str) else (row.get("detail") or {})
    status_code = (detail or {}).get("remote_status")
    code = (detail or {}).get("code")
    label = row["error_class"]
    if status_code:
        label = f"HTTP {status_code}"
    if code:
        label += f" {code}"
    return str(label)


def dlq_list(
    ledger: Ledger,
    *,
    destination: str | None = None,
    error: str | None = None,
    since: datetime | None = None,
    state: str | None = "open",
    group_by: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    dl = t.dead_letters
    stmt = sa.select(dl)
    if state and state != "all":
        stmt = stmt.where(dl.c.state == state)
    if destination:
        stmt = stmt.where(dl.c.destination == destination)
    if since:
        stmt = stmt.where(dl.c.created_at >= since)
    if error:
        stmt = stmt.where(sa.or_(dl.c.error_class == error, dl.c.message.contains(error)))
    with ledger.engine.connect() as conn:
        if group_by is None:
            rows = conn.execute(stmt.order_by(dl.c.id).limit(limit)).mappings()
            return [_letter_summary(dict(r)) for r in rows]
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for r in conn.execute(stmt.order_by(dl.c.id)).mappings():
            row = dict(r)
            dest = row["destination"] or f"intake:{row['source']}"
            label = incident_label(row)
            key = (dest, label) if group_by == "destination" else (label, dest)
            g = groups.setdefault(
                key,
                {
                    "destination": dest,
                    "error": label,
                    "count": 0,
                    "first": row["created_at"],
                    "last": row["created_at"],
                    "ids": [],
                },
            )
            g["count"] += 1
            g["first"] = min(g["first"], row["created_at"])
            g["last"] = max(g["last"], row["created_at"])
            g["ids"].append(row["id"])
        return sorted(groups.values(), key=lambda g: (-g["count"], g["destination"], g["error"]))


def dlq_show(ledger: Ledger, letter_id: int) -> dict[str, Any]:
    dl = t.dead_letters
    with ledger.engine.connect() as conn:
        found = conn.execute(sa.select(dl).where(dl.c.id == letter_id)).mappings().first()
        if found is None:
            raise NotFound(f"no dead letter {letter_id}")
        row = dict(found)
        attempts = []
        if row["delivery_id"]:
            attempts = [
                dict(a)
                for a in conn.execute(
                    sa.select(t.attempts)
                    .where(t.attempts.c.delivery_id == row["delivery_id"])
                    .order_by(t.attempts.c.id)
                ).mappings()
            ]
        doc = None
        if row["document_sha256"]:
            doc = (
                conn.execute(
                    sa.select(
                        t.documents.c.sha256,
                        t.documents.c.filename,
                        t.documents.c.media_type,
                        t.documents.c.size,
                    ).where(t.documents.c.sha256 == row["document_sha256"])
                )
                .mappings()
                .first()
            )
    out = _letter_summary(row)
    out.update(
        {
            "content_hash": row["content_hash"],
            "event_id": row["event_id"],
            "traceback": row["traceback"],
            "detail": loads(row["detail"]) or {},
            "invoice": loads(row["invoice_json"]),
            "document": dict(doc) if doc else None,
            "attempt_history": [
                {
                    k: a[k]
                    for k in (
                        "number",
                        "started_at",
                        "finished_at",
                        "outcome",
                        "error_class",
                        "error_message",
                        "remote_status",
                        "remote_body",
                        "retry_after",
                    )
                }
                for a in attempts
            ],
        }
    )
    return out


@dataclass
class ReplayResult:
    letter_id: int
    action: str  # replayed | already_delivered | resent | failed_again | would_replay | skipped
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.letter_id, "action": self.action, "detail": self.detail}


def select_letters(ledger: Ledger, ids: Sequence[int] | None, **filters: Any) -> list[int]:
    if ids:
        return list(ids)
    return [x["id"] for x in dlq_list(ledger, **filters, limit=1_000_000)]


def dlq_replay(
    hub: Hub,
    ids: Sequence[int],
    *,
    actor: str,
    force: bool = False,
    reason: str | None = None,
    dry_run: bool = False,
    edited: Invoice | None = None,
) -> list[ReplayResult]:
    """Replay dead letters. Never re-sends content a destination already acknowledged, unless ``force``
    (which needs a reason and is audited)."""
    if force and not reason:
        raise HubError("a forced re-send needs --reason (it is recorded in the audit log)")
    results: list[ReplayResult] = []
    publish: dict[str, list[int]] = {}
    for letter_id in ids:
        result = _replay_one(
            hub,
            letter_id,
            actor=actor,
            force=force,
            reason=reason,
            dry_run=dry_run,
            edited=edited,
            publish=publish,
        )
        results.append(result)
    if publish:
        hub._publish(publish)
    return results


def _replay_one(
    hub: Hub,
    letter_id: int,
    *,
    actor: str,
    force: bool,
    reason: str | None,
    dry_run: bool,
    edited: Invoice | None,
    publish: dict[str, list[int]],
) -> ReplayResult:
    ledger = hub.ledger
    dl, d = t.dead_letters, t.deliveries
    with ledger.engine.connect() as conn:
        found = conn.execute(sa.select(dl).where(dl.c.id == letter_id)).mappings().first()
    if found is None:
        raise NotFound(f"no dead letter {letter_id}")
    row = dict(found)
    if row["state"] != "open" and edited is None:
        return ReplayResult(letter_id, "skipped", f"dead letter is {row['state']}, not open")
    at = now()
    if row["stage"] == "delivery" and edited is None:
        with ledger.begin() as conn:
            lost = conn.execute(
                sa.select(d.c.identity, d.c.idem_key).where(d.c.id == row["delivery_id"])
            ).first()
            delivered = (
                None
                if lost is None
                else conn.execute(
                    sa.select(d.c.id).where(  # by ix_deliveries_dest_identity
                        d.c.destination == row["destination"],
                        d.c.identity == lost.identity,
                        d.c.idem_key == lost.idem_key,
                        d.c.state == t.DELIVERED,
                    )
                ).scalar()
            )
            if delivered and not force:
                if not dry_run:
                    conn.execute(
                        dl.update().where(dl.c.id == letter_id).values(state="replayed", updated_at=at)
                    )
                    ledger.audit(
                        conn,
                        actor=actor,
                        action="dlq.replay",
                        target=f"dead_letter:{letter_id}",
                        reason=reason,
                        detail={"result": "already delivered", "delivery": delivered},
                    )
                return ReplayResult(
                    letter_id,
                    "already_delivered",
                    f"{row['destination']} already acknowledged this content (delivery {delivered}); "
                    "use --force --reason to re-send",
                )
            if dry_run:
                return ReplayResult(letter_id, "would_replay", f"→ {row['destination']}")
            if delivered and force:
                # A forced re-send is a new delivery under a new key, so the sink really sends again.
                src = conn.execute(sa.select(d).where(d.c.id == row["delivery_id"])).mappings().one()
                new_id = conn.execute(
                    d.insert().returning(d.c.id),
                    {
                        **{
                            k: src[k]
                            for k in ("event_id", "destination", "route", "identity", "content_hash")
                        },
                        "idem_key": f"{src['idem_key']}:resend:{letter_id}:{int(at.timestamp())}",
                        "state": t.PENDING,
                        "attempts": 0,
                        "created_at": at,
                        "updated_at": at,
                        "published_at": at,
                    },
                ).scalar_one()
                ledger.transition(
                    conn, [(new_id, None, t.PENDING, f"forced re-send of dead letter {letter_id}")], at
                )
                delivery_id = new_id
            else:
                delivery_id = row["delivery_id"]
                conn.execute(
                    d.update()
                    .where(d.c.id == delivery_id)
                    .values(state=t.PENDING, attempts=0, next_attempt_at=None, published_at=at, updated_at=at)
                )
                ledger.transition(conn, [(delivery_id, t.DEAD, t.PENDING, f"replayed by {actor}")], at)
            conn.execute(dl.update().where(dl.c.id == letter_id).values(state="replayed", updated_at=at))
            ledger.audit(
                conn,
                actor=actor,
                action="dlq.replay" + (".force" if force else ""),
                target=f"dead_letter:{letter_id}",
                reason=reason,
                detail={"delivery": delivery_id, "destination": row["destination"]},
            )
            ledger.audit(
                conn,
                actor=actor,
                action="dlq.replay",
                target=row["identity"],
                reason=reason,
                detail={"dead_letter": letter_id},
            ) if row["identity"] else None
        publish.setdefault(row["destination"], []).append(delivery_id)
        return ReplayResult(letter_id, "replayed", f"→ {row['destination']} (delivery {delivery_id})")

    # Intake letters (and any edited letter): read the document again, or take the edited invoice.
    doc = ledger.get_document(row["document_sha256"]) if row["document_sha256"] else None
    source = row["source"] or "operator"
    if edited is not None:
        incoming = Incoming(documents=[], key=f"dead_letter:{letter_id}", invoices=[(edited, doc)])
    elif doc is not None:
        incoming = Incoming(documents=[doc], key=f"dead_letter:{letter_id}")
    elif row["invoice_json"]:
        incoming = Incoming(
            documents=[],
            key=f"dead_letter:{letter_id}",
            invoices=[(Invoice.model_validate_json(row["invoice_json"]), None)],
        )
    else:
        return ReplayResult(letter_id, "skipped", "nothing to replay: no document and no invoice kept")
    prepared = hub.intake.prepare(incoming, source)
    if prepared.failures:
        first = prepared.failures[0].error
        if not dry_run:
            with ledger.begin() as conn:
                conn.execute(
                    dl.update()
                    .where(dl.c.id == letter_id)
                    .values(
                        attempts=dl.c.attempts + 1,
                        message=str(first),
                        error_class=type(first).__name__,
                        updated_at=at,
                    )
                )
                ledger.audit(
                    conn,
                    actor=actor,
                    action="dlq.replay",
                    target=f"dead_letter:{letter_id}",
                    reason=reason,
                    detail={"result": "failed again", "error": str(first)},
                )
        return ReplayResult(letter_id, "failed_again", f"{type(first).__name__}: {first}")
    if dry_run:
        return ReplayResult(letter_id, "would_replay", f"{len(prepared.accepted)} invoice(s) through intake")
    prepared.documents = [x for x in prepared.documents if x is not None]
    with ledger.begin() as conn:
        written = hub.intake.write(conn, [prepared])
        conn.execute(dl.update().where(dl.c.id == letter_id).values(state="replayed", updated_at=at))
        ledger.audit(
            conn,
            actor=actor,
            action="dlq.edit" if edited is not None else "dlq.replay",
            target=f"dead_letter:{letter_id}",
            reason=reason,
            detail={"identities": written.outcomes[0].identities},
        )
        for identity in written.outcomes[0].identities:
            ledger.audit(
                conn,
                actor=actor,
                action="dlq.edit" if edited is not None else "dlq.replay",
                target=identity,
                reason=reason,
                detail={"dead_letter": letter_id},
            )
    for dest, ids in written.publish.items():
        publish.setdefault(dest, []).extend(ids)
    return ReplayResult(letter_id, "replayed", ", ".join(written.outcomes[0].identities))


def dlq_discard(ledger: Ledger, ids: Sequence[int], *, actor: str, reason: str) -> list[ReplayResult]:
    if not reason:
        raise HubError("discarding a dead letter needs --reason (it is recorded in the audit log)")
    dl, d = t.dead_letters, t.deliveries
    out = []
    with ledger.begin() as conn:
        for letter_id in ids:
            row = conn.execute(sa.select(dl).where(dl.c.id == letter_id)).mappings().first()
            if row is None:
                raise NotFound(f"no dead letter {letter_id}")
            if row["state"] != "open":
                out.append(ReplayResult(letter_id, "skipped", f"dead letter is {row['state']}"))
                continue
            at = now()
            conn.execute(dl.update().where(dl.c.id == letter_id).values(state="discarded", updated_at=at))
            if row["delivery_id"]:
                conn.execute(
                    d.update().where(d.c.id == row["delivery_id"]).values(state=t.DISCARDED, updated_at=at)
                )
                ledger.transition(
                    conn, [(row["delivery_id"], t.DEAD, t.DISCARDED, f"discarded by {actor}: {reason}")], at
                )
            ledger.audit(
                conn, actor=actor, action="dlq.discard", target=f"dead_letter:{letter_id}", reason=reason
            )
            if row["identity"]:
                ledger.audit(
                    conn,
                    actor=actor,
                    action="dlq.discard",
                    target=row["identity"],
                    reason=reason,
                    detail={"dead_letter": letter_id},
                )
            out.append(ReplayResult(letter_id, "discarded", reason))
    return out


def edit_template(ledger: Ledger, letter_id: int) -> dict[str, Any]:
    """The invoice JSON an operator edits: the kept invoice, or a skeleton to fill in by hand."""
    shown = dlq_show(ledger, letter_id)
    if shown["invoice"]:
        return dict(shown["invoice"])
    return {
        "kind": "cn.digital.ordinary",
        "number": "",
        "issue_date": "",
        "currency": "CNY",
        "seller": {"name": "", "tax_id": ""},
        "buyer": {"name": "", "tax_id": ""},
        "lines": [
            {
                "name": "",
                "quantity": "1",
                "unit_price": "0",
                "amount": "0",
                "tax_rate": "0.13",
                "tax_amount": "0",
            }
        ],
        "totals": {"net": "0", "tax": "0", "gross": "0"},
        "extra": {"entered_from": (shown["document"] or {}).get("filename")},
    }


def check_edit(hub: Hub, data: dict[str, Any]) -> tuple[Invoice | None, list[Problem]]:
    """Validate an edited invoice: model errors and rule findings, each with its field path."""
    try:
        invoice = Invoice.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [
            Problem(".".join(str(p) for p in err["loc"]), err["msg"], rule="model") for err in exc.errors()
        ]
        return None, problems
    problems = validate(invoice, [*builtin_rules(), *hub.plugins.rules])
    return invoice, problems


def dlq_edit(
    hub: Hub, letter_id: int, data: dict[str, Any], *, actor: str, reason: str | None
) -> ReplayResult:
    invoice, problems = check_edit(hub, data)
    errors = [p for p in problems if p.severity == "error"]
    if invoice is None or errors:
        raise InvoiceInvalid(errors or problems)
    before = edit_template(hub.ledger, letter_id)
    with hub.ledger.begin() as conn:
        hub.ledger.audit(
            conn,
            actor=actor,
            action="dlq.edit.submitted",
            target=f"dead_letter:{letter_id}",
            reason=reason,
            detail={"changes": diff(before, data)},
        )
    [result] = dlq_replay(hub, [letter_id], actor=actor, reason=reason, edited=invoice)
    return result


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Field-by-field changes between two JSON values (for the audit log and the console)."""
    out: list[dict[str, Any]] = []
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            out += diff(before.get(key), after.get(key), f"{path}.{key}" if path else key)
    elif isinstance(before, list) and isinstance(after, list):
        for i in range(max(len(before), len(after))):
            out += diff(
                before[i] if i < len(before) else None, after[i] if i < len(after) else None, f"{path}[{i}]"
            )
    elif before != after and str(before) != str(after):
        out.append({"path": path, "before": before, "after": after})
    return out


def to_json(value: Any) -> str:
    return dumps(value)


# ---------------------------------------------------------------------------------------------------
# Four-eyes edits (``http.four_eyes: true``): an edit is replayed only after a second operator approves.
# Proposals and decisions are audit-log rows: the proposal's row id is the edit id, a decision's target
# is ``edit:<id>``.
# ---------------------------------------------------------------------------------------------------
class Conflict(HubError):
    """The action contradicts what is recorded (already decided; the proposer approving their own edit)."""


def edit_propose(
    hub: Hub, letter_id: int, data: dict[str, Any], *, actor: str, reason: str | None
) -> dict[str, Any]:
    """Validate an edit and record it for approval; nothing is replayed yet."""
    invoice, problems = check_edit(hub, data)
    errors = [p for p in problems if p.severity == "error"]
    if invoice is None or errors:
        raise InvoiceInvalid(errors or problems)
    before = edit_template(hub.ledger, letter_id)
    al = t.audit_log
    with hub.ledger.begin() as conn:
        edit_id = conn.execute(
            al.insert().returning(al.c.id),
            {
                "at": now(),
                "actor": actor,
                "action": "dlq.edit.proposed",
                "target": f"dead_letter:{letter_id}",
                "reason": reason,
                "detail": dumps({"letter": letter_id, "invoice": data, "changes": diff(before, data)}),
            },
        ).scalar_one()
    return {"edit_id": edit_id, "letter_id": letter_id, "state": "awaiting_approval", "proposed_by": actor}


def _edit_rows(conn: Any, edit_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    al = t.audit_log
    stmt = sa.select(al).where(al.c.action == "dlq.edit.proposed")
    if edit_ids is not None:
        stmt = stmt.where(al.c.id.in_(list(edit_ids)))
    proposals = [dict(r) for r in conn.execute(stmt.order_by(al.c.id)).mappings()]
    if not proposals:
        return []
    decisions = {
        r["target"]: dict(r)
        for r in conn.execute(
            sa.select(al).where(
                al.c.action.in_(("dlq.edit.approved", "dlq.edit.rejected")),
                al.c.target.in_([f"edit:{p['id']}" for p in proposals]),
            )
        ).mappings()
    }
    out = []
    for p in proposals:
        detail = loads(p["detail"]) or {}
        decision = decisions.get(f"edit:{p['id']}")
        out.append(
            {
                "edit_id": p["id"],
                "letter_id": detail.get("letter"),
                "proposed_by": p["actor"],
                "proposed_at": p["at"],
                "reason": p["reason"],
                "changes": detail.get("changes", []),
                "invoice": detail.get("invoice"),
                "state": "awaiting_approval"
                if decision is None
                else decision["action"].removeprefix("dlq.edit."),
                "decided_by": decision["actor"] if decision else None,
            }
        )
    return out


def edits_list(ledger: Ledger, *, pending_only: bool = True) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = _edit_rows(conn)
    return [r for r in rows if r["state"] == "awaiting_approval"] if pending_only else rows


def edit_decide(
    hub: Hub, edit_id: int, *, actor: str, approve: bool, reason: str | None = None
) -> dict[str, Any]:
    """Approve (and replay) or reject a proposed edit. The proposer cannot approve their own edit."""
    with hub.ledger.begin() as conn:
        if hub.ledger.dialect == "postgresql":  # two approvers at once: the second waits, then sees it
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(724332)"))
        rows = _edit_rows(conn, [edit_id])
        if not rows:
            raise NotFound(f"no proposed edit {edit_id}")
        edit = rows[0]
        if edit["state"] != "awaiting_approval":
            raise Conflict(f"edit {edit_id} was already {edit['state']} by {edit['decided_by']}")
        if approve and edit["proposed_by"] == actor:
            raise Conflict(f"edit {edit_id} was proposed by {actor}; a second operator must approve it")
        hub.ledger.audit(
            conn,
            actor=actor,
            action="dlq.edit.approved" if approve else "dlq.edit.rejected",
            target=f"edit:{edit_id}",
            reason=reason,
            detail={"letter": edit["letter_id"], "proposed_by": edit["proposed_by"]},
        )
    result: dict[str, Any] = {"edit_id": edit_id, "letter_id": edit["letter_id"]}
    if not approve:
        return {**result, "state": "rejected"}
    invoice = Invoice.model_validate(edit["invoice"])
    [replayed] = dlq_replay(
        hub,
        [edit["letter_id"]],
        actor=actor,
        reason=f"four-eyes: proposed by {edit['proposed_by']}, approved by {actor}"
        + (f": {reason}" if reason else ""),
        edited=invoice,
    )
    return {**result, "state": "approved", "replay": replayed.as_dict()}


def plugin_rows(plugins: Any) -> list[dict[str, Any]]:
    """Loaded plugins and the ones that failed, as `hub plugins --json` and the HTTP API show them."""
    return [
        {
            "name": i.name,
            "distribution": i.distribution,
            "version": i.version,
            "hooks": list(i.hooks),
            "connector_types": list(i.connector_types),
            "parsers": list(i.parsers),
            "ok": True,
            "error": None,
        }
        for i in plugins.infos.values()
    ] + [
        {
            "name": f.name,
            "distribution": f.distribution,
            "version": f.version,
            "hooks": [],
            "connector_types": [],
            "parsers": [],
            "ok": False,
            "error": f.error,
        }
        for f in plugins.failures
    ]
