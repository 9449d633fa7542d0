"""``hub run --workers N`` on the embedded default: the SQLite ledger shared by worker processes over a
``filesystem://`` bus, no server at all. Real processes, ``kill -9``, the same accounting check as the
RabbitMQ + PostgreSQL scale-out tests (``tests/accounting.py``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from tests.accounting import check_accounting, recording_counts
from tests.conftest import run_hub, write_hub_yaml
from tests.test_scaleout_faults import HubRun

pytestmark = [pytest.mark.slow]


@pytest.fixture
def embedded_run(tmp_path: Path) -> Any:
    runs: list[HubRun] = []

    def make(**kwargs: Any) -> HubRun:
        run = HubRun(tmp_path, f"sqlite:///{tmp_path}/ledger.db", "filesystem://", **kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def test_worker_processes_share_the_sqlite_ledger_and_survive_kill_9(embedded_run: Any) -> None:
    # Each sink call takes 2 ms, so the run outlasts the supervisor's restart delay (1 s) and a worker's
    # start-up: without it the surviving worker finished the rest first and the run ended, correctly,
    # before any replacement was started.
    slow = {"delay": 0.002}
    run = embedded_run(count=2000, sinks={"erp": slow, "archive": slow}, lease_seconds=3.0).start()
    before = run.delivered()
    run.wait_for("deliveries under way", lambda: run.delivered() > before + 200, timeout=90)
    pids = run.worker_pids()
    assert len(pids) == 2, f"the supervisor lists {pids} as its worker processes"
    os.kill(pids[0], signal.SIGKILL)
    run.wait_for("a replacement worker", lambda: len(set(run.worker_pids()) - set(pids)) >= 1)
    summary = run.finish()
    assert summary["worker_processes"] == 2 and summary["worker_restarts"] >= 1
    assert summary["open"] == 0
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers, processes_killed=True)
    assert acc.states["delivered"] == 2 * 2000, acc.summary()
    # The bus folder holds nothing once the run is idle: every message was taken.
    assert not list((run.tmp / ".hub" / "bus" / "queue").iterdir())


def test_a_second_run_picks_up_what_a_killed_run_left(embedded_run: Any) -> None:
    """kill -9 of the whole run (supervisor and workers), then `hub run --workers 2 --until-idle` again:
    what the dead run held (claims, messages taken off the folder) is delivered, exactly once."""
    # Each call takes 2 ms, so a batch (200 calls) is in the sink most of the time: the kill finds claims
    # in flight.
    # 3,000 invoices: with 1,500 the last batches were sometimes already delivered at the kill.
    run = embedded_run(count=3000, sinks={"erp": {"delay": 0.002}}, lease_seconds=3.0).start(until_idle=False)
    run.wait_for("deliveries under way", lambda: run.delivered() > 300, timeout=90)
    workers = run.worker_pids()
    assert run.proc is not None
    # The workers first: a worker whose supervisor is gone finishes its batch and exits by itself, so
    # killing the supervisor first sometimes left no claim in flight to recover.
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    run.proc.kill()
    run.proc.wait()
    for pid in set(run.worker_pids()) - set(workers):  # one it may have restarted in between
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    summary = run.start().finish()
    assert summary["open"] == 0
    acc = check_accounting(run.ledger, run.sink_files, expected_numbers=run.numbers, processes_killed=True)
    assert acc.states["delivered"] == 3000, acc.summary()
    # The second run's supervisor took back the claims the killed run held, before any worker started.
    with sa.create_engine(run.ledger).connect() as conn:
        recovered = conn.execute(
            sa.text("SELECT count(*) FROM delivery_transitions WHERE detail = 'recovered after a crash'")
        ).scalar()
    conn.engine.dispose()
    assert recovered, "the killed run held no claims: the kill did not land mid-delivery"


def test_workers_with_the_in_process_bus_is_refused_with_what_to_set(tmp_path: Path) -> None:
    config = write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp_path}/ledger.db",
            "data_dir": str(tmp_path / ".hub"),
            "connectors": {
                "gen": {"type": "generator", "settings": {"count": 1}},
                "sink": {"type": "recording"},
            },
            "routes": [{"from": "gen", "to": "sink"}],
        },
    )
    out = subprocess.run(
        [sys.executable, "-m", "hub", "-c", str(config), "run", "--workers", "2", "--until-idle"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "memory://" in out.stderr and "filesystem://" in out.stderr, out.stderr
    with sa.create_engine(f"sqlite:///{tmp_path}/ledger.db").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 0


def test_generator_source_makes_distinct_valid_invoices_and_resumes(tmp_path: Path) -> None:
    """The load generator (`generator` connector) through `hub run`: every invoice valid and distinct,
    and a second run with a larger count makes only the new ones (the checkpoint)."""

    def config(count: int) -> Path:
        return write_hub_yaml(
            tmp_path / "hub.yaml",
            {
                "ledger": f"sqlite:///{tmp_path}/ledger.db",
                "bus": "filesystem://",
                "data_dir": str(tmp_path / ".hub"),
                "connectors": {
                    "load": {"type": "generator", "settings": {"count": count, "pool": 7}},
                    "sink": {"type": "recording", "settings": {"path": str(tmp_path / "sink.db")}},
                },
                "routes": [{"from": "load", "to": "sink"}],
            },
        )

    first = orjson.loads(run_hub("-c", str(config(40)), "run", "--until-idle", "--json", cwd=tmp_path).stdout)
    assert (first["received"], first["delivered"], first["intake_dead_letters"]) == (40, 40, 0)
    second = orjson.loads(
        run_hub("-c", str(config(60)), "run", "--workers", "1", "--until-idle", "--json", cwd=tmp_path).stdout
    )
    assert (second["received"], second["delivered"], second["duplicates"]) == (20, 20, 0)
    counts = recording_counts(tmp_path / "sink.db")
    assert len(counts) == 60 and set(counts.values()) == {1}


def test_a_second_filesystem_bus_in_one_process_gets_its_own_messages(tmp_path: Path) -> None:
    """kombu keeps declared bindings per process: a second bus (another folder) must still bind its
    queues in its own folder, or what it publishes goes nowhere."""
    from hub.bus import Bus

    for name in ("first", "second"):
        bus = Bus("filesystem://", data_dir=tmp_path / name)
        bus.declare(["erp"])
        bus.publish("erp", [1, 2, 3])
        bus.close()
        files = list((tmp_path / name / "bus" / "queue").iterdir())
        assert len(files) == 1, f"{name}: {files}"
        assert orjson.loads(files[0].read_bytes())["body"], files[0].read_text()


def test_progress_of_worker_processes_counts_this_run_only(tmp_path: Path) -> None:
    """The supervisor's progress line shows what its worker processes delivered, read from the ledger
    (counting only the rows added since its last look): it climbs to this run's total, and a second run
    on the same ledger starts again from zero."""

    def config(count: int) -> Path:
        return write_hub_yaml(
            tmp_path / "hub.yaml",
            {
                "ledger": f"sqlite:///{tmp_path}/ledger.db",
                "bus": "filesystem://",
                "data_dir": str(tmp_path / ".hub"),
                "worker": {"batch_size": 50},
                "connectors": {
                    "load": {"type": "generator", "settings": {"count": count}},
                    "sink": {"type": "recording", "settings": {"delay": 0.01}},
                },
                "routes": [{"from": "load", "to": "sink"}],
            },
        )

    for count, new in ((150, 150), (400, 250)):
        out = run_hub("-c", str(config(count)), "run", "--workers", "1", "--until-idle", cwd=tmp_path)
        shown = [int(m) for m in re.findall(r"· delivered (\d+) ·", out.stderr)]
        assert len(shown) >= 2, out.stderr
        assert shown == sorted(shown), f"progress went backwards: {shown}"
        assert shown[-1] == new, out.stderr
