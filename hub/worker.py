"""The worker: takes deliveries off the bus, calls sinks, records every outcome before the ack.

For each delivery of a batch (all for one destination):

1. skip it when its idempotency key already reached this destination (``skipped``, duplicate);
2. when this destination already holds another content hash of the same identity, apply the route's
   ``on_amendment`` policy (``deliver`` with ``amends`` set, ``skip``, or ``dead_letter``);
3. claim it (``inflight`` with a lease); the partial unique index on (destination, key) for claimed
   and delivered rows makes the check-and-claim atomic across threads and processes;
4. call the sink with the content hash as idempotency key;
5. record the outcome (delivered / retrying with a due time / dead with the real error), the attempt,
   the transition and any follow-up documents the sink returned, in one transaction; then ack.

Only the worker decides retry and dead letter, from the error class (``hub.errors``). A sink that
raises anything else is a permanent failure of that delivery, with its traceback kept.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from structlog.contextvars import bind_contextvars, reset_contextvars

from hub.config import HubConfig, RetryPolicy
from hub.connectors import DeliveryRequest, InvoiceSummary, Receipt, Sink
from hub.errors import AmendmentRejected, HubError, LedgerError, PermanentError, RateLimited, TransientError
from hub.intake import Intake, Prepared
from hub.ledger import Ledger, document_from_row, dumps, now
from hub.ledger import schema as t
from hub.logging import log_enabled
from hub.models import Document, Event, Invoice, InvoiceStatus
from hub.router import route_named

log = structlog.get_logger()

#: How long a delivery waits when an earlier delivery of the same invoice to the same place is open.
DEFER = timedelta(seconds=0.5)


def backoff(
    policy: RetryPolicy, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt ``attempt + 1``. A ``retry_after`` is a floor jitter only adds to."""
    source: Any = rng or random
    if retry_after is not None:
        return float(retry_after + source.uniform(0, policy.jitter * max(retry_after, 0.001)))
    base = min(policy.max_delay, policy.initial_delay * policy.multiplier ** max(attempt - 1, 0))
    return float(base + source.uniform(0, policy.jitter * base))


@dataclass
class Outcome:
    delivery_id: int
    state: str
    from_state: str
    attempt: int
    started_at: datetime
    error: BaseException | None = None
    receipt: Receipt | None = None
    next_attempt_at: datetime | None = None
    retry_after: float | None = None
    detail: str | None = None
    follow_up: list[Prepared] = field(default_factory=list)


@dataclass
class WorkerStats:
    delivered: int = 0
    skipped: int = 0
    retried: int = 0
    dead: int = 0
    amendments: int = 0


class Worker:
    def __init__(
        self,
        config: HubConfig,
        ledger: Ledger,
        sinks: dict[str, Sink],
        intake: Intake,
        publish: Callable[[dict[str, list[int]]], None],
        observers: list[Any] | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.sinks = sinks
        self.intake = intake
        self.publish = publish
        self.observers = observers or []
        self.stats = WorkerStats()
        self.lease = timedelta(seconds=config.worker.lease_seconds)
        #: Deliveries whose sink call runs now: id → (attempt, when the lease was last set).
        self._held: dict[int, tuple[int, float]] = {}
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    # -----------------------------------------------------------------------------------------------
    def handle(self, destination: str, delivery_ids: list[int]) -> None:
        """Process one bus message. Raises only when the ledger itself failed (then the message is
        not acked and comes back)."""
        claimed, _early = self._claim(destination, delivery_ids)
        if not claimed:
            return
        # Reads of write-once data (documents, stored versions), after the claim has committed: on
        # SQLite a reader does not hold the one write lock the intake and the other workers wait for.
        # Should the ledger fail here, the claims stand until their lease runs out and the relay
        # publishes them again, as after a crash.
        sink = self.sinks.get(destination)
        with self.ledger.engine.connect() as conn:
            if getattr(sink, "wants_documents", True):
                self._attach_documents(conn, claimed)
            self._attach_invoices(conn, claimed)
        with self._renewing_leases(claimed):
            if sink is not None and len(claimed) > 1 and callable(getattr(sink, "deliver_batch", None)):
                outcomes = self._deliver_batch(sink, destination, claimed)
            else:
                outcomes = [self._deliver(sink, destination, row) for row in claimed]
        self._record_until_done(outcomes)
        publish: dict[str, list[int]] = {}
        for oc in outcomes:
            for prepared in oc.follow_up:
                for dest, ids in getattr(prepared, "_publish", {}).items():
                    publish.setdefault(dest, []).extend(ids)
        if publish:
            self.publish(publish)
        for oc in outcomes:
            self._notify(destination, oc)

    @contextmanager
    def _renewing_leases(self, rows: list[dict[str, Any]]) -> Iterator[None]:
        """Keep our claims while the sink calls of a batch run. Without it a batch of slow calls (a
        platform polling for its result) outlasts the lease and another worker delivers the same rows
        again. One renewal thread per worker (started on first use) pushes ``lease_until`` forward for
        the rows held longer than a third of the lease; a quick batch costs two dict updates."""
        held = {row["id"]: (row["attempt"], time.monotonic()) for row in rows}
        with self._held_lock:
            self._held.update(held)
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_leases, name="lease-renewal", daemon=True)
                self._renewer.start()
        try:
            yield
        finally:
            with self._held_lock:
                for delivery_id in held:
                    self._held.pop(delivery_id, None)

    def _renew_leases(self) -> None:
        interval = max(0.2, self.lease.total_seconds() / 3)
        d = t.deliveries
        while True:
            time.sleep(interval / 2)
            cutoff = time.monotonic() - interval
            with self._held_lock:
                due = [(i, a) for i, (a, since) in self._held.items() if since <= cutoff]
            if not due:
                continue
            try:
                with self.ledger.begin() as conn:
                    until = now() + self.lease
                    for delivery_id, attempt in due:
                        conn.execute(
                            d.update()
                            .where(d.c.id == delivery_id, d.c.state == t.INFLIGHT, d.c.attempts == attempt)
                            .values(lease_until=until)
                        )
            except HubError as exc:
                log.warning("lease_renewal_failed", error=str(exc), deliveries=len(due))
                continue
            renewed_at = time.monotonic()
            with self._held_lock:
                for delivery_id, attempt in due:
                    if delivery_id in self._held:
                        self._held[delivery_id] = (attempt, renewed_at)

    # -----------------------------------------------------------------------------------------------
    def _claim(self, destination: str, ids: list[int]) -> tuple[list[dict[str, Any]], int]:
        d, e = t.deliveries, t.events
        at = now()
        early = 0
        claimed: list[dict[str, Any]] = []
        with self.ledger.begin() as conn:
            # Locked (PostgreSQL): a second thread or process handed the same ids (a message published
            # twice) skips the rows this claim holds instead of judging them half-claimed.
            result = conn.execute(
                self.ledger.locking(
                    sa.select(
                        d.c.id,
                        d.c.state,
                        d.c.destination,
                        d.c.idem_key,
                        d.c.identity,
                        d.c.content_hash,
                        d.c.route,
                        d.c.attempts,
                        d.c.next_attempt_at,
                        d.c.event_id,
                        e.c.type,
                        e.c.source,
                        e.c.trace_id,
                        e.c.received_at,
                        e.c.document_sha256,
                        e.c.status,
                        e.c.version_id,
                    )
                    .join(e, e.c.id == d.c.event_id)
                    .where(self.ledger.among(d.c.id, ids)),
                    of=d,
                )
            )
            # Plain dicts made from tuples: ``dict(RowMapping)`` cost several µs a row, under the lock.
            # By id alone, destination and state checked here: with them in the query SQLite walked
            # the destination's index, every delivery ever made to it, per claim.
            keys = list(result.keys())
            rows = [
                row
                for row in (dict(zip(keys, r, strict=True)) for r in result.all())
                if row["destination"] == destination and row["state"] in (t.PENDING, t.RETRYING)
            ]
            if not rows:
                return [], 0
            identities = list({r["identity"] for r in rows})
            # Deliveries of one identity reach one destination in order: a later one waits for an
            # earlier open one, so an amendment is always judged against what the destination holds.
            # One query gives both that and what the destination holds (claimed or delivered).
            first_open: dict[str, int] = {}
            held: dict[str, list[tuple[str, str, int]]] = {}
            for r in conn.execute(
                sa.select(d.c.id, d.c.identity, d.c.content_hash, d.c.idem_key, d.c.state).where(
                    d.c.destination == destination,
                    self.ledger.among(d.c.identity, identities),
                    d.c.state.in_((*t.OPEN_STATES, t.DELIVERED)),
                )
            ).all():
                if r.state in (t.DELIVERED, t.INFLIGHT):
                    held.setdefault(r.identity, []).append((r.content_hash, r.idem_key, r.id))
                if r.state in t.OPEN_STATES and r.id < first_open.get(r.identity, r.id + 1):
                    first_open[r.identity] = r.id
            transitions: list[tuple[int, str | None, str, str | None]] = []
            claimed_identities: set[str] = set()
            to_claim: list[dict[str, Any]] = []
            for row in sorted(rows, key=lambda r: r["id"]):
                if row["state"] == t.RETRYING and row["next_attempt_at"] and row["next_attempt_at"] > at:
                    early += 1
                    continue
                earlier = first_open.get(row["identity"])
                if (earlier is not None and earlier < row["id"]) or row["identity"] in claimed_identities:
                    detail = f"waiting for earlier delivery {earlier} of the same invoice"
                    conn.execute(
                        d.update()
                        .where(d.c.id == row["id"])
                        .values(
                            state=t.RETRYING, next_attempt_at=at + DEFER, published_at=None, updated_at=at
                        )
                    )
                    transitions.append((row["id"], row["state"], t.RETRYING, detail))
                    continue
                others = held.get(row["identity"], [])
                same = next((o for o in others if o[1] == row["idem_key"]), None)
                if same is not None:
                    self._finish_now(
                        conn, row, t.SKIPPED, f"duplicate of delivery {same[2]}", duplicate_of=same[2]
                    )
                    transitions.append(
                        (row["id"], row["state"], t.SKIPPED, f"duplicate of delivery {same[2]}")
                    )
                    self.stats.skipped += 1
                    continue
                prior = next((o for o in others if o[0] != row["content_hash"]), None)
                if prior is not None and row["type"] == "invoice.received":
                    route = route_named(self.config, row["route"])
                    policy = route.on_amendment if route else "deliver"
                    self.stats.amendments += 1
                    if policy == "skip":
                        detail = f"amendment of {prior[0][:12]} skipped by route policy"
                        self._finish_now(conn, row, t.SKIPPED, detail)
                        transitions.append((row["id"], row["state"], t.SKIPPED, detail))
                        self.stats.skipped += 1
                        continue
                    if policy == "dead_letter":
                        error = AmendmentRejected(
                            f"{row['identity']} is already at {destination} with content {prior[0][:12]}; "
                            f"this version ({row['content_hash'][:12]}) changes it and the route says "
                            "dead_letter",
                            previous_hash=prior[0],
                        )
                        self._dead(conn, row, destination, error, row["attempts"])
                        transitions.append(
                            (row["id"], row["state"], t.DEAD, "amendment rejected by route policy")
                        )
                        self.stats.dead += 1
                        continue
                    row["amends"] = prior[0]
                claimed_identities.add(row["identity"])
                to_claim.append(row)
            got = self._claim_rows(conn, to_claim, at)
            for row in to_claim:
                outcome = got.get(row["id"], 0)
                if outcome == -1:
                    # Another worker holds or delivered this key right now: this copy is a duplicate.
                    self._finish_now(conn, row, t.SKIPPED, "duplicate claimed by another worker")
                    transitions.append((row["id"], row["state"], t.SKIPPED, "duplicate claimed concurrently"))
                    self.stats.skipped += 1
                    continue
                if outcome == 0:
                    continue  # someone else took it between our read and our claim
                transitions.append((row["id"], row["state"], t.INFLIGHT, f"attempt {row['attempts'] + 1}"))
                row["attempt"] = row["attempts"] + 1
                claimed.append(row)
            self.ledger.transition(conn, transitions, at)
        return claimed, early

    def _claim_rows(self, conn: Connection, rows: list[dict[str, Any]], at: datetime) -> dict[int, int]:
        """Claim rows: 1 claimed, 0 taken by someone else, -1 the key is claimed or delivered elsewhere.

        One UPDATE ... RETURNING for the batch; only when the claim index refuses it (a duplicate key
        in flight in another worker) does it fall back to one savepoint per row to find which."""
        d = t.deliveries
        result: dict[int, int] = {}
        plain = [r["id"] for r in rows if not r.get("amends")]
        if plain:
            try:
                with conn.begin_nested():
                    got = conn.execute(
                        d.update()
                        # ``state || ''``: the ids decide which rows (their primary key); on a plain
                        # column SQLite chose the state index, every pending delivery of the backlog.
                        .where(
                            self.ledger.among(d.c.id, plain),
                            d.c.state.concat("").in_((t.PENDING, t.RETRYING)),
                        )
                        .values(
                            state=t.INFLIGHT,
                            attempts=d.c.attempts + 1,
                            lease_until=at + self.lease,
                            updated_at=at,
                        )
                        .returning(d.c.id)
                    ).scalars()
                    result.update(dict.fromkeys(got, 1))
            except IntegrityError:
                result.clear()
                plain_set = set(plain)
                for row in rows:
                    if row["id"] in plain_set:
                        result[row["id"]] = self._claim_one(conn, row, at)
        for row in rows:
            if row.get("amends"):
                result[row["id"]] = self._claim_one(conn, row, at)
        return result

    def _claim_one(self, conn: Connection, row: dict[str, Any], at: datetime) -> int:
        d = t.deliveries
        with conn.begin_nested() as savepoint:
            try:
                return int(
                    conn.execute(
                        d.update()
                        .where(d.c.id == row["id"], d.c.state.in_((t.PENDING, t.RETRYING)))
                        .values(
                            state=t.INFLIGHT,
                            attempts=d.c.attempts + 1,
                            lease_until=at + self.lease,
                            amends=row.get("amends"),
                            updated_at=at,
                        )
                    ).rowcount
                )
            except IntegrityError:
                savepoint.rollback()
                return -1

    def _attach_documents(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Load each delivery's document and its containers (mail, zip) in as few queries as possible."""
        docs: dict[str, Document] = {}
        wanted = {r["document_sha256"] for r in rows if r["document_sha256"]}
        asked: set[str] = set()  # a parent the ledger does not hold is asked for once, not forever
        while wanted:
            asked |= wanted
            for rec in conn.execute(
                sa.select(t.documents).where(t.documents.c.sha256.in_(list(wanted)))
            ).mappings():
                docs[rec["sha256"]] = document_from_row(rec)
            wanted = {
                d.parent_sha256 for d in docs.values() if d.parent_sha256 and d.parent_sha256 not in docs
            } - asked
        # Files that belong to an invoice's own document (the XML and PDF beside a platform's OFD).
        primaries = [r["document_sha256"] for r in rows if r["document_sha256"]]
        children: dict[str, list[Document]] = {}
        if primaries:
            for rec in conn.execute(
                sa.select(t.documents).where(t.documents.c.parent_sha256.in_(primaries))
            ).mappings():
                children.setdefault(rec["parent_sha256"], []).append(document_from_row(rec))
        for row in rows:
            chain: list[Document] = []
            sha = row["document_sha256"]
            while sha and sha in docs and docs[sha] not in chain:
                chain.append(docs[sha])
                sha = docs[sha].parent_sha256
            # The invoice's own document first, then the files under it, then its containers.
            own = children.get(row["document_sha256"] or "", [])
            if chain and not _is_container(chain[0]):
                chain[1:1] = own
            row["documents"] = chain

    def _attach_invoices(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Each delivery's invoice: as this process's intake validated it (once per version), else the
        stored JSON of its version, validated when the request is made."""
        missing: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            invoice = self.intake.take_parsed(row["identity"], row["content_hash"])
            if invoice is None:
                missing.setdefault(row["version_id"], []).append(row)
            else:
                row["invoice"] = invoice
        if missing:
            v = t.invoice_versions
            for version in (
                conn.execute(
                    sa.select(
                        v.c.id,
                        v.c.invoice_json,
                        v.c.identity,
                        v.c.content_hash,
                        v.c.kind,
                        v.c.number,
                        v.c.code,
                        v.c.status,
                        v.c.issue_date,
                        v.c.gross,
                        v.c.currency,
                        v.c.seller_tax_id,
                        v.c.buyer_tax_id,
                    ).where(self.ledger.among(v.c.id, list(missing)))
                )
                .mappings()
                .all()
            ):
                for row in missing[version["id"]]:
                    row["invoice_json"] = version["invoice_json"]
                    row["version"] = version

    def _finish_now(
        self, conn: Connection, row: dict[str, Any], state: str, detail: str, duplicate_of: int | None = None
    ) -> None:
        conn.execute(
            t.deliveries.update()
            .where(t.deliveries.c.id == row["id"])
            .values(state=state, updated_at=now(), last_error=None, duplicate_of=duplicate_of)
        )

    # -----------------------------------------------------------------------------------------------
    def _request(self, destination: str, row: dict[str, Any]) -> DeliveryRequest:
        """The sink's request. An invoice read from the ledger is validated from its JSON only when the
        sink asks for ``event`` or ``invoice``: a sink that reads ``summary`` (from the version's
        columns) never pays for it."""
        invoice = row.pop("invoice", None)  # each request gets an invoice object of its own
        if invoice is None and row.get("invoice_json") is None:
            with self.ledger.engine.connect() as conn:
                self._attach_invoices(conn, [row])
            invoice = row.pop("invoice", None)
        changed = row["type"] == "invoice.status_changed" and bool(row.get("status"))
        stored_json = row.get("invoice_json") if invoice is None else None

        def load_event() -> Event:
            nonlocal invoice
            if invoice is None:
                invoice = Invoice.model_validate_json(stored_json)  # type: ignore[arg-type]
            if changed:
                # The stored version carries the status it was first seen with; the event, the new one.
                invoice.status = InvoiceStatus(row["status"])
            return Event(
                id=row["event_id"],
                type=row["type"],
                source=row["source"],
                identity=row["identity"],
                content_hash=row["content_hash"],
                invoice=invoice,
                document_sha256=row["document_sha256"],
                trace_id=row["trace_id"],
                received_at=row["received_at"],
            )

        version = row.get("version")
        summary = None
        if invoice is None and version is not None:
            # The event's status: the version's column holds the latest (a later red letter's).
            summary = InvoiceSummary.from_columns(version, status=row.get("status"))
        return DeliveryRequest(
            event=None if summary is not None else load_event(),
            destination=destination,
            idempotency_key=row["idem_key"],
            attempt=row["attempt"],
            documents=row.get("documents", []),
            amends=row.get("amends"),
            invoice_json=None if changed else stored_json,
            summary=summary,
            load_event=load_event if summary is not None else None,
        )

    def _context(self, destination: str, row: dict[str, Any]) -> _LogContext:
        return _LogContext(
            identity=row["identity"],
            content_hash=row["content_hash"],
            connector=destination,
            attempt=row["attempt"],
            trace_id=row["trace_id"],
            delivery_id=row["id"],
        )

    def _deliver(self, sink: Sink | None, destination: str, row: dict[str, Any]) -> Outcome:
        started = now()
        with self._context(destination, row):
            if sink is None:
                error = PermanentError(f"no sink connector named {destination!r} is configured and enabled")
                return Outcome(row["id"], t.DEAD, t.INFLIGHT, row["attempt"], started, error=error)
            result: Receipt | BaseException
            try:
                result = sink.deliver(self._request(destination, row))
            except Exception as exc:
                result = exc
            return self._judge(destination, row, started, result)

    def _deliver_batch(self, sink: Sink, destination: str, rows: list[dict[str, Any]]) -> list[Outcome]:
        """One call for the whole batch, for sinks that offer ``deliver_batch(requests)`` (one receipt or
        error per request, in order); each result is then judged exactly as a single delivery's."""
        started = now()
        results: list[Receipt | BaseException]
        try:
            got = list(sink.deliver_batch([self._request(destination, row) for row in rows]))  # type: ignore[attr-defined]
            if len(got) != len(rows):
                raise PermanentError(
                    f"sink {destination!r} returned {len(got)} results for {len(rows)} requests "
                    "from deliver_batch"
                )
            results = got
        except Exception as exc:  # the whole batch failed the same way
            results = [exc] * len(rows)
        outcomes = []
        # A delivered request logs at info only: below that level its outcome needs no log context,
        # unless its receipt hands back documents to take in (their intake may warn).
        quiet = not log_enabled(logging.INFO)
        for row, result in zip(rows, results, strict=True):
            if (
                quiet
                and not isinstance(result, BaseException)
                and not (result is not None and result.outputs)
            ):
                outcomes.append(self._judge(destination, row, started, result))
                continue
            with self._context(destination, row):
                outcomes.append(self._judge(destination, row, started, result))
        return outcomes

    def _judge(
        self, destination: str, row: dict[str, Any], started: datetime, result: Receipt | BaseException | None
    ) -> Outcome:
        """Turn a sink's answer into an outcome. Only here are retry and dead letter decided."""
        attempt = row["attempt"]
        if isinstance(result, TransientError):
            exc = result
            policy = self.config.retry_for(route_named(self.config, row["route"]), destination)
            retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
            if attempt >= policy.max_attempts:
                log.warning("delivery_dead", reason="retries exhausted", error=str(exc), attempts=attempt)
                return Outcome(
                    row["id"],
                    t.DEAD,
                    t.INFLIGHT,
                    attempt,
                    started,
                    error=exc,
                    retry_after=retry_after,
                    detail=f"retries exhausted after {attempt} attempts",
                )
            delay = backoff(policy, attempt, retry_after)
            log.info("delivery_retrying", error=str(exc), delay=round(delay, 3))
            return Outcome(
                row["id"],
                t.RETRYING,
                t.INFLIGHT,
                attempt,
                started,
                error=exc,
                next_attempt_at=now() + timedelta(seconds=delay),
                retry_after=retry_after,
            )
        if isinstance(result, HubError):
            log.warning("delivery_dead", error=str(result), error_class=type(result).__name__)
            return Outcome(row["id"], t.DEAD, t.INFLIGHT, attempt, started, error=result)
        if isinstance(result, BaseException):  # a crashing plugin fails this delivery, never the hub
            log.error("delivery_sink_crashed", error=f"{type(result).__name__}: {result}")
            return Outcome(
                row["id"],
                t.DEAD,
                t.INFLIGHT,
                attempt,
                started,
                error=result,
                detail=f"sink {destination!r} crashed",
            )
        receipt = result if result is not None else Receipt()
        follow_up = [self.intake.prepare(item, destination) for item in receipt.outputs]
        if log_enabled(logging.INFO):
            log.info("delivery_delivered", remote_ref=receipt.remote_ref, amends=row.get("amends"))
        return Outcome(
            row["id"], t.DELIVERED, t.INFLIGHT, attempt, started, receipt=receipt, follow_up=follow_up
        )

    # -----------------------------------------------------------------------------------------------
    def _record_until_done(self, outcomes: list[Outcome]) -> None:
        """Record the outcomes, waiting out a ledger outage (a database restart) for up to the claim
        lease: the sinks were already called, and re-running the message would leave these claims
        to expire and be delivered a second time. Past the lease another process may take them over,
        so the error goes up and the message is redelivered."""
        deadline = time.monotonic() + self.lease.total_seconds()
        delay = 0.1
        while True:
            try:
                self._record(outcomes)
                return
            except LedgerError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("record_waiting_for_ledger", error=str(exc), retry_in=delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _record(self, outcomes: list[Outcome]) -> None:
        at = now()
        d = t.deliveries
        # The rows are made before the write transaction (the other threads wait for it) and only
        # those of claims still ours are written.
        planned: dict[int, tuple[dict[str, Any], dict[str, Any], tuple[int, str | None, str, str | None]]]
        planned = {}
        for oc in outcomes:
            err = oc.error
            receipt = oc.receipt if oc.state == t.DELIVERED else None
            detail = oc.detail
            if oc.state == t.RETRYING and oc.next_attempt_at:
                detail = f"next attempt at {oc.next_attempt_at.isoformat(timespec='seconds')}"
            elif receipt is not None and receipt.remote_ref:
                detail = f"remote ref {receipt.remote_ref}"
            planned[oc.delivery_id] = (
                {
                    "id": oc.delivery_id,
                    "state": oc.state,
                    "updated_at": at,
                    "lease_until": None,
                    "remote_ref": receipt.remote_ref if receipt else None,
                    "receipt": dumps(receipt.detail) if receipt and receipt.detail else None,
                    "last_error": _describe(err) if oc.state != t.DELIVERED else None,
                    "next_attempt_at": oc.next_attempt_at if oc.state == t.RETRYING else None,
                    "published_at": None,
                },
                {
                    "delivery_id": oc.delivery_id,
                    "number": oc.attempt,
                    "started_at": oc.started_at,
                    "finished_at": at,
                    "outcome": oc.state,
                    "error_class": type(err).__name__ if err else None,
                    "error_message": str(err) if err else None,
                    "remote_status": getattr(err, "remote_status", None),
                    "remote_body": _clip(getattr(err, "remote_body", None)),
                    "retry_after": None if oc.retry_after is None else str(oc.retry_after),
                },
                (oc.delivery_id, oc.from_state, oc.state, detail),
            )
        with self.ledger.begin() as conn:
            # Only our own claims: a retried record after an unclear commit, or a claim whose lease ran
            # out and was taken over, changes nothing. (Row locks on PostgreSQL; SQLite's writer holds
            # the database from BEGIN IMMEDIATE on.)
            # By id alone, the state checked here (with it, SQLite read the state index instead).
            query = sa.select(d.c.id, d.c.attempts, d.c.state).where(
                self.ledger.among(d.c.id, [oc.delivery_id for oc in outcomes])
            )
            if self.ledger.dialect == "postgresql":
                query = query.with_for_update()
            current = {i: a for i, a, state in conn.execute(query).all() if state == t.INFLIGHT}
            owned = [oc for oc in outcomes if current.get(oc.delivery_id) == oc.attempt]
            owned_ids = {oc.delivery_id for oc in owned}
            for oc in outcomes:
                if oc.delivery_id not in owned_ids:
                    log.warning("record_claim_lost", delivery_id=oc.delivery_id, outcome=oc.state)
            if not owned:
                return
            updates = [planned[oc.delivery_id][0] for oc in owned]
            attempts_rows = [planned[oc.delivery_id][1] for oc in owned]
            transitions = [planned[oc.delivery_id][2] for oc in owned]
            self.ledger.update_many(conn, d, updates)
            self.ledger.insert_many(conn, t.attempts, attempts_rows)
            self.ledger.transition(conn, transitions, at)
            for oc in owned:
                if oc.state == t.DEAD and oc.error is not None:
                    row = conn.execute(sa.select(d).where(d.c.id == oc.delivery_id)).mappings().one()
                    self._dead(
                        conn,
                        dict(row),
                        row["destination"],
                        oc.error,
                        oc.attempt,
                        detail=oc.detail,
                        update=False,
                    )
                if oc.follow_up:
                    written = self.intake.write(conn, oc.follow_up)
                    oc.follow_up[0]._publish = written.publish  # type: ignore[attr-defined]
        for oc in owned:
            if oc.state == t.DELIVERED:
                self.stats.delivered += 1
            elif oc.state == t.RETRYING:
                self.stats.retried += 1
            elif oc.state == t.DEAD:
                self.stats.dead += 1

    def _dead(
        self,
        conn: Connection,
        row: dict[str, Any],
        destination: str,
        error: BaseException,
        attempts: int,
        *,
        detail: str | None = None,
        update: bool = True,
    ) -> None:
        at = now()
        if update:
            conn.execute(
                t.deliveries.update()
                .where(t.deliveries.c.id == row["id"])
                .values(state=t.DEAD, updated_at=at, last_error=_describe(error))
            )
        event = conn.execute(sa.select(t.events).where(t.events.c.id == row["event_id"])).mappings().one()
        version, number = conn.execute(
            sa.select(t.invoice_versions.c.invoice_json, t.invoice_versions.c.number).where(
                t.invoice_versions.c.id == event["version_id"]
            )
        ).one()
        context = dict(getattr(error, "context", {}) or {})
        if detail:
            context["reason"] = detail
        for key in ("remote_status", "remote_body", "code"):
            value = getattr(error, key, None)
            if value is not None:
                context[key] = _clip(value) if isinstance(value, str) else value
        # Replaying a delivery reopens the same letter rather than piling up new ones.
        existing = conn.execute(
            sa.select(t.dead_letters.c.id).where(t.dead_letters.c.delivery_id == row["id"])
        ).scalar()
        values = {
            "stage": "delivery",
            "delivery_id": row["id"],
            "destination": destination,
            "source": event["source"],
            "identity": row["identity"],
            "content_hash": row["content_hash"],
            "event_id": row["event_id"],
            "invoice_json": version,
            "number": number,
            "document_sha256": event["document_sha256"],
            "error_class": type(error).__name__,
            "message": str(error) or type(error).__name__,
            "traceback": "".join(traceback.format_exception(error)),
            "detail": dumps(context) if context else None,
            "attempts": attempts,
            "state": "open",
            "updated_at": at,
        }
        if existing:
            conn.execute(t.dead_letters.update().where(t.dead_letters.c.id == existing).values(**values))
        else:
            conn.execute(t.dead_letters.insert().values(created_at=at, **values))

    def _notify(self, destination: str, oc: Outcome) -> None:
        for observer in self.observers:
            fn = getattr(observer, "on_delivery", None)
            if fn is None:
                continue
            try:
                fn(delivery_id=oc.delivery_id, destination=destination, state=oc.state, error=oc.error)
            except Exception as exc:
                log.warning("observer_failed", observer=type(observer).__name__, error=str(exc))


class _LogContext:
    """Bind a delivery's fields to the log context for a block, then restore exactly what was there
    (structlog's ``bound_contextvars`` reads the whole context first: a cost per delivery)."""

    __slots__ = ("fields", "tokens")

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __enter__(self) -> None:
        self.tokens = bind_contextvars(**self.fields)

    def __exit__(self, *exc: object) -> None:
        reset_contextvars(**self.tokens)


def _is_container(doc: Document) -> bool:
    """Mail and zip documents hold other invoices' files: their children are not this invoice's."""
    name = (doc.filename or "").lower()
    return doc.media_type in ("message/rfc822", "application/zip") or name.endswith((".eml", ".zip"))


def _describe(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


def _clip(value: str | None, limit: int = 4000) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[:limit] + f"... ({len(value) - limit} more characters)"
