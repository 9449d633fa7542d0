"""Scale-out under faults: ``hub run --workers 2`` on RabbitMQ + PostgreSQL, real processes, real servers.

Each test runs the real CLI as a subprocess (a supervisor with its sources and relay, two worker
processes), injects one fault while invoices flow, lets the run finish (``--until-idle``), and ends
with the same accounting check (``tests/accounting.py``): for every accepted invoice and every
destination exactly one of delivered / skipped as duplicate / dead, nothing missing, nothing delivered
twice. Each test has its own PostgreSQL database and its own RabbitMQ virtual host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.accounting import (
    RABBIT_START,
    Vhost,
    check_accounting,
    rabbitmqctl,
    recording_counts,
    write_invoices,
)
from tests.conftest import PG_ADMIN_URL, PG_START, port_open, server_missing, write_hub_yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PG_CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect"]


@pytest.fixture
def amqp_url() -> Any:
    if not port_open("127.0.0.1", 5672) or shutil.which("rabbitmqctl") is None:
        server_missing("RabbitMQ at 127.0.0.1:5672 (with rabbitmqctl on the PATH)", RABBIT_START)
    with Vhost() as vhost:
        yield vhost.url


class HubRun:
    """``hub run --workers N --until-idle --json`` over an inbox of generated invoices."""

    def __init__(
        self,
        tmp_path: Path,
        ledger: str,
        bus: str,
        *,
        count: int,
        sinks: dict[str, dict[str, Any]],
        workers: int = 2,
        lease_seconds: float = 5.0,
        retry: dict[str, Any] | None = None,
    ) -> None:
        self.tmp = tmp_path
        self.ledger = ledger
        self.workers = workers
        self.numbers = write_invoices(tmp_path / "inbox", count, per_file=50)
        self.sink_files = {name: tmp_path / f"{name}.db" for name in sinks}
        connectors: dict[str, Any] = {
            "inbox": {"type": "files", "settings": {"path": str(tmp_path / "inbox"), "min_age": 0}}
        }
        for name, settings in sinks.items():
            connectors[name] = {
                "type": "recording",
                "settings": {"path": str(self.sink_files[name]), **settings},
            }
        config: dict[str, Any] = {
            "ledger": ledger,
            "bus": bus,
            "data_dir": str(tmp_path / ".hub"),
            "logging": {"level": "warning", "format": "json"},
            # The faults below are timed against intake in one batch, as these tests were measured
            # (batches of 200 files of 50 invoices, no byte cap): with hub.yaml's smaller batches the
            # deliveries start sooner and a fast run can be over before the fault lands.
            "worker": {
                "threads": 2,
                "lease_seconds": lease_seconds,
                "relay_interval": 0.5,
                "batch_size": 200,
                "batch_bytes": 1 << 30,
            },
            "retry": retry or {"max_attempts": 6, "initial_delay": 0.5, "max_delay": 2.0},
            "connectors": connectors,
            "routes": [{"name": "all", "from": "inbox", "to": list(sinks)}],
        }
        self.config = write_hub_yaml(tmp_path / "hub.yaml", config)
        self.log = (tmp_path / "hub.log").open("wb")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, until_idle: bool = True) -> HubRun:
        if self.log.closed:
            self.log = (self.tmp / "hub.log").open("ab")
        cmd = [sys.executable, "-c", "import sys; from hub.cli import main; sys.exit(main())"]
        cmd += ["-c", str(self.config), "run", "--workers", str(self.workers), "--json"]
        cmd += ["--until-idle"] if until_idle else []
        self.proc = subprocess.Popen(cmd, cwd=self.tmp, stdout=subprocess.PIPE, stderr=self.log)
        return self

    def worker_pids(self) -> list[int]:
        path = self.tmp / ".hub" / "workers.json"
        try:
            return list(json.loads(path.read_text())["workers"])
        except (OSError, ValueError, KeyError):
            return []

    def delivered(self) -> int:
        """Calls the sinks have accepted so far (read from their own files)."""
        return sum(sum(recording_counts(p).values()) for p in self.sink_files.values())

    def wait_for(self, what: str, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"hub run exited ({self.proc.returncode}) while waiting for {what}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.tail()}")
            time.sleep(0.05)

    def finish(self, timeout: float = 180) -> dict[str, Any]:
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=90)
            pytest.fail(f"hub run did not finish in {timeout}s:\n{self.tail()}")
        self.log.close()
        if self.proc.returncode != 0:
            pytest.fail(f"hub run failed ({self.proc.returncode}):\n{self.tail()}")
        return dict(json.loads(out))

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = (self.tmp / "hub.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        if not self.log.closed:
            self.log.close()


@pytest.fixture
def pg_ledger() -> Any:
    """A PostgreSQL database of its own (dropped afterwards), reached without a connection pool, so a
    server restart in the middle of the test does not leave a dead pooled connection behind."""
    if not port_open("127.0.0.1", 5432):
        server_missing("PostgreSQL at 127.0.0.1:5432", PG_START)
    name = f"hub_scaleout_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        for _ in range(30):  # the server may still be coming back from a restart
            try:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except sa.exc.OperationalError:
                time.sleep(1)
        admin.dispose()


@pytest.fixture
def hub_run(tmp_path: Path, pg_ledger: str, amqp_url: str) -> Any:
    runs: list[HubRun] = []

    def make(**kwargs: Any) -> HubRun:
        run = HubRun(tmp_path, pg_ledger, amqp_url, **kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def test_kill_9_worker_processes_mid_delivery(hub_run: Any) -> None:
    # Enough invoices that the run outlasts three kills and their restarts (the restart delay backs off
    # to 2 s when a process dies young): with 3,000 a quick run could finish before the last replacement.
    run = hub_run(count=6000, sinks={"erp": {}, "archive": {}}, lease_seconds=3.0).start()
    kills = 0
    for _ in range(3):
        before = run.delivered()
        run.wait_for("deliveries under way", lambda b=before: run.delivered() > b + 200, timeout=90)
        pids = run.worker_pids()
        assert pids, "the supervisor lists no worker processes"
        os.kill(pids[kills % len(pids)], signal.SIGKILL)
        kills += 1
        # The supervisor starts a new one in its place.
        run.wait_for("a replacement worker", lambda p=pids: len(set(run.worker_pids()) - set(p)) >= 1)
    summary = run.finish()
    assert summary["worker_restarts"] >= kills
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers, processes_killed=True)
    assert acc.states["delivered"] == 2 * 6000, acc.summary()
    # A killed process held claims: they came back through the lease, not through a second delivery.
    with sa.create_engine(run.ledger).connect() as conn:
        expired = conn.execute(
            sa.text("SELECT count(*) FROM delivery_transitions WHERE detail = 'claim lease expired'")
        ).scalar()
    conn.engine.dispose()
    assert expired and expired > 0, "no claim of a killed worker came back by lease: nothing was in flight"


def test_rabbitmq_stopped_and_started_during_a_run(hub_run: Any) -> None:
    # Enough invoices that intake and the relay are still publishing when the broker goes away (with
    # fewer, a fast run has everything published and prefetched before the outage, which then tests
    # nothing), and the broker stopped as soon as deliveries flow.
    # 2 ms a call: 12,000 calls keep the four consumers busy ~6 s, so the run is still going when
    # `rabbitmqctl stop_app` (itself a second or more) has stopped the broker; without it a fast run was
    # sometimes over before that.
    count = 6000
    slow = {"delay": 0.002}
    run = hub_run(count=count, sinks={"erp": slow, "archive": slow}).start()
    run.wait_for("deliveries under way", lambda: run.delivered() > 100, timeout=90)
    try:
        rabbitmqctl("stop_app")
        stopped_at = run.delivered()
        time.sleep(3)
    finally:
        rabbitmqctl("start_app")
    assert stopped_at < 2 * count, "the run was over before the broker stopped: nothing was tested"
    assert run.delivered() < 2 * count, "the run did not need the broker after the outage: nothing was tested"
    summary = run.finish()
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers)
    assert acc.states["delivered"] == 2 * count, acc.summary()
    assert summary["open"] == 0


def test_postgresql_restarted_during_a_run(hub_run: Any) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else None
    if version is None:
        server_missing("a local PostgreSQL cluster (pg_ctlcluster)", "apt-get install postgresql")
    run = hub_run(count=4000, sinks={"erp": {}, "archive": {}}, lease_seconds=20.0).start()
    run.wait_for("deliveries under way", lambda: run.delivered() > 100, timeout=90)
    before = run.delivered()
    try:
        subprocess.run(
            [*PG_CLUSTER, version, "main", "restart", "--", "-m", "fast"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    finally:
        if not port_open("127.0.0.1", 5432):
            subprocess.run(
                [*PG_CLUSTER, version, "main", "start"], check=False, capture_output=True, timeout=60
            )
    summary = run.finish()
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers)
    assert acc.states["delivered"] == 2 * 4000, acc.summary()
    assert before < 2 * 4000 and summary["open"] == 0
    log = (run.tmp / "hub.log").read_text()
    assert "record_waiting_for_ledger" in log or "ledger_unavailable" in log, "the restart missed the run"


def test_sink_down_for_30_seconds_then_back(hub_run: Any, tmp_path: Path) -> None:
    down = tmp_path / "erp.down"
    down.touch()
    run = hub_run(
        count=400,
        sinks={"erp": {"down_file": str(down)}, "archive": {}},
        retry={"max_attempts": 40, "initial_delay": 0.5, "max_delay": 3.0},
    ).start()
    started = time.monotonic()
    # The other destination is not held up by the one that is down.
    run.wait_for("the archive to get everything", lambda: run.delivered() >= 400, timeout=60)
    assert not recording_counts(run.sink_files["erp"]), "the down sink accepted something"
    time.sleep(max(0.0, 30 - (time.monotonic() - started)))
    down.unlink()
    summary = run.finish()
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers)
    assert acc.states["delivered"] == 2 * 400, acc.summary()
    assert summary["retried"] >= 400, "the erp deliveries were not retried through the outage"
    assert len(recording_counts(run.sink_files["erp"])) == 400


def test_poison_invoice_crashes_the_sink_every_time(hub_run: Any) -> None:
    run = hub_run(count=1000, sinks={"erp": {"poison": ["000000000777"]}, "archive": {}}).start()
    summary = run.finish()
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers)
    assert acc.states["dead"] == 1 and acc.states["delivered"] == 2 * 1000 - 1, acc.summary()
    assert summary["dead"] == 1
    with sa.create_engine(run.ledger).connect() as conn:
        letter = conn.execute(
            sa.text(
                "SELECT destination, error_class, traceback, attempts FROM dead_letters"
                " WHERE stage = 'delivery'"
            )
        ).one()
    conn.engine.dispose()
    assert letter.destination == "erp" and letter.error_class == "RuntimeError"
    assert "crashed on poison invoice 2532" in letter.traceback and letter.attempts == 1


def test_copies_of_one_delivery_race_for_the_claim_across_processes(hub_run: Any) -> None:
    """Four deliveries of each content hash to one destination, taken by three worker processes at once:
    the claim (partial unique index on destination + key for claimed or delivered rows) lets exactly one
    reach the sink; the others end as skipped duplicates."""
    from hub.config import load_config
    from hub.engine import Hub

    run = hub_run(count=600, sinks={"erp": {}}, workers=3)
    with Hub(load_config(run.config)) as hub:
        hub.bus.declare(hub.destinations())
        hub.ingest(list(hub.sources["inbox"].poll(None)), "inbox")
        with hub.ledger.begin() as conn:
            for _ in range(3):  # unpublished copies: the relay publishes them with the originals' messages
                conn.execute(
                    sa.text(
                        "INSERT INTO deliveries (event_id, destination, route, idem_key, identity,"
                        " content_hash, state, attempts, created_at, updated_at)"
                        " SELECT event_id, destination, route,"
                        " idem_key, identity, content_hash, 'pending', 0, created_at, updated_at"
                        " FROM deliveries WHERE id <= 600"
                    )
                )
    for f in (run.tmp / "inbox").iterdir():
        f.unlink()
    run.start()
    summary = run.finish()
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers, deliveries_per_event=4)
    assert acc.states["delivered"] == 600 and acc.states["skipped"] == 3 * 600, acc.summary()
    assert summary["open"] == 0


def test_sigterm_drains_in_flight_deliveries(hub_run: Any) -> None:
    """SIGTERM to the supervisor mid-run: every worker process finishes the message in hand and exits;
    no claim is left behind (nothing waits for a lease), and a second run finishes the rest."""
    # 1 ms a call: 16,000 calls take the four consumers 4 s or more, so the SIGTERM lands mid-run (without
    # it a fast run had sometimes delivered everything before the signal arrived).
    slow = {"delay": 0.001}
    run = hub_run(count=8000, sinks={"erp": slow, "archive": slow}, lease_seconds=300.0)
    run.start(until_idle=False)
    run.wait_for("deliveries under way", lambda: run.delivered() > 100, timeout=90)
    workers = run.worker_pids()
    assert run.proc is not None
    run.proc.send_signal(signal.SIGTERM)
    run.finish(timeout=90)
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "a worker process outlived the stop"
    with sa.create_engine(run.ledger).connect() as conn:
        states = dict(conn.execute(sa.text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())
    conn.engine.dispose()
    assert states.get("inflight", 0) == 0, f"claims left behind after a graceful stop: {states}"
    assert states.get("delivered", 0) == run.delivered() < 2 * 8000, states
    run.start()  # with a 300 s lease, a claim left behind would hold this run for minutes
    run.finish(timeout=120)
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers)
    assert acc.states["delivered"] == 2 * 8000, acc.summary()
