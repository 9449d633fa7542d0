"""The hub: wires config, plugins, ledger, bus, intake and workers, and runs them.

``Hub.run()`` starts one thread per source (poll → intake in batches → commit back to the source),
``worker.threads`` consumer threads, and the relay (the outbox: republishes pending deliveries that
were never published or whose message was lost, due retries, and claims whose lease ran out).
SIGINT/SIGTERM set the stop flag: sources stop polling, workers finish the batch in hand, connectors
are closed. ``until_idle`` returns once every source has been read empty and no delivery is open.
"""

from __future__ import annotations

import fcntl
import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from hub.bus import Bus, BusMessage
from hub.config import LoadedConfig, validate_connectors
from hub.connectors import Connector, ConnectorContext, Incoming, IntakeOutcome, Inventory, Sink, Source
from hub.errors import HubError, LedgerError
from hub.intake import Intake, Prepared, record_batch
from hub.ledger import Ledger, now
from hub.ledger import schema as t
from hub.plugins import HubPlugins, build_plugins
from hub.preparer import Preparer
from hub.worker import Worker

log = structlog.get_logger()

#: A pending delivery whose message was published this long ago without being taken is republished.
REPUBLISH_AFTER = timedelta(seconds=30)
#: The same on a durable broker (RabbitMQ): a confirmed persistent message in a durable queue is not
#: lost, so republishing after 30 s would only copy a backlog (every pending delivery older than 30 s,
#: again and again) while the workers are behind. Deliveries whose publish failed are republished at
#: the next relay pass whatever this says (their ``published_at`` is cleared).
REPUBLISH_AFTER_DURABLE = timedelta(minutes=10)
#: Seconds between the SQLite ledger's WAL checkpoints by ``hub run`` (``Hub._checkpoint_loop``).
WAL_CHECKPOINT_INTERVAL = 0.2


#: A batch handed to the intake helper to record: the items, the helper's future, the batch's sequence
#: number.
_InFlight = tuple[list[Incoming], "Future[Any]", int]

#: What an invoice a source hands in as data (an ERP's row, a platform's) counts for in
#: ``worker.batch_bytes``: about the size of its JSON.
INVOICE_AS_DATA_BYTES = 2_000


def item_weight(item: Incoming) -> int:
    """How much of ``worker.batch_bytes`` an item takes: its documents' bytes, and
    ``INVOICE_AS_DATA_BYTES`` per invoice it carries as data. What a batch's invoices cost to parse,
    hold and write grows with their bytes much more than with the count of items: one file can hold
    one invoice or a hundred."""
    return sum(len(d.content) for d in item.documents) + INVOICE_AS_DATA_BYTES * len(item.invoices)


@dataclass
class RunStats:
    received: int = 0
    duplicates: int = 0
    amendments: int = 0
    intake_dead: int = 0
    started: float = field(default_factory=time.monotonic)


def tune_gc() -> None:
    """Garbage-collector settings for a long-running hub process. Invoices are trees without
    reference cycles (reference counting frees them), yet every object allocated counts towards
    CPython's cyclic collector, which by default runs every 700 allocations and walks the whole young
    generation: a third of the cost of validating an invoice. Freeze what start-up loaded (modules,
    plugins, config) out of the collector's view and run it less often. Once per process: objects
    frozen later (a second run in one process, as in tests) would keep any cyclic garbage forever.

    At that threshold the young generation's count (allocations less deallocations) seldom reaches
    it, so the cycles that do occur (SQLAlchemy's statements: a clone points at what it was cloned
    from) were collected almost never — ~1 KB per invoice, peak memory growing with the count. The
    run loop therefore collects every ``GC_INTERVAL`` seconds (``collect_if_due``)."""
    global _GC_TUNED
    if _GC_TUNED:
        return
    _GC_TUNED = True
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


_GC_TUNED = False

#: Seconds between the full collections a tuned process makes (~10-60 ms each at 3,000 invoices/s).
GC_INTERVAL = 5.0


def collect_if_due(last: float) -> float:
    """A full collection when ``GC_INTERVAL`` has passed since ``last`` (a ``time.monotonic()``), for a
    process whose collector ``tune_gc`` slowed down; returns the time of the last collection."""
    at = time.monotonic()
    if at - last < GC_INTERVAL:
        return last
    gc.collect()
    return at


class Hub:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        plugins: HubPlugins | None = None,
        extra_plugins: Iterable[tuple[str, object]] = (),
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        extra = list(extra_plugins)
        self.plugins = plugins or build_plugins(
            blocked=self.config.plugins.disabled, allowed=self.config.plugins.allow, extra=extra
        )
        self.settings = validate_connectors(loaded, self.plugins)
        self.data_dir = Path(self.config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.config.ledger)
        self.bus = Bus(self.config.bus, data_dir=self.data_dir)
        self.connectors: dict[str, Connector] = {}
        for name, settings in self.settings.items():
            cls = self.plugins.connector_type(self.config.connectors[name].type)
            context = ConnectorContext(
                name=name,
                data_dir=self.data_dir / "connectors" / name,
                load_document=self.ledger.get_document,
            )
            context.data_dir.mkdir(parents=True, exist_ok=True)
            self.connectors[name] = cls(settings, context)
        self.intake = Intake(self.config, self.ledger, self.plugins.parsers, self.plugins.rules)
        # The intake helper process has the plugins of the entry points (forked, or built again from
        # them and this config file): not for a hub given plugin objects in code (tests).
        self._preparer = None if self.plugins.in_code else Preparer(loaded, self.intake)
        self.worker = Worker(
            self.config,
            self.ledger,
            self.sinks,
            self.intake,
            publish=self._publish,
            observers=self.plugins.observers,
        )
        self.stop_event = threading.Event()
        self.stats = RunStats()
        self._source_idle: dict[str, bool] = {}
        self._lock_file: Any = None
        self._errors: list[str] = []

    # -----------------------------------------------------------------------------------------------
    @property
    def sinks(self) -> dict[str, Sink]:
        return {n: c for n, c in self.connectors.items() if isinstance(c, Sink)}

    @property
    def sources(self) -> dict[str, Source]:
        return {n: c for n, c in self.connectors.items() if isinstance(c, Source)}

    @property
    def inventories(self) -> dict[str, Inventory]:
        return {n: c for n, c in self.connectors.items() if isinstance(c, Inventory)}

    def destinations(self) -> list[str]:
        dests = {d for r in self.config.routes for d in r.to if d in self.connectors}
        return sorted(dests | set(self.sinks))

    def close(self) -> None:
        if self._preparer is not None:
            self._preparer.close()
        for name, conn in self.connectors.items():
            try:
                conn.close()
            except Exception as exc:
                log.warning("connector_close_failed", connector=name, error=str(exc))
        self.bus.close()
        self.ledger.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------------
    # Intake
    # -----------------------------------------------------------------------------------------------
    def _publish(self, batches: dict[str, list[int]]) -> None:
        try:
            self.bus.publish_many(batches)
        except HubError as exc:
            # The ledger has them as pending: the relay publishes them again when the bus is back.
            log.warning("publish_failed", error=str(exc), deliveries=sum(len(v) for v in batches.values()))
            try:
                self.ledger.mark_unpublished([i for ids in batches.values() for i in ids])
            except HubError as exc2:  # then the stale-message timeout brings them back
                log.warning("publish_unmark_failed", error=str(exc2))

    def ingest(self, items: Sequence[Incoming], source: str) -> list[IntakeOutcome]:
        """Parse, validate and record ``items`` in one transaction, then publish their deliveries."""
        return self.record(self.intake.prepare_many(items, source))

    def record(self, prepared: Sequence[Prepared]) -> list[IntakeOutcome]:
        written = record_batch(self.ledger, self.intake, prepared)
        self.intake.keep_parsed(written)
        self._recorded([p.source for p in prepared], written.outcomes, written.publish)
        return written.outcomes

    def _recorded(
        self, sources: list[str], outcomes: list[IntakeOutcome], publish: dict[str, list[int]]
    ) -> None:
        """After a batch's commit: publish its deliveries, count it, tell the observers."""
        self._publish(publish)
        for outcome in outcomes:
            self.stats.received += outcome.accepted
            self.stats.duplicates += outcome.duplicates
            self.stats.amendments += outcome.amendments
            self.stats.intake_dead += outcome.dead_letters
        for observer in self.plugins.observers:
            fn = getattr(observer, "on_intake", None)
            if fn is None:
                continue
            try:
                for source, outcome in zip(sources, outcomes, strict=True):
                    fn(source=source, outcome=outcome)
            except Exception as exc:
                log.warning("observer_failed", observer=type(observer).__name__, error=str(exc))

    # -----------------------------------------------------------------------------------------------
    # Relay (the outbox)
    # -----------------------------------------------------------------------------------------------
    def recover(self) -> int:
        """At start-up on SQLite (one process by design): claims of a dead process go back to pending."""
        if self.ledger.dialect != "sqlite":
            return 0
        d = t.deliveries
        with self.ledger.begin() as conn:
            ids = list(conn.execute(sa.select(d.c.id).where(d.c.state == t.INFLIGHT)).scalars())
            if ids:
                conn.execute(
                    d.update()
                    .where(d.c.id.in_(ids))
                    .values(state=t.PENDING, lease_until=None, published_at=None)
                )
                self.ledger.transition(
                    conn, [(i, t.INFLIGHT, t.PENDING, "recovered after a crash") for i in ids]
                )
        if ids:
            log.info("recovered_inflight", deliveries=len(ids))
        return len(ids)

    def relay_once(self, limit: int = 5000, *, startup: bool = False, everything: bool = False) -> int:
        """Publish what is due: never-published or stale pending, due retries, expired claims.

        ``startup`` on a bus without a broker (``memory://``, ``filesystem://``): whatever another
        process (``hub dlq replay``, ``hub ingest``) published to an in-process bus, or an earlier run's
        worker held when it died, went nowhere, so every pending delivery is published now; so it is
        with ``everything`` (a worker process died with messages in hand)."""
        d = t.deliveries
        at = now()
        with self.ledger.begin() as conn:
            expired = list(
                conn.execute(
                    self.ledger.locking(
                        sa.select(d.c.id).where(d.c.state == t.INFLIGHT, d.c.lease_until < at).limit(limit)
                    )
                ).scalars()
            )
            if expired:
                conn.execute(
                    d.update()
                    .where(d.c.id.in_(expired))
                    .values(state=t.PENDING, lease_until=None, published_at=None)
                )
                self.ledger.transition(
                    conn, [(i, t.INFLIGHT, t.PENDING, "claim lease expired") for i in expired]
                )
            stale = at - (REPUBLISH_AFTER if self.bus.is_memory else REPUBLISH_AFTER_DURABLE)
            if everything or (startup and not self.bus.is_amqp):
                stale = at
            due = conn.execute(
                self.ledger.locking(sa.select(d.c.id, d.c.destination))
                .where(
                    sa.or_(
                        sa.and_(
                            d.c.state == t.PENDING,
                            sa.or_(d.c.published_at.is_(None), d.c.published_at < stale),
                        ),
                        sa.and_(
                            d.c.state == t.RETRYING,
                            d.c.next_attempt_at <= at,
                            sa.or_(d.c.published_at.is_(None), d.c.published_at < stale),
                        ),
                    )
                )
                .order_by(d.c.id)
                .limit(limit)
            ).all()
            if due:
                conn.execute(d.update().where(d.c.id.in_([r.id for r in due])).values(published_at=at))
        batches: dict[str, list[int]] = {}
        for row in due:
            batches.setdefault(row.destination, []).append(row.id)
        self._publish(batches)
        return len(due)

    def republish_pending(self) -> int:
        """Publish every pending delivery and due retry again (copies are harmless: the claim decides)."""
        return self.relay_once(everything=True)

    def open_deliveries(self) -> int:
        d = t.deliveries
        with self.ledger.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).where(d.c.state.in_(t.OPEN_STATES))).scalar() or 0
            )

    def next_retry_at(self) -> Any:
        d = t.deliveries
        with self.ledger.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.min(d.c.next_attempt_at)).where(d.c.state == t.RETRYING)
            ).scalar()

    # -----------------------------------------------------------------------------------------------
    # Running
    # -----------------------------------------------------------------------------------------------
    def take_lock(self) -> None:
        """On SQLite, hold the data directory's lock (one ``hub run`` per ledger file; its worker
        processes run under it). Once per Hub."""
        if self.ledger.dialect != "sqlite" or self._lock_file is not None:
            return
        path = self.data_dir / "hub.lock"
        self._lock_file = path.open("a+")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubError(
                f"another `hub run` is using {self.data_dir} (the SQLite ledger is single-process; "
                "use PostgreSQL and RabbitMQ to run several)"
            ) from None
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def _source_loop(self, name: str, source: Source, batch_size: int) -> None:
        """Poll ``source`` and take in what it yields, batch by batch: ``batch_size`` items, or fewer
        that weigh ``worker.batch_bytes`` together (``item_weight``). With the intake helper process
        (``hub.preparer``) it prepares batch k+1 while this thread writes batch k; batches are written
        in the order polled, all by this thread. A pass ends once everything it read is written, so
        the next ``poll`` starts from the checkpoint of everything before it; an error ends the pass,
        and what was polled but not written is read again (never committed to the source)."""
        preparer = (
            self._preparer
            if self._preparer is not None and self._preparer.started and self._preparer.wanted(batch_size)
            else None
        )
        batch_bytes = self.config.worker.batch_bytes
        while not self.stop_event.is_set():
            got = 0
            try:
                checkpoint = self.ledger.get_checkpoint(name)
                batch: list[Incoming] = []
                weight = 0
                inflight: _InFlight | None = None
                for item in source.poll(checkpoint):
                    batch.append(item)
                    weight += item_weight(item)
                    if len(batch) >= batch_size or weight >= batch_bytes:
                        got += len(batch)
                        inflight = self._intake_step(name, source, batch, inflight, preparer)
                        batch = []
                        weight = 0
                    if self.stop_event.is_set():
                        break
                if batch:
                    got += len(batch)
                    inflight = self._intake_step(name, source, batch, inflight, preparer)
                if inflight is not None:
                    self._finish_step(name, source, inflight, preparer)
            except HubError as exc:
                log.warning("source_failed", connector=name, error=str(exc), error_class=type(exc).__name__)
                self._errors.append(f"{name}: {exc}")
            except Exception as exc:  # a crashing source plugin stops that source's poll, not the hub
                log.exception("source_crashed", connector=name, error=f"{type(exc).__name__}: {exc}")
                self._errors.append(f"{name}: {type(exc).__name__}: {exc}")
            self._source_idle[name] = got == 0
            if got == 0:
                self.stop_event.wait(source.poll_interval)

    def _intake_step(
        self,
        name: str,
        source: Source,
        batch: list[Incoming],
        inflight: _InFlight | None,
        preparer: Preparer | None,
    ) -> _InFlight | None:
        """Hand ``batch`` to the helper to record, then finish the batch before it; without the helper
        (while it starts, once it died, or for a batch it does not take) finish what is in flight,
        then prepare and write ``batch`` here."""
        submitted = None
        if preparer is not None:
            submitted = preparer.submit_record(name, batch, after=inflight[2] if inflight else None)
        if inflight is not None:
            self._finish_step(name, source, inflight, preparer)
        if submitted is None:
            self._intake_batch(name, source, batch)
            return None
        future, seq = submitted
        return (batch, future, seq)

    def _finish_step(self, name: str, source: Source, inflight: _InFlight, preparer: Preparer | None) -> None:
        batch, future, _seq = inflight
        assert preparer is not None
        done = preparer.recorded(future)
        if done is None:  # the helper died: this thread prepares and records the batch
            self._intake_batch(name, source, batch)
            return
        outcomes, publish = done
        self._recorded([name] * len(batch), outcomes, publish)
        self._commit_items(name, source, batch, outcomes)

    def _intake_batch(self, name: str, source: Source, batch: list[Incoming]) -> None:
        """Prepare and record ``batch`` in this thread, then commit its items to the source."""
        self._commit_items(name, source, batch, self.record(self.intake.prepare_many(batch, name)))

    @staticmethod
    def _commit_items(
        name: str, source: Source, batch: list[Incoming], outcomes: list[IntakeOutcome]
    ) -> None:
        """Tell the source each item's outcome, now that it is in the ledger."""
        for item, outcome in zip(batch, outcomes, strict=True):
            try:
                source.commit(item, outcome)
            except HubError as exc:
                log.warning("source_commit_failed", connector=name, key=item.key, error=str(exc))

    def _worker_loop(self, destinations: list[str]) -> None:
        def handle(msg: BusMessage) -> None:
            while True:
                try:
                    self.worker.handle(msg.destination, msg.delivery_ids)
                    return
                except LedgerError as exc:
                    # Keep the message: the ledger is the truth, so wait for it rather than guess.
                    log.warning("worker_ledger_unavailable", error=str(exc))
                    if self.stop_event.wait(1.0):
                        raise

        self.bus.consume(destinations, handle, self.stop_event, prefetch=2)

    def _checkpoint_loop(self) -> None:
        """Copy the SQLite WAL into the database file every ``WAL_CHECKPOINT_INTERVAL`` seconds, beside
        the writers. Otherwise the commit that crosses ``wal_autocheckpoint`` pages does it while it
        holds the write lock every other thread and worker process is waiting for (that stays as the
        fallback should this thread fall behind)."""
        while not self.stop_event.wait(WAL_CHECKPOINT_INTERVAL):
            try:
                self.ledger.wal_checkpoint()
            except (HubError, sa.exc.SQLAlchemyError) as exc:
                log.warning("wal_checkpoint_failed", error=str(exc))

    def _relay_loop(self) -> None:
        while not self.stop_event.wait(self.config.worker.relay_interval):
            try:
                self.relay_once()
            except (HubError, sa.exc.SQLAlchemyError) as exc:
                log.warning("relay_failed", error=str(exc))

    def run(
        self,
        *,
        until_idle: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
        progress_interval: float = 1.0,
        workers: bool = True,
        sources: bool = True,
    ) -> dict[str, Any]:
        """Run sources, workers and the relay until stopped (or idle, with ``until_idle``).

        ``workers=False`` is the supervisor of ``hub run --workers N`` (sources and relay here, the
        workers in child processes); ``sources=False`` is such a child (workers only, no relay)."""
        if sources:
            self.take_lock()  # a worker process (no sources) runs under its supervisor's lock
        # Validated invoices kept for this process's workers: none here when the workers are processes.
        self.intake.keep_for_workers = workers
        tune_gc()
        destinations = self.destinations()
        self._until_ready(lambda: self.bus.declare(destinations))
        if sources and workers:
            # Alone on the ledger: claims left in flight by a dead run go back to pending. (A supervisor
            # does this before it starts its worker processes; a worker process never does.)
            self.recover()
        if sources:
            self._until_ready(lambda: self.relay_once(startup=True))
        threads: list[threading.Thread] = []
        if workers and destinations:
            for i in range(self.config.worker.threads):
                threads.append(
                    threading.Thread(target=self._worker_loop, args=(destinations,), name=f"worker-{i}")
                )
        for name, source in (self.sources if sources else {}).items():
            self._source_idle[name] = False
            threads.append(
                threading.Thread(
                    target=self._source_loop,
                    args=(name, source, self.config.worker.batch_size),
                    name=f"source-{name}",
                )
            )
        if sources:
            threads.append(threading.Thread(target=self._relay_loop, name="relay"))
            if self.ledger.dialect == "sqlite":
                threads.append(threading.Thread(target=self._checkpoint_loop, name="wal-checkpoint"))
        if self.config.reconcile and any(th.name == "relay" for th in threads):
            # Scheduled `reconcile:` entries (hub/reconcile.py), where the relay runs (not in worker-only
            # children).
            from hub.reconcile import scheduler_thread

            threads.append(scheduler_thread(self))
        if (
            sources
            and workers
            and self.sources
            and self._preparer is not None
            and self._preparer.wanted(self.config.worker.batch_size)
        ):
            self._preparer.close_in_child = self._lock_fds()
            self._preparer.start()  # in the background: batches are prepared here until it is ready
        for th in threads:
            th.daemon = True
            th.start()
        last_progress = 0.0
        last_gc = time.monotonic()
        idle_checks = 0
        try:
            while not self.stop_event.is_set():
                self.stop_event.wait(0.05)
                last_gc = collect_if_due(last_gc)
                if progress and time.monotonic() - last_progress >= progress_interval:
                    last_progress = time.monotonic()
                    progress(self.snapshot())
                if until_idle and all(self._source_idle.values()) and self._open_or_unknown() == 0:
                    idle_checks += 1
                    # Idle twice in a row (a source may be between an empty poll and its next batch).
                    if idle_checks >= 3:
                        break
                else:
                    idle_checks = 0
        finally:
            self.stop_event.set()
            for th in threads:
                th.join(timeout=60)
            if self._preparer is not None:
                self._preparer.close()
        summary = self.snapshot()
        if progress:
            progress(summary)
        return summary

    def _lock_fds(self) -> list[int]:
        """The descriptors of this hub's lock files (the data directory's, the ledger's writer lock)."""
        fds = [self._lock_file.fileno()] if self._lock_file is not None else []
        writer_fd = getattr(self.ledger._write_lock, "fd", None)
        return fds + ([writer_fd] if writer_fd is not None else [])

    def _until_ready(self, step: Callable[[], Any]) -> None:
        """Run a start-up step, waiting (with backoff) while the bus or the ledger is unreachable."""
        delay = 0.2
        while True:
            try:
                step()
                return
            except HubError as exc:
                log.warning("startup_waiting", error=str(exc), retry_in=delay)
                if self.stop_event.wait(delay):
                    raise
                delay = min(5.0, delay * 2)

    def _open_or_unknown(self) -> int:
        """Open deliveries, or -1 when the ledger cannot say right now (then the run is not idle)."""
        try:
            return self.open_deliveries()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("ledger_unavailable", error=str(exc.__class__.__name__))
            return -1

    def stop(self) -> None:
        self.stop_event.set()

    def snapshot(self) -> dict[str, Any]:
        ws = self.worker.stats
        return {
            "received": self.stats.received,
            "duplicates": self.stats.duplicates,
            "intake_dead_letters": self.stats.intake_dead,
            "delivered": ws.delivered,
            "skipped": ws.skipped,
            "amendments": self.stats.amendments,
            "amendments_at_destinations": ws.amendments,
            "retried": ws.retried,
            "dead": ws.dead,
            "open": self._open_or_unknown(),
            "elapsed": round(time.monotonic() - self.stats.started, 2),
            "source_errors": list(self._errors[-5:]),
        }
