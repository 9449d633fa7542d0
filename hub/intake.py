"""Intake: documents in, invoice versions and deliveries out, in one ledger transaction.

``prepare()`` does the slow, side-effect-free part (parse, validate, hash) outside any transaction;
``write()`` records the result: documents, versions, events and one delivery per routed destination,
or a dead letter with the raw document for anything that could not be read or failed validation.
The caller publishes the returned delivery ids after the commit (the ledger is the outbox).
"""

from __future__ import annotations

import threading
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from hub.canonical import CANONICAL_VERSION, content_hash
from hub.config import HubConfig, Route
from hub.connectors import Incoming, IntakeOutcome, Parser
from hub.errors import HubError, ParseError, Problem
from hub.ledger import Ledger, dumps, now
from hub.ledger import schema as t
from hub.models import Document, Invoice, new_id
from hub.router import destinations_for
from hub.validation import Rule, builtin_rules, ensure_valid

log = structlog.get_logger()

#: How deep containers (mail → zip → zip → file) may nest before intake stops unpacking.
MAX_CONTAINER_DEPTH = 5

#: How many just-validated invoices intake keeps for this process's workers (see ``Intake.take_parsed``).
PARSED_KEPT = 8192


@dataclass
class Failure:
    """Something intake could not turn into a valid invoice: it becomes a dead letter."""

    error: BaseException
    document: Document | None
    invoice: Invoice | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Accepted:
    invoice: Invoice
    content_hash: str
    document: Document | None
    warnings: list[Problem]
    #: The version row as ``write`` inserts it when the version is new, and the destinations of an
    #: ``invoice.received`` event: made in ``prepare``, outside the ledger's write transaction, where
    #: the other threads wait for every microsecond spent (``write`` makes them if missing).
    row: dict[str, Any] | None = None
    targets: list[tuple[Route, str]] | None = None

    def plan(self, config: HubConfig, source: str) -> None:
        inv = self.invoice
        self.row = {
            "identity": self.identity,
            "content_hash": self.content_hash,
            "canonical_version": CANONICAL_VERSION,
            "kind": inv.kind.value,
            "number": inv.number,
            "code": inv.code,
            "status": inv.status.value,
            "issue_date": inv.issue_date.isoformat(),
            "seller_tax_id": inv.seller.tax_id,
            "buyer_tax_id": inv.buyer.tax_id,
            "gross": format(inv.totals.gross, "f"),
            "currency": inv.currency,
            "invoice_json": inv.model_dump_json(),
            "document_sha256": self.document.sha256 if self.document else None,
            "source": source,
            "warnings": dumps([p.__dict__ for p in self.warnings]) if self.warnings else None,
        }
        self.targets = destinations_for(config, source, "invoice.received", inv)

    @cached_property
    def identity(self) -> str:
        # Asked several times per invoice inside the write transaction, where others wait for it.
        return self.invoice.identity

    @property
    def status(self) -> str:
        return self.invoice.status.value


@dataclass
class Prepared:
    incoming: Incoming
    source: str
    documents: list[Document] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    trace_id: str = field(default_factory=new_id)


@dataclass
class Written:
    outcomes: list[IntakeOutcome]
    #: destination → delivery ids to publish after the commit
    publish: dict[str, list[int]]
    events: list[dict[str, Any]]
    #: the new versions' invoices as validated here, for ``Intake.keep_parsed`` after the commit
    parsed: dict[tuple[str, str], Invoice] = field(default_factory=dict)


class Intake:
    def __init__(
        self, config: HubConfig, ledger: Ledger, parsers: Sequence[Parser], rules: Sequence[Rule]
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.parsers = list(parsers)
        self.rules: list[Rule] = [*builtin_rules(), *rules]
        # New versions as validated here, by (identity, content hash), for a worker of this process to
        # take instead of reading the stored JSON again. Bounded (oldest out first): a run whose workers
        # live elsewhere (`hub run --workers N`) or fall behind just reads the JSON, as after a restart.
        self._parsed: dict[tuple[str, str], Invoice] = {}
        self._parsed_lock = threading.Lock()
        #: Off where no worker of this process takes them (the supervisor of `hub run --workers N`).
        self.keep_for_workers = True

    # -----------------------------------------------------------------------------------------------
    # Parse and validate (no database)
    # -----------------------------------------------------------------------------------------------
    def prepare(self, incoming: Incoming, source: str) -> Prepared:
        prepared = Prepared(incoming, source)
        for doc in incoming.documents:
            if incoming.invoices:
                # The source already holds the invoices as data (an ERP row, a platform's issued invoice):
                # its documents are kept with them, not parsed into more versions of the same invoices.
                prepared.documents.append(doc)
            else:
                self._read_document(doc, prepared, depth=0)
        primaries = {doc.sha256 for _, doc in incoming.invoices if doc is not None}
        if len(primaries) == 1:
            # One invoice with several files (a platform's OFD, XML and PDF): the other files hang under
            # the invoice's document, so sinks (the archive) receive all of them with the invoice.
            [primary] = primaries
            for doc in incoming.documents:
                if doc.sha256 != primary and doc.parent_sha256 is None:
                    doc.parent_sha256 = primary
        for _, invoice_doc in incoming.invoices:
            if invoice_doc is not None and invoice_doc not in prepared.documents:
                prepared.documents.append(invoice_doc)
        self._accept([(invoice, doc, prepared) for invoice, doc in incoming.invoices])
        return prepared

    def prepare_many(self, items: Sequence[Incoming], source: str) -> list[Prepared]:
        """``[prepare(item, source) for item in items]``, with the same result, done one step at a
        time across the batch: every item's parser, then every parse, then the rules of every invoice,
        then every hash, then every version row. Each step repeats the same code hundreds of times in
        a row, which the processor runs in about a third less time than one invoice through every
        step and then the next (docs/benchmarks.md, stop 21). Items other than a single document to parse
        (several documents, invoices given as data) go through ``prepare`` as they come."""
        out: list[Prepared] = []
        plain: list[tuple[Prepared, Document]] = []
        for incoming in items:
            if len(incoming.documents) == 1 and not incoming.invoices:
                prepared = Prepared(incoming, source)
                prepared.documents.append(incoming.documents[0])
                plain.append((prepared, incoming.documents[0]))
            else:
                prepared = self.prepare(incoming, source)
            out.append(prepared)
        chosen = [(prepared, doc, self._parser_for(doc, prepared)) for prepared, doc in plain]
        found: list[tuple[Invoice, Document | None, Prepared]] = []
        for prepared, doc, parser in chosen:
            if parser is not None:
                invoices = self._parse(doc, prepared, parser, depth=0)
                found.extend((invoice, doc, prepared) for invoice in invoices)
        self._accept(found)
        return out

    def _read_document(self, doc: Document, prepared: Prepared, depth: int) -> None:
        prepared.documents.append(doc)
        parser = self._parser_for(doc, prepared)
        if parser is not None:
            self._accept([(invoice, doc, prepared) for invoice in self._parse(doc, prepared, parser, depth)])

    def _parser_for(self, doc: Document, prepared: Prepared) -> Parser | None:
        """The first parser that claims ``doc``; None (and a failure of ``prepared``) when none does."""
        parser = next((p for p in self.parsers if self._claims(p, doc)), None)
        if parser is None:
            prepared.failures.append(
                Failure(
                    ParseError(
                        f"no parser reads this document (media type {doc.media_type}, "
                        f"file name {doc.filename or 'none'}); installed parsers: "
                        + (", ".join(p.name or type(p).__name__ for p in self.parsers) or "none"),
                        document=doc.sha256,
                    ),
                    doc,
                )
            )
        return parser

    def _parse(self, doc: Document, prepared: Prepared, parser: Parser, depth: int) -> list[Invoice]:
        """The invoices ``parser`` reads in ``doc``, after reading the documents it contains (each as
        ``_read_document`` does); what fails becomes a failure of ``prepared``."""
        try:
            result = parser.parse(doc)
        except HubError as exc:
            prepared.failures.append(Failure(exc, doc))
            return []
        except Exception as exc:  # a crashing parser is a failure of this document, never of the hub
            error = ParseError(
                f"parser {parser.name!r} crashed: {type(exc).__name__}: {exc}", parser=parser.name
            )
            error.__cause__ = exc
            prepared.failures.append(Failure(error, doc))
            return []
        for child in result.children:
            if depth + 1 > MAX_CONTAINER_DEPTH:
                prepared.failures.append(
                    Failure(ParseError(f"containers nested deeper than {MAX_CONTAINER_DEPTH} levels"), child)
                )
                continue
            self._read_document(child, prepared, depth + 1)
        if not result.invoices and not result.children:
            prepared.failures.append(
                Failure(ParseError(f"parser {parser.name!r} found no invoice in this document"), doc)
            )
        return list(result.invoices)

    @staticmethod
    def _claims(parser: Parser, doc: Document) -> bool:
        try:
            return bool(parser.claims(doc))
        except Exception as exc:
            log.warning("parser_claims_failed", parser=parser.name, error=f"{type(exc).__name__}: {exc}")
            return False

    def _accept(self, found: Sequence[tuple[Invoice, Document | None, Prepared]]) -> None:
        """Validate, hash and plan invoices found in documents (in this order, a step at a time):
        each valid one is accepted by its item, each invalid one is a failure of it."""
        valid: list[tuple[Invoice, Document | None, Prepared, list[Problem]]] = []
        for invoice, doc, prepared in found:
            try:
                warnings = ensure_valid(invoice, self.rules)
            except HubError as exc:
                prepared.failures.append(Failure(exc, doc, invoice, list(getattr(exc, "problems", []))))
                continue
            valid.append((invoice, doc, prepared, warnings))
        hashes = [content_hash(invoice) for invoice, _, _, _ in valid]
        for (invoice, doc, prepared, warnings), chash in zip(valid, hashes, strict=True):
            accepted = Accepted(invoice, chash, doc, warnings)
            accepted.plan(self.config, prepared.source)
            prepared.accepted.append(accepted)

    def take_parsed(self, identity: str, chash: str) -> Invoice | None:
        """The invoice of version (identity, content hash) as intake validated it in this process, once:
        the caller owns it (a second destination of the same version reads the stored JSON)."""
        return self._parsed.pop((identity, chash), None)

    def keep_parsed(self, written: Written) -> None:
        """Offer the new versions of a committed ``write`` to this process's workers (``take_parsed``).
        Only after the commit: a rolled-back write must leave nothing a worker could take."""
        if not written.parsed or not written.publish or not self.keep_for_workers:
            return
        with self._parsed_lock:
            self._parsed.update(written.parsed)
            excess = len(self._parsed) - PARSED_KEPT
            if excess > 0:
                for key in list(self._parsed)[:excess]:
                    self._parsed.pop(key, None)

    # -----------------------------------------------------------------------------------------------
    # Record (one transaction for a batch of prepared items)
    # -----------------------------------------------------------------------------------------------
    def write(self, conn: Connection, batch: Sequence[Prepared]) -> Written:
        at = now()
        self.ledger.put_documents(conn, [d for p in batch for d in p.documents])
        identities = {a.identity for p in batch for a in p.accepted}
        known: dict[tuple[str, str], dict[str, Any]] = {}
        if identities:
            for row in conn.execute(
                sa.select(
                    t.invoice_versions.c.id,
                    t.invoice_versions.c.identity,
                    t.invoice_versions.c.content_hash,
                    t.invoice_versions.c.status,
                ).where(self.ledger.among(t.invoice_versions.c.identity, list(identities)))
            ).mappings():
                known[(row["identity"], row["content_hash"])] = dict(row)

        known_identities = {identity for identity, _ in known}
        # Identities with a version recorded before this batch: only their deliveries can already hold
        # one of this batch's keys (a key is a content hash, which fixes the identity, or a hash and a
        # status), so only they are looked up in ``_plan_deliveries``.
        recorded_before = set(known_identities)
        # First pass: which versions are new (once each, even when a batch holds one twice).
        new_rows: dict[tuple[str, str], dict[str, Any]] = {}
        for prepared in batch:
            for acc in prepared.accepted:
                key = (acc.identity, acc.content_hash)
                if key in known or key in new_rows:
                    continue
                if acc.row is None or acc.row["source"] != prepared.source:
                    acc.plan(self.config, prepared.source)
                new_rows[key] = {**acc.row, "received_at": at}  # type: ignore[dict-item]
        if new_rows:
            ids = self.ledger.insert_many_ids(conn, t.invoice_versions, list(new_rows.values()))
            fresh: dict[tuple[str, str], dict[str, Any]] = {
                key: {"id": version_id, "status": row["status"], "new": True}
                for (key, row), version_id in zip(new_rows.items(), ids, strict=True)
            }
        else:
            fresh = {}  # nothing new in this batch

        outcomes: list[IntakeOutcome] = []
        events: list[dict[str, Any]] = []
        kept: dict[tuple[str, str], Invoice] = {}
        planned: list[tuple[dict[str, Any], list[tuple[Route, str]]]] = []
        for prepared in batch:
            outcome = IntakeOutcome()
            for acc in prepared.accepted:
                chash, status = acc.content_hash, acc.status
                identity = acc.identity
                key = (identity, chash)
                version = fresh.get(key)
                if version is not None and version.pop("new", False):
                    if identity in known_identities:
                        outcome.amendments += 1
                    known_identities.add(identity)
                    known[key] = version
                    kept[key] = acc.invoice
                    event_type = "invoice.received"
                else:
                    version = known[key]
                    if version["status"] != status:
                        event_type = "invoice.status_changed"
                        conn.execute(
                            t.invoice_versions.update()
                            .where(t.invoice_versions.c.id == version["id"])
                            .values(status=status)
                        )
                        version["status"] = status
                    else:
                        event_type = "invoice.received"
                        outcome.duplicates += 1
                event = {
                    "id": new_id(),
                    "type": event_type,
                    "source": prepared.source,
                    "identity": identity,
                    "content_hash": chash,
                    "version_id": version["id"],
                    "status": status,
                    "document_sha256": acc.document.sha256 if acc.document else None,
                    "trace_id": prepared.trace_id,
                    "received_at": at,
                }
                events.append(event)
                if event_type == "invoice.received" and acc.targets is not None:
                    targets = acc.targets
                else:
                    targets = destinations_for(self.config, prepared.source, event_type, acc.invoice)
                planned.append((event, targets))
                outcome.accepted += 1
                outcome.identities.append(identity)
            for failure in prepared.failures:
                self.dead_letter_intake(conn, failure, prepared.source, at)
                outcome.dead_letters += 1
            outcomes.append(outcome)
        if events:
            self.ledger.insert_many(conn, t.events, events)
        publish = self._plan_deliveries(conn, planned, at, recorded_before)
        return Written(outcomes, publish, events, kept)

    def _plan_deliveries(
        self,
        conn: Connection,
        planned: list[tuple[dict[str, Any], list[tuple[Route, str]]]],
        at: datetime,
        recorded_before: set[str],
    ) -> dict[str, list[int]]:
        """One delivery per destination; a key already live there is recorded as a skipped duplicate.
        ``recorded_before``: the identities that had a version before this batch, the only ones whose
        deliveries can hold one of its keys."""
        rows: list[dict[str, Any]] = []
        for event, targets in planned:
            idem = event["content_hash"]
            if event["type"] == "invoice.status_changed":
                idem = f"{event['content_hash']}:{event['status']}"
            for route, destination in targets:
                rows.append(
                    {
                        "event_id": event["id"],
                        "destination": destination,
                        "route": route.name,
                        "idem_key": idem,
                        "identity": event["identity"],
                        "content_hash": event["content_hash"],
                        "state": t.PENDING,
                        "attempts": 0,
                        "created_at": at,
                        "updated_at": at,
                        "published_at": at,
                    }
                )
        if not rows:
            return {}
        live: dict[tuple[str, str], int] = {}
        wanted = {(r["destination"], r["idem_key"]) for r in rows if r["identity"] in recorded_before}
        looked_up = list({r["identity"] for r in rows} & recorded_before)
        destinations = list({destination for destination, _ in wanted})
        live_states = (t.PENDING, t.INFLIGHT, t.RETRYING, t.DELIVERED)
        for chunk_start in range(0, len(looked_up), 500) if wanted else ():
            # By destination and identity (ix_deliveries_dest_identity): an identity has few deliveries.
            # There is no index by key: a content hash is a random key, and an index of them dirtied a
            # page of its own for every delivery once the ledger had grown. A new version's keys need
            # no query at all: no delivery can hold them yet.
            for live_row in conn.execute(
                sa.select(
                    t.deliveries.c.id,
                    t.deliveries.c.destination,
                    t.deliveries.c.idem_key,
                    t.deliveries.c.state,
                ).where(
                    t.deliveries.c.destination.in_(destinations),
                    self.ledger.among(t.deliveries.c.identity, looked_up[chunk_start : chunk_start + 500]),
                )
            ):
                k = (live_row.destination, live_row.idem_key)
                if live_row.state in live_states and k in wanted:
                    live[k] = min(live.get(k, live_row.id), live_row.id)  # the first delivery of the key
        skipped: list[tuple[dict[str, Any], int | None]] = []
        fresh: list[dict[str, Any]] = []
        seen_in_batch: set[tuple[str, str]] = set()
        for row in rows:
            k = (row["destination"], row["idem_key"])
            if k in live or k in seen_in_batch:
                row["state"] = t.SKIPPED
                row["duplicate_of"] = live.get(k)
                row["published_at"] = None
                skipped.append((row, live.get(k)))
            else:
                seen_in_batch.add(k)
                fresh.append(row)
        publish: dict[str, list[int]] = defaultdict(list)
        transitions: list[tuple[int, str | None, str, str | None]] = []
        for group, state in ((fresh, t.PENDING), ([r for r, _ in skipped], t.SKIPPED)):
            if not group:
                continue
            for row in group:
                row.setdefault("duplicate_of", None)
            ids = self.ledger.insert_many_ids(conn, t.deliveries, group)
            for row, delivery_id in zip(group, ids, strict=True):
                if state == t.PENDING:
                    publish[row["destination"]].append(delivery_id)
                    transitions.append((delivery_id, None, t.PENDING, None))
                else:
                    detail = (
                        f"duplicate of delivery {row['duplicate_of']}" if row["duplicate_of"] else "duplicate"
                    )
                    transitions.append((delivery_id, None, t.SKIPPED, detail))
        # Keys seen twice in one batch point at the first delivery of that key.
        self.ledger.transition(conn, transitions, at)
        return dict(publish)

    def dead_letter_intake(self, conn: Connection, failure: Failure, source: str, at: datetime) -> int:
        """Record a dead letter, once: the same document failing the same way again (a mail re-read after
        a crash, a broken file sent twice) finds its open letter and adds none."""
        error = failure.error
        inv = failure.invoice
        if failure.document is not None:
            existing = conn.execute(
                sa.select(t.dead_letters.c.id).where(
                    t.dead_letters.c.document_sha256 == failure.document.sha256,
                    t.dead_letters.c.stage == "intake",
                    t.dead_letters.c.state == "open",
                    t.dead_letters.c.message == str(error),
                )
            ).scalar()
            if existing is not None:
                conn.execute(
                    t.dead_letters.update().where(t.dead_letters.c.id == existing).values(updated_at=at)
                )
                return int(existing)
        detail: dict[str, Any] = dict(getattr(error, "context", {}) or {})
        if failure.problems:
            detail["problems"] = [p.__dict__ for p in failure.problems]
        return int(
            conn.execute(
                t.dead_letters.insert().returning(t.dead_letters.c.id),
                {
                    "stage": "intake",
                    "source": source,
                    "identity": inv.identity if inv else None,
                    "content_hash": content_hash(inv) if inv else None,
                    "invoice_json": inv.model_dump_json() if inv else None,
                    "document_sha256": failure.document.sha256 if failure.document else None,
                    "number": inv.number if inv else None,
                    "error_class": type(error).__name__,
                    "message": str(error),
                    "traceback": "".join(traceback.format_exception(error)),
                    "detail": dumps(detail) if detail else None,
                    "attempts": 0,
                    "state": "open",
                    "created_at": at,
                    "updated_at": at,
                },
            ).scalar_one()
        )


def record_batch(ledger: Ledger, intake: Intake, prepared: Sequence[Prepared]) -> Written:
    """Record prepared items in one transaction, with the last checkpoint among them (``hub run``'s
    source thread, or its intake helper process)."""
    with ledger.begin() as conn:
        written = intake.write(conn, prepared)
        checkpoints = [p.incoming.checkpoint for p in prepared if p.incoming.checkpoint is not None]
        if checkpoints:
            ledger.set_checkpoint(conn, prepared[0].source, checkpoints[-1])
    return written
