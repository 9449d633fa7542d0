"""``hub run --workers N``: N worker processes on one machine, watched by the ``hub run`` process.

Who does what:

- the **supervisor** (the ``hub run`` process itself) runs the sources and the outbox relay, and starts N
  **worker processes** (``python -m hub.supervisor CONFIG``), each running ``Hub.run(sources=False)``:
  ``worker.threads`` consumer threads, no sources, no relay;
- sources run once per machine, in the supervisor: a source's checkpoint is one row in the ledger and
  most sources (a folder, a mailbox) are not made to be read by several processes at once. Several
  machines running the same ``hub.yaml`` each read their sources; what two of them both read is a
  counted duplicate (content hash), never a second delivery;
- the relay runs in every supervisor; on PostgreSQL it takes rows with ``FOR UPDATE SKIP LOCKED``, so
  relays on several machines share the work without a leader;
- a worker process that dies (``kill -9``, a crash) is started again (after 0.5 s, backing off to 30 s
  while it keeps dying within seconds of starting); the deliveries it had claimed come back when their
  lease (``worker.lease_seconds``) runs out;
- SIGINT/SIGTERM to the supervisor: the sources stop, every worker gets SIGTERM and finishes the
  message in hand (records its outcome, acks it) before it exits; one still running after
  ``drain_seconds`` is killed (its claims come back after the lease). Worker processes run in their own
  session, so a Ctrl-C at the terminal reaches the supervisor only, and they stop by themselves when
  the supervisor disappears.

Needs a bus that several processes can share: ``filesystem://`` (one machine, no server) or RabbitMQ;
the in-process ``memory://`` bus cannot be. On PostgreSQL the processes may be on several machines; the
embedded SQLite ledger is shared by the processes of one machine (one writer at a time, WAL readers
beside it), and there the supervisor, which holds the data directory's lock, returns the claims of an
earlier run to pending *before* it starts any worker process.

A worker process killed with messages in hand: RabbitMQ gives them back; a ``filesystem://`` folder
cannot, so the supervisor then has the relay publish every pending delivery again (the ledger claim
makes copies harmless).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
import structlog

from hub.errors import ConfigError, HubError
from hub.ledger import now
from hub.ledger import schema as t

if TYPE_CHECKING:
    from hub.engine import Hub

log = structlog.get_logger()

#: Name of the file (in ``data_dir``) listing the worker processes' pids, for ops and tests.
PIDS_FILE = "workers.json"


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0
        self.delay = 0.5
        self.not_before = 0.0


class Supervisor:
    """Starts, watches and stops the worker processes of one ``hub run --workers N``."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        workers: int,
        *,
        data_dir: Path,
        drain_seconds: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {workers}")
        self.config_path = str(Path(config_path).resolve())
        self.data_dir = Path(data_dir)
        self.drain_seconds = drain_seconds
        self.children = [_Child(i) for i in range(workers)]
        self.stopping = threading.Event()
        #: Called (from the watcher) before a dead worker process is replaced.
        self.on_child_exit: Callable[[], Any] | None = None
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    # -----------------------------------------------------------------------------------------------
    @staticmethod
    def check_engines(ledger_dialect: str, bus_is_memory: bool) -> None:
        if bus_is_memory:
            raise ConfigError(
                "hub run --workers needs a bus the processes share, and memory:// lives inside one "
                "process: set `bus:` to filesystem:// (processes on this machine, no server) or to "
                "amqp://user:pass@host:5672// (RabbitMQ)"
            )

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    def _spawn(self, child: _Child) -> None:
        cmd = [sys.executable, "-m", "hub.supervisor", self.config_path, str(child.index)]
        child.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        child.started = time.monotonic()
        log.info("worker_process_started", index=child.index, pid=child.proc.pid, restarts=child.restarts)
        self._write_pids()

    def _write_pids(self) -> None:
        path = self.data_dir / PIDS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"supervisor": os.getpid(), "workers": self.pids}))
        tmp.replace(path)

    def start(self) -> None:
        with self._lock:
            for child in self.children:
                self._spawn(child)
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self.stopping.wait(0.2):
            with self._lock:
                for child in self.children:
                    proc = child.proc
                    if proc is None or proc.poll() is None or self.stopping.is_set():
                        continue
                    at = time.monotonic()
                    if child.not_before == 0.0:
                        lived = at - child.started
                        # Dying soon after start again and again: back off (a bad config, a dead server).
                        child.delay = min(30.0, child.delay * 2) if lived < 5 else 0.5
                        child.not_before = at + child.delay
                        log.warning(
                            "worker_process_exited",
                            index=child.index,
                            pid=proc.pid,
                            returncode=proc.returncode,
                            restart_in=child.delay,
                        )
                    if at >= child.not_before:
                        if self.on_child_exit is not None:
                            try:
                                self.on_child_exit()
                            except (HubError, sa.exc.SQLAlchemyError) as exc:  # the relay's timeout remains
                                log.warning("republish_after_worker_exit_failed", error=str(exc))
                        child.restarts += 1
                        child.not_before = 0.0
                        self._spawn(child)

    def _stop_when_set(self, event: threading.Event) -> None:
        event.wait()
        self.stop()

    def stop(self) -> None:
        """SIGTERM every worker process, wait for them to drain, kill what is left. Safe to call again,
        from any thread: processes already gone are only waited for."""
        self.stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            procs = [c.proc for c in self.children if c.proc is not None]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.drain_seconds
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("worker_process_killed", pid=proc.pid, reason="did not drain in time")
                    proc.kill()
                    proc.wait()
            self._write_pids()

    # -----------------------------------------------------------------------------------------------
    def run(
        self,
        hub: Hub,
        *,
        until_idle: bool = False,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``hub``'s sources and relay here and the workers in child processes."""
        self.check_engines(hub.ledger.dialect, hub.bus.is_memory)
        started = now()
        tally = OutcomeTally(hub.ledger)
        shown: dict[str, int] = {}

        def with_outcomes(snap: dict[str, Any]) -> None:
            # The supervisor delivers nothing itself: show what the worker processes did, from the ledger.
            try:
                shown.update(tally.read())
            except sa.exc.SQLAlchemyError as exc:
                log.warning("ledger_unavailable", error=type(exc).__name__)
            snap.update(shown)
            if progress is not None:
                progress(snap)

        # On SQLite, what `hub run` does first (the data directory's lock, claims of a dead run back to
        # pending) must happen before any worker process claims something.
        hub.take_lock()
        hub.recover()
        if not hub.bus.is_amqp:
            # Messages a dead worker process had taken are gone with it: publish what is pending again.
            self.on_child_exit = hub.republish_pending
        self.start()
        # On a stop (SIGINT/SIGTERM, or the run fell idle) the worker processes are told at once, not
        # after the sources' threads have ended: a source may still be recording a batch, and meanwhile
        # the workers would go on taking new messages instead of draining the ones in hand. What that
        # batch publishes stays on the bus and in the ledger for the next run.
        stopper = threading.Thread(
            target=self._stop_when_set, args=(hub.stop_event,), name="stop-workers", daemon=True
        )
        stopper.start()
        try:
            summary = hub.run(until_idle=until_idle, progress=with_outcomes, workers=False)
        finally:
            hub.stop_event.set()
            stopper.join(timeout=self.drain_seconds + 10)
            self.stop()
        summary.update(outcomes_since(hub.ledger, started))
        summary["open"] = hub.open_deliveries()
        summary["worker_processes"] = len(self.children)
        summary["worker_restarts"] = sum(c.restarts for c in self.children)
        return summary


class OutcomeTally:
    """What the worker processes did since the tally was made, for the progress line: each read counts
    only the transitions written since the one before (by id, on the primary key), so a run of months
    shows its progress at the cost of the last second's rows, not of every row since it started (a
    scan by time grows with the table: seconds per read after a few million invoices).

    On PostgreSQL two transactions may commit their ids out of order, so a read can miss a row the
    next one no longer sees: close enough for progress; the final summary is ``outcomes_since``."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.counts: dict[str, int] = {}
        with ledger.engine.connect() as conn:
            self.last_id = int(conn.execute(sa.select(sa.func.max(t.transitions.c.id))).scalar() or 0)

    def read(self) -> dict[str, int]:
        tr = t.transitions
        with self.ledger.engine.connect() as conn:
            for state, count, top in conn.execute(
                sa.select(tr.c.to_state, sa.func.count(), sa.func.max(tr.c.id))
                .where(tr.c.id > self.last_id)
                .group_by(tr.c.to_state)
            ):
                self.counts[state] = self.counts.get(state, 0) + int(count)
                self.last_id = max(self.last_id, int(top))
        return _outcome_counts(self.counts)


def _outcome_counts(rows: dict[str, int]) -> dict[str, int]:
    return {
        "delivered": int(rows.get(t.DELIVERED, 0)),
        "skipped": int(rows.get(t.SKIPPED, 0)),
        "retried": int(rows.get(t.RETRYING, 0)),
        "dead": int(rows.get(t.DEAD, 0)),
    }


def outcomes_since(ledger: Any, since: datetime) -> dict[str, int]:
    """What the worker processes did since ``since``, from the ledger's transitions (a killed process
    cannot report its own counts)."""
    tr = t.transitions
    with ledger.engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.select(tr.c.to_state, sa.func.count()).where(tr.c.at >= since).group_by(tr.c.to_state)
            ).all()
        )
    return _outcome_counts(rows)


# ---------------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------------
def worker_main(config_path: str, index: int = 0) -> int:
    """One worker process: consumers only, until SIGTERM/SIGINT or until the supervisor is gone."""
    from hub.config import load_config
    from hub.engine import Hub
    from hub.logging import configure_logging

    loaded = load_config(config_path)
    configure_logging(loaded.config.logging.level, loaded.config.logging.format)
    parent = os.getppid()
    with Hub(loaded) as hub:

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("worker_process_stopping", index=index, signal=signal.Signals(signum).name)
            hub.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def orphan_watch() -> None:
            while not hub.stop_event.wait(1.0):
                if os.getppid() != parent:
                    log.warning("worker_process_orphaned", index=index)
                    hub.stop()

        threading.Thread(target=orphan_watch, name="orphan-watch", daemon=True).start()
        try:
            hub.run(sources=False)
        except HubError as exc:
            log.error("worker_process_failed", index=index, error=str(exc))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
