"""Reconcile: what connector A holds against what connector B holds, and what the ledger knows of each gap.

Both sides are read through their ``Inventory`` role (``inventory(since, until)`` streams
``InventoryItem``) into a temporary SQLite file, never into lists of objects, so a million rows cost
disk, not memory. The comparison is a sort-merge over ``identity``: per identity each side's newest
content (newest by the ledger's own version order) is compared. Gaps are resolved against the ledger in
batches:

* ``only_in_a`` / ``only_in_b``: one side does not hold the identity at all;
* ``differs``: both hold it, with different newest content (an amendment that did not arrive).

For the side that lacks the newer content the ledger tells why (``never_received``, ``not_routed``,
``pending``, ``retrying``, ``dead_lettered`` with the reason, ``delivered_missing`` — delivered, but
missing there now, ``discarded``, ``skipped``). ``repair`` routes the repairable ones through the normal
pipeline: a dead letter is replayed (``ops.dlq_replay``), a version never sent there gets a pending
delivery under its normal idempotency key, and one the destination lost gets a re-send under a key
derived from the lost delivery, so running repair twice creates nothing twice (the claim index and
the live-key check see to that). Nothing is sent from here: the worker path delivers.

Suspected duplicates — same seller, buyer, issue date and gross under different numbers — are
reported from the ledger (index ``ix_versions_fuzzy``) and from the inventories, never merged.

Scheduling: ``reconcile:`` entries in hub.yaml (``ReconcileEntry``) run from ``hub run`` on their cron.
"""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import sqlalchemy as sa
import structlog
from croniter import croniter  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.connectors import Inventory, InventoryItem
from hub.errors import ConfigError, HubError
from hub.ledger import Ledger, dumps, loads, now
from hub.ledger import schema as t

if TYPE_CHECKING:
    from hub.config import LoadedConfig
    from hub.engine import Hub

log = structlog.get_logger()

#: Gap identities resolved against the ledger per round trip.
BATCH = 500
#: Rows inserted into the temporary store per statement.
CHUNK = 5000

GapKind = Literal["only_in_a", "only_in_b", "differs"]


# ---------------------------------------------------------------------------------------------------
# Config: ``reconcile:`` entries in hub.yaml
# ---------------------------------------------------------------------------------------------------
class ReconcileEntry(BaseModel):
    """One scheduled reconcile: ``{a: erp, b: archive, cron: "0 2 * * *", repair: false}``."""

    model_config = ConfigDict(extra="forbid")

    a: str
    b: str
    cron: str = "0 2 * * *"
    repair: bool = False
    #: Compare invoices issued in the last ``days`` days (None: everything each side holds).
    days: int | None = Field(None, ge=1, le=36600)
    name: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
        return value

    @property
    def label(self) -> str:
        return self.name or f"{self.a}-{self.b}"


def reconcile_entries(loaded: LoadedConfig) -> list[ReconcileEntry]:
    """Validate hub.yaml's ``reconcile:`` entries; errors name the YAML path and line."""
    out: list[ReconcileEntry] = []
    problems: list[str] = []
    connectors = loaded.config.connectors
    for i, raw in enumerate(loaded.config.reconcile):
        try:
            entry = ReconcileEntry.model_validate(raw)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                msg = msg.removeprefix("Value error, ")
                problems.append(f"{loaded.where('reconcile', i, *err['loc'])}: {msg}")
            continue
        for side in ("a", "b"):
            name = getattr(entry, side)
            if name not in connectors:
                known = ", ".join(sorted(connectors)) or "none"
                problems.append(
                    f"{loaded.where('reconcile', i, side)}: no connector named {name!r} (connectors: {known})"
                )
        out.append(entry)
    if problems:
        error = ConfigError("\n".join(problems))
        error.context["errors"] = problems
        raise error
    return out


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
@dataclass
class Gap:
    identity: str
    kind: GapKind
    #: The connector that lacks the (newer) content; None when the ledger cannot tell which is newer.
    missing_at: str | None
    #: The content that should be there (None when unknown).
    content_hash: str | None
    hash_a: str | None
    hash_b: str | None
    number: str | None = None
    issue_date: str | None = None
    gross: str | None = None
    currency: str | None = None
    #: never_received | not_routed | pending | retrying | dead_lettered | delivered_missing | discarded |
    #: skipped | unknown_version
    ledger: str = "never_received"
    reason: str = ""
    repairable: bool = False
    repair: str | None = None
    delivery_id: int | None = None
    dead_letter_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    a: str
    b: str
    since: date | None
    until: date | None
    started_at: datetime
    counts: dict[str, int] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] | None = None
    repaired: int = 0
    elapsed: float = 0.0

    def gap_counts(self) -> dict[str, int]:
        out = {"only_in_a": 0, "only_in_b": 0, "differs": 0}
        for g in self.gaps:
            out[g.kind] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "started_at": self.started_at.isoformat(),
            "elapsed": self.elapsed,
            "counts": self.counts,
            "gap_counts": self.gap_counts(),
            "gaps": [g.as_dict() for g in self.gaps],
            "duplicates": self.duplicates,
            "summary": self.summary,
            "repaired": self.repaired,
        }


# ---------------------------------------------------------------------------------------------------
# Streaming both sides into a temporary store
# ---------------------------------------------------------------------------------------------------
def _inventory_of(hub: Hub, name: str) -> Inventory:
    conn = hub.connectors.get(name)
    if conn is None:
        known = ", ".join(sorted(hub.connectors)) or "none"
        raise HubError(f"no connector named {name!r} (connectors: {known})")
    if not isinstance(conn, Inventory):
        with_inv = ", ".join(sorted(hub.inventories)) or "none"
        raise HubError(f"connector {name!r} has no inventory role (connectors with one: {with_inv})")
    return conn


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f")
    return value.isoformat() if isinstance(value, date) else str(value)


def _load(db: sqlite3.Connection, side: str, items: Iterable[InventoryItem]) -> int:
    n = 0
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, CHUNK))
        if not chunk:
            return n
        db.executemany(
            "INSERT INTO items (side, identity, content_hash, issue_date, gross, currency, seller, buyer,"
            " number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    side,
                    x.identity,
                    x.content_hash,
                    _text(x.issue_date),
                    _text(x.gross),
                    x.currency,
                    x.seller_tax_id,
                    x.buyer_tax_id,
                    x.number,
                )
                for x in chunk
            ],
        )
        n += len(chunk)


@dataclass
class _Held:
    """What one side holds of one identity: its content hashes and the last row's facts."""

    hashes: set[str] = field(default_factory=set)
    number: str | None = None
    issue_date: str | None = None
    gross: str | None = None
    currency: str | None = None


def _grouped(db: sqlite3.Connection) -> Iterator[tuple[str, _Held | None, _Held | None]]:
    """Sort-merge: one (identity, held by A, held by B) per identity, in identity order."""
    cur = db.execute(
        "SELECT identity, side, content_hash, number, issue_date, gross, currency FROM items"
        " ORDER BY identity, side, rowid"
    )
    for identity, rows in itertools.groupby(cur, key=lambda r: r[0]):
        held: dict[str, _Held] = {}
        for _, side, chash, number, issued, gross, currency in rows:
            h = held.setdefault(side, _Held())
            if chash:
                h.hashes.add(chash)
            h.number, h.issue_date, h.gross, h.currency = number, issued, gross, currency
        yield identity, held.get("a"), held.get("b")


# ---------------------------------------------------------------------------------------------------
# The ledger's side of a gap
# ---------------------------------------------------------------------------------------------------
def _resolve(
    ledger: Ledger, a: str, b: str, pending: Sequence[tuple[str, _Held | None, _Held | None]]
) -> list[Gap]:
    v, d, dl = t.invoice_versions, t.deliveries, t.dead_letters
    identities = [p[0] for p in pending]
    with ledger.engine.connect() as conn:
        versions: dict[str, list[dict[str, Any]]] = {}
        for r in conn.execute(
            sa.select(v.c.id, v.c.identity, v.c.content_hash, v.c.number, v.c.source, v.c.received_at)
            .where(v.c.identity.in_(identities))
            .order_by(v.c.id)
        ).mappings():
            versions.setdefault(r["identity"], []).append(dict(r))
        deliveries: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in conn.execute(
            sa.select(
                d.c.id,
                d.c.identity,
                d.c.destination,
                d.c.content_hash,
                d.c.idem_key,
                d.c.state,
                d.c.attempts,
                d.c.next_attempt_at,
                d.c.last_error,
                d.c.remote_ref,
                d.c.duplicate_of,
                d.c.updated_at,
            )
            .where(d.c.identity.in_(identities), d.c.destination.in_([a, b]))
            .order_by(d.c.id)
        ).mappings():
            deliveries.setdefault((r["identity"], r["destination"]), []).append(dict(r))
        letters: dict[int, dict[str, Any]] = {}
        intake_letters: dict[str, dict[str, Any]] = {}
        for r in conn.execute(
            sa.select(
                dl.c.id,
                dl.c.stage,
                dl.c.delivery_id,
                dl.c.identity,
                dl.c.error_class,
                dl.c.message,
                dl.c.state,
            )
            .where(dl.c.identity.in_(identities))
            .order_by(dl.c.id)
        ).mappings():
            if r["delivery_id"] is not None:
                letters[r["delivery_id"]] = dict(r)
            elif r["state"] == "open":
                intake_letters[r["identity"]] = dict(r)

    gaps = []
    for identity, held_a, held_b in pending:
        order = {x["content_hash"]: i for i, x in enumerate(versions.get(identity, []))}

        na, nb = _newest(held_a, order), _newest(held_b, order)
        facts = held_a or held_b or _Held()
        if held_b is None:
            kind: GapKind = "only_in_a"
            missing, want = b, na
        elif held_a is None:
            kind, missing, want = "only_in_b", a, nb
        else:
            kind = "differs"
            ra, rb = order.get(na or "", -1), order.get(nb or "", -1)
            if ra == rb:  # neither version is in the ledger
                missing, want = None, None
            elif ra > rb:
                missing, want, facts = b, na, held_a
            else:
                missing, want, facts = a, nb, held_b
        gap = Gap(
            identity=identity,
            kind=kind,
            missing_at=missing,
            content_hash=want,
            hash_a=na,
            hash_b=nb,
            number=facts.number,
            issue_date=facts.issue_date,
            gross=facts.gross,
            currency=facts.currency,
        )
        _explain(gap, versions.get(identity, []), deliveries, letters, intake_letters.get(identity))
        gaps.append(gap)
    return gaps


def _newest(h: _Held | None, order: dict[str, int]) -> str | None:
    """The side's newest content by the ledger's version order (unknown content ranks first)."""
    if h is None or not h.hashes:
        return None
    return max(h.hashes, key=lambda x: (order.get(x, -1), x))


_RANK = {
    t.DELIVERED: 0,
    t.INFLIGHT: 1,
    t.PENDING: 2,
    t.RETRYING: 3,
    t.DEAD: 4,
    t.DISCARDED: 5,
    t.SKIPPED: 6,
}


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)


def _explain(
    gap: Gap,
    versions: list[dict[str, Any]],
    deliveries: dict[tuple[str, str], list[dict[str, Any]]],
    letters: dict[int, dict[str, Any]],
    intake_letter: dict[str, Any] | None,
) -> None:
    """Fill in what the ledger knows about why ``gap.missing_at`` lacks ``gap.content_hash``."""
    if not versions:
        gap.ledger = "never_received"
        gap.reason = "the hub never received this invoice"
        if intake_letter is not None:
            gap.ledger = "dead_lettered"
            gap.dead_letter_id = intake_letter["id"]
            gap.reason = (
                f"dead-lettered at intake (dead letter {intake_letter['id']}): "
                f"{intake_letter['error_class']}: {intake_letter['message']}"
            )
        return
    version = next((x for x in versions if x["content_hash"] == gap.content_hash), None)
    if gap.missing_at is None or version is None:
        gap.ledger = "unknown_version"
        gap.reason = (
            "neither side's content is a version the hub received"
            if gap.missing_at is None
            else f"the hub never received content {str(gap.content_hash)[:12]} of this invoice"
        )
        return
    got = f"received from {version['source']} at {_when(version['received_at'])}"
    rows = [
        x
        for x in deliveries.get((gap.identity, gap.missing_at), [])
        if x["content_hash"] == version["content_hash"]
    ]
    if not rows:
        gap.ledger = "not_routed"
        gap.reason = f"{got}; no delivery to {gap.missing_at} was ever created (no route sends it there)"
        gap.repairable = True
        return
    # A skipped duplicate points at the delivery that carried the content.
    by_id = {x["id"]: x for x in deliveries.get((gap.identity, gap.missing_at), [])}
    best = min(rows, key=lambda x: (_RANK.get(x["state"], 9), -x["id"]))
    if best["state"] == t.SKIPPED and best["duplicate_of"] in by_id:
        best = by_id[best["duplicate_of"]]
    gap.delivery_id = best["id"]
    state = best["state"]
    if state == t.DELIVERED:
        gap.ledger = "delivered_missing"
        ref = f" as {best['remote_ref']}" if best["remote_ref"] else ""
        gap.reason = (
            f"{got}; delivered to {gap.missing_at}{ref} at {_when(best['updated_at'])} "
            f"(delivery {best['id']}), missing there now"
        )
        gap.repairable = True
    elif state in (t.PENDING, t.INFLIGHT):
        gap.ledger = "pending"
        gap.reason = f"{got}; delivery {best['id']} to {gap.missing_at} is {state} (under way)"
    elif state == t.RETRYING:
        gap.ledger = "retrying"
        nxt = f", next attempt at {_when(best['next_attempt_at'])}" if best["next_attempt_at"] else ""
        gap.reason = (
            f"{got}; delivery {best['id']} to {gap.missing_at} still retrying after "
            f"{best['attempts']} attempt(s){nxt}: {best['last_error'] or 'no error recorded'}"
        )
    elif state == t.DEAD:
        gap.ledger = "dead_lettered"
        letter = letters.get(best["id"])
        if letter is not None:
            gap.dead_letter_id = letter["id"]
            gap.reason = (
                f"{got}; dead-lettered at {gap.missing_at} (dead letter {letter['id']}, {letter['state']}): "
                f"{letter['error_class']}: {letter['message']}"
            )
        else:
            gap.reason = f"{got}; delivery {best['id']} is dead: {best['last_error']}"
        gap.repairable = True
    elif state == t.DISCARDED:
        gap.ledger = "discarded"
        letter = letters.get(best["id"])
        gap.dead_letter_id = letter["id"] if letter else None
        gap.reason = f"{got}; dead letter discarded by an operator (delivery {best['id']}); see the audit log"
    else:
        gap.ledger = "skipped"
        why = best["last_error"] or "by policy"
        gap.reason = f"{got}; delivery {best['id']} to {gap.missing_at} was skipped ({why})"


# ---------------------------------------------------------------------------------------------------
# Summary per day and suspected duplicates
# ---------------------------------------------------------------------------------------------------
def _dec(value: str | None) -> Decimal:
    try:
        return Decimal(value) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def _summary(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Counts and amounts per issue day, currency and side; an identity counts once per side (its last
    listed row when a side holds several versions)."""
    cur = db.execute(
        "SELECT side, issue_date, currency, gross FROM items WHERE rowid IN"
        " (SELECT max(rowid) FROM items GROUP BY side, identity)"
        " ORDER BY issue_date, currency"
    )
    days: dict[tuple[str, str], dict[str, Any]] = {}
    for side, issued, currency, gross in cur:
        key = (issued or "unknown", currency or "")
        row = days.setdefault(
            key,
            {
                "day": key[0],
                "currency": key[1],
                "a_count": 0,
                "a_gross": Decimal(0),
                "b_count": 0,
                "b_gross": Decimal(0),
            },
        )
        row[f"{side}_count"] += 1
        row[f"{side}_gross"] += _dec(gross)
    out = []
    for row in days.values():
        row["balanced"] = row["a_count"] == row["b_count"] and row["a_gross"] == row["b_gross"]
        row["a_gross"], row["b_gross"] = format(row["a_gross"], "f"), format(row["b_gross"], "f")
        out.append(row)
    return out


def suspected_duplicates(
    ledger: Ledger, since: date | None = None, until: date | None = None, db: sqlite3.Connection | None = None
) -> list[dict[str, Any]]:
    """Same seller, buyer, issue date and gross under different numbers: for a person to judge."""
    v = t.invoice_versions
    key_cols = (v.c.seller_tax_id, v.c.buyer_tax_id, v.c.issue_date, v.c.gross)
    stmt = (
        sa.select(*key_cols)
        .where(v.c.seller_tax_id.is_not(None), v.c.buyer_tax_id.is_not(None))
        .group_by(*key_cols)
        .having(sa.func.count(sa.distinct(v.c.number)) > 1)
    )
    if since:
        stmt = stmt.where(v.c.issue_date >= since.isoformat())
    if until:
        stmt = stmt.where(v.c.issue_date <= until.isoformat())
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    with ledger.engine.connect() as conn:
        groups = conn.execute(stmt.limit(1000)).all()
        for seller, buyer, issued, gross in groups:
            rows = conn.execute(
                sa.select(v.c.number, v.c.identity)
                .where(
                    v.c.seller_tax_id == seller,
                    v.c.buyer_tax_id == buyer,
                    v.c.issue_date == issued,
                    v.c.gross == gross,
                )
                .distinct()
                .order_by(v.c.number)
            ).all()
            found[(seller, buyer, issued, gross)] = {
                "seller_tax_id": seller,
                "buyer_tax_id": buyer,
                "issue_date": issued,
                "gross": gross,
                "numbers": sorted({r.number for r in rows}),
                "identities": sorted({r.identity for r in rows}),
                "seen_in": ["ledger"],
            }
    if db is not None:
        for side, seller, buyer, issued, gross, numbers in db.execute(
            "SELECT side, seller, buyer, issue_date, gross, group_concat(DISTINCT number) FROM items"
            " WHERE seller IS NOT NULL AND buyer IS NOT NULL GROUP BY side, seller, buyer, issue_date, gross"
            " HAVING count(DISTINCT number) > 1 LIMIT 1000"
        ):
            key = (seller, buyer, issued, format(_dec(gross), "f"))
            entry = found.setdefault(
                key,
                {
                    "seller_tax_id": seller,
                    "buyer_tax_id": buyer,
                    "issue_date": issued,
                    "gross": key[3],
                    "numbers": [],
                    "identities": [],
                    "seen_in": [],
                },
            )
            entry["numbers"] = sorted(set(entry["numbers"]) | set(numbers.split(",")))
            entry["seen_in"].append(side)
    return sorted(found.values(), key=lambda x: (x["issue_date"], x["seller_tax_id"], x["gross"]))


# ---------------------------------------------------------------------------------------------------
# Repair: through the normal pipeline
# ---------------------------------------------------------------------------------------------------
def _repair(hub: Hub, gaps: Sequence[Gap], actor: str) -> tuple[int, dict[str, list[int]]]:
    from hub import ops

    d, e = t.deliveries, t.events
    ledger = hub.ledger
    sinks = hub.sinks
    publish: dict[str, list[int]] = {}
    queued: dict[str, list[int]] = {}
    published_at = now()
    done = 0
    for gap in gaps:
        if not gap.repairable or gap.missing_at is None or gap.content_hash is None:
            continue
        if gap.missing_at not in sinks:
            gap.repair = f"not repaired: {gap.missing_at} is not a sink"
            continue
        if gap.ledger == "dead_lettered" and gap.dead_letter_id is not None:
            [result] = ops.dlq_replay(
                hub, [gap.dead_letter_id], actor=actor, reason=f"reconcile {gap.kind}: {gap.reason}"
            )
            gap.repair = f"dead letter {gap.dead_letter_id}: {result.action} {result.detail}".strip()
            if result.action == "replayed":
                done += 1
                if gap.delivery_id is not None:
                    queued.setdefault(gap.missing_at, []).append(gap.delivery_id)
            continue
        if gap.ledger == "dead_lettered" and gap.delivery_id is not None:
            # A dead delivery without an open letter: back to pending under its own key.
            at = now()
            with ledger.begin() as conn:
                n = conn.execute(
                    d.update()
                    .where(d.c.id == gap.delivery_id, d.c.state == t.DEAD)
                    .values(
                        state=t.PENDING,
                        attempts=0,
                        next_attempt_at=None,
                        published_at=published_at,
                        updated_at=at,
                    )
                ).rowcount
                if n:
                    ledger.transition(
                        conn, [(gap.delivery_id, t.DEAD, t.PENDING, f"reconcile by {actor}")], at
                    )
                    ledger.audit(
                        conn,
                        actor=actor,
                        action="reconcile.repair",
                        target=gap.identity,
                        detail={"delivery": gap.delivery_id, "destination": gap.missing_at},
                    )
            if n:
                publish.setdefault(gap.missing_at, []).append(gap.delivery_id)
                done += 1
            gap.repair = f"delivery {gap.delivery_id} back to pending" if n else "already moved on"
            continue
        # not_routed: the normal key; delivered_missing: a re-send keyed by the delivery that was lost.
        if gap.ledger == "not_routed":
            key = gap.content_hash
        else:
            key = f"{gap.content_hash}:reconcile:{gap.delivery_id}"
        at = now()
        with ledger.begin() as conn:
            live = conn.execute(
                sa.select(d.c.id, d.c.state).where(
                    d.c.destination == gap.missing_at,
                    d.c.identity == gap.identity,  # by ix_deliveries_dest_identity
                    d.c.idem_key == key,
                    d.c.state.in_((t.PENDING, t.INFLIGHT, t.RETRYING, t.DELIVERED)),
                )
            ).first()
            if live is not None:
                gap.repair = f"already under way: delivery {live.id} ({live.state})"
                continue
            event_id = conn.execute(
                sa.select(e.c.id)
                .where(e.c.identity == gap.identity, e.c.content_hash == gap.content_hash)
                .order_by(e.c.received_at.desc())
                .limit(1)
            ).scalar()
            if event_id is None:
                gap.repair = "not repaired: no event recorded for this version"
                continue
            new_id = conn.execute(
                d.insert().returning(d.c.id),
                {
                    "event_id": event_id,
                    "destination": gap.missing_at,
                    "route": None,
                    "idem_key": key,
                    "identity": gap.identity,
                    "content_hash": gap.content_hash,
                    "state": t.PENDING,
                    "attempts": 0,
                    "created_at": at,
                    "updated_at": at,
                    "published_at": published_at,
                },
            ).scalar_one()
            ledger.transition(conn, [(new_id, None, t.PENDING, f"reconcile {gap.ledger} by {actor}")], at)
            ledger.audit(
                conn,
                actor=actor,
                action="reconcile.repair",
                target=gap.identity,
                reason=gap.reason,
                detail={"delivery": new_id, "destination": gap.missing_at, "idem_key": key},
            )
        publish.setdefault(gap.missing_at, []).append(new_id)
        gap.delivery_id = new_id
        gap.repair = f"delivery {new_id} to {gap.missing_at} queued"
        done += 1
    if publish:
        hub._publish(publish)
    for dest, ids in publish.items():
        queued.setdefault(dest, []).extend(ids)
    return done, queued


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------
def reconcile(
    hub: Hub,
    a: str,
    b: str,
    *,
    since: date | None = None,
    until: date | None = None,
    repair: bool = False,
    summary: bool = False,
    actor: str = "reconcile",
    deliver_now: bool = False,
    workdir: Path | None = None,
) -> Report:
    """Compare ``a`` with ``b``; with ``repair`` queue deliveries for every repairable gap.

    ``deliver_now`` (the CLI's ``--repair``) also runs the queued deliveries through the worker in
    this process (claim, deliver, record: what ``hub run`` does); a ``hub run`` elsewhere may take
    them as well, and the claim decides which one delivers."""
    if a == b:
        raise HubError("reconcile needs two different connectors")
    inv_a, inv_b = _inventory_of(hub, a), _inventory_of(hub, b)
    started = now()
    report = Report(a=a, b=b, since=since, until=until, started_at=started)
    with tempfile.TemporaryDirectory(prefix="hub-reconcile-", dir=workdir) as tmp:
        db = sqlite3.connect(str(Path(tmp) / "items.db"), isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(
                "CREATE TABLE items (side TEXT, identity TEXT, content_hash TEXT, issue_date TEXT,"
                " gross TEXT, currency TEXT, seller TEXT, buyer TEXT, number TEXT)"
            )
            db.execute("BEGIN")
            try:
                report.counts[a] = _load(db, "a", inv_a.inventory(since, until))
                report.counts[b] = _load(db, "b", inv_b.inventory(since, until))
            except HubError:
                raise
            except Exception as exc:  # a crashing inventory plugin: say which side, keep the cause
                raise HubError(f"reading the inventory failed: {type(exc).__name__}: {exc}") from exc
            db.execute("COMMIT")
            db.execute("CREATE INDEX ix_items ON items (identity, side)")
            matched = 0
            batch: list[tuple[str, _Held | None, _Held | None]] = []
            for identity, held_a, held_b in _grouped(db):
                if held_a is not None and held_b is not None and held_a.hashes == held_b.hashes:
                    matched += 1
                    continue
                batch.append((identity, held_a, held_b))
                if len(batch) >= BATCH:
                    report.gaps += _settle(hub.ledger, a, b, batch)
                    batch = []
            if batch:
                report.gaps += _settle(hub.ledger, a, b, batch)
            report.counts["matched"] = matched + sum(1 for g in report.gaps if g.ledger == "matched")
            report.gaps = [g for g in report.gaps if g.ledger != "matched"]
            report.duplicates = suspected_duplicates(hub.ledger, since, until, db)
            if summary:
                report.summary = _summary(db)
        finally:
            db.close()
    if repair and report.gaps:
        report.repaired, queued = _repair(hub, report.gaps, actor)
        if deliver_now:
            for dest, ids in queued.items():
                hub.worker.handle(dest, ids)
    report.elapsed = round((now() - started).total_seconds(), 3)
    _record(hub.ledger, report, actor)
    log.info(
        "reconcile_done",
        a=a,
        b=b,
        gaps=len(report.gaps),
        repaired=report.repaired,
        duplicates=len(report.duplicates),
        elapsed=report.elapsed,
    )
    return report


def _settle(ledger: Ledger, a: str, b: str, batch: list[tuple[str, _Held | None, _Held | None]]) -> list[Gap]:
    """Resolve a batch; an identity whose sides hold the same newest content is a match, not a gap."""
    gaps = _resolve(ledger, a, b, batch)
    for gap in gaps:
        if gap.kind == "differs" and gap.hash_a == gap.hash_b:
            gap.ledger = "matched"
    return gaps


def _record(ledger: Ledger, report: Report, actor: str) -> None:
    """Every run goes in the audit log: the last one per pair feeds the ``hub_reconcile_gaps`` metric."""
    with ledger.begin() as conn:
        ledger.audit(
            conn,
            actor=actor,
            action="reconcile.run",
            target=f"reconcile:{report.a}:{report.b}",
            detail={
                "a": report.a,
                "b": report.b,
                "counts": report.counts,
                "gaps": report.gap_counts(),
                "repairable": sum(1 for g in report.gaps if g.repairable),
                "repaired": report.repaired,
                "duplicates": len(report.duplicates),
            },
        )


def last_runs(ledger: Ledger) -> list[dict[str, Any]]:
    """The latest recorded run of each pair (for metrics and the console)."""
    al = t.audit_log
    with ledger.engine.connect() as conn:
        latest = (
            sa.select(sa.func.max(al.c.id)).where(al.c.action == "reconcile.run").group_by(al.c.target)
        ).scalar_subquery()
        rows = conn.execute(sa.select(al.c.at, al.c.actor, al.c.detail).where(al.c.id.in_(latest))).all()
    return [{"at": r.at, "actor": r.actor, **(loads(r.detail) or {})} for r in rows]


# ---------------------------------------------------------------------------------------------------
# Scheduling from `hub run`
# ---------------------------------------------------------------------------------------------------
class Scheduler:
    """Runs the ``reconcile:`` entries on their cron while ``hub run`` runs."""

    def __init__(self, hub: Hub, entries: Sequence[ReconcileEntry]) -> None:
        self.hub = hub
        self.entries = list(entries)
        self.runs = 0

    def next_times(self, after: datetime) -> list[datetime]:
        return [croniter(e.cron, after).get_next(datetime) for e in self.entries]

    def run(self) -> None:
        stop = self.hub.stop_event
        due = self.next_times(datetime.now(UTC))
        while not stop.is_set():
            at = min(due)
            wait = (at - datetime.now(UTC)).total_seconds()
            if wait > 0 and stop.wait(min(wait, 60.0)):
                return
            current = datetime.now(UTC)
            for i, entry in enumerate(self.entries):
                if due[i] > current:
                    continue
                since = (current - timedelta(days=entry.days)).date() if entry.days else None
                try:
                    report = reconcile(
                        self.hub, entry.a, entry.b, since=since, repair=entry.repair, actor="scheduler"
                    )
                    log.info(
                        "reconcile_scheduled_run",
                        entry=entry.label,
                        gaps=len(report.gaps),
                        repaired=report.repaired,
                    )
                except HubError as exc:
                    log.warning("reconcile_scheduled_failed", entry=entry.label, error=str(exc))
                self.runs += 1
                due[i] = croniter(entry.cron, current).get_next(datetime)


def scheduler_thread(hub: Hub) -> threading.Thread:
    """The thread ``Hub.run`` starts when hub.yaml has ``reconcile:`` entries (validated here)."""
    scheduler = Scheduler(hub, reconcile_entries(hub.loaded))
    return threading.Thread(target=scheduler.run, name="reconcile-scheduler", daemon=True)


def report_json(report: Report) -> str:
    return dumps(report.as_dict())
