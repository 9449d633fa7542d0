"""The intake helper process (hub/preparer.py): `hub run` parses, validates and hashes big batches in a
helper process; the ledger it writes is the same as without one, to the byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from hub.factory import invoice_data, invoice_json
from hub.ledger import Ledger
from hub.models import Invoice
from tests.conftest import run_hub, write_hub_yaml

COUNT = 4000
COUNT_KILLED = 30_000


def make_inbox(inbox: Path) -> None:
    """Invoices with everything intake tells apart: new ones, byte-for-byte and formatting duplicates,
    amendments (more lines), status changes (void), and files that are not invoices."""
    inbox.mkdir(parents=True)
    for i in range(COUNT):
        (inbox / f"{i:05d}-a.json").write_bytes(invoice_json(i))
        if i % 40 == 0:
            (inbox / f"{i:05d}-b-copy.json").write_bytes(invoice_json(i))
        if i % 40 == 1:
            (inbox / f"{i:05d}-c-pretty.json").write_bytes(
                orjson.dumps(invoice_data(i), option=orjson.OPT_INDENT_2)
            )
        if i % 50 == 2:
            (inbox / f"{i:05d}-d-amended.json").write_bytes(invoice_json(i, lines=3))
        if i % 50 == 3:
            void = invoice_data(i)
            void["status"] = "void"
            (inbox / f"{i:05d}-e-void.json").write_bytes(orjson.dumps(void))
        if i % 500 == 4:
            (inbox / f"{i:05d}-f-broken.json").write_bytes(b'{"number": "not an invoice"')


def run(tmp: Path, inbox: Path, helper: bool) -> tuple[dict[str, Any], str]:
    tmp.mkdir()
    shutil.copytree(inbox, tmp / "inbox")
    cfg = write_hub_yaml(
        tmp / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp}/ledger.db",
            "data_dir": str(tmp / ".hub"),
            "logging": {"level": "info"},
            "worker": {"batch_size": 100, "intake_helper": helper},
            "connectors": {
                "inbox": {"type": "files", "settings": {"path": str(tmp / "inbox"), "min_age": 0}},
                "erp": {"type": "recording", "settings": {"path": str(tmp / "erp.db")}},
            },
            "routes": [{"from": "inbox", "to": "erp", "on_amendment": "deliver"}],
        },
    )
    result = run_hub("-c", str(cfg), "run", "--until-idle", "--json", cwd=tmp)
    return json.loads(result.stdout), result.stderr


def ledger_facts(tmp: Path) -> dict[str, Any]:
    with sqlite3.connect(tmp / "ledger.db") as db:
        return {
            "versions": db.execute(
                "SELECT identity, content_hash, status, invoice_json, warnings, document_sha256, gross"
                " FROM invoice_versions ORDER BY identity, content_hash"
            ).fetchall(),
            "events": db.execute(
                "SELECT type, identity, content_hash, status, document_sha256 FROM events"
                " ORDER BY identity, content_hash, type, status"
            ).fetchall(),
            "deliveries": db.execute(
                "SELECT destination, identity, content_hash, state FROM deliveries"
                " ORDER BY identity, content_hash, state"
            ).fetchall(),
            "dead": db.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        }


def generator_config(tmp_path: Path, count: int) -> Path:
    """A hub.yaml: the generator's ``count`` invoices to a recording sink, JSON logs at info."""
    return write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp_path}/ledger.db",
            "data_dir": str(tmp_path / ".hub"),
            "logging": {"level": "info", "format": "json"},
            "worker": {"batch_size": 100},
            "connectors": {
                "gen": {"type": "generator", "settings": {"count": count}},
                "erp": {"type": "recording", "settings": {"path": str(tmp_path / "erp.db")}},
            },
            "routes": [{"from": "gen", "to": "erp"}],
        },
    )


def start_run(tmp_path: Path, cfg: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`hub run ARGS` in the background, its log in run.log, its stdout piped."""
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "-c", str(cfg), "run", *args],
            cwd=tmp_path,
            stderr=log,
            stdout=subprocess.PIPE,
        )
    return proc, log_path


def wait_for_helper(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    """The intake helper's pid, once the run's log says it is ready."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "no intake_helper_ready in the log"
        for line in log_path.read_text().splitlines():
            if '"intake_helper_ready"' in line:
                return int(json.loads(line)["pid"])
        time.sleep(0.05)


def test_the_intake_helper_writes_the_same_ledger_as_intake_in_one_process(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    make_inbox(inbox)
    with_helper, log = run(tmp_path / "helper", inbox, helper=True)
    alone, alone_log = run(tmp_path / "alone", inbox, helper=False)
    # The helper started and took batches (it starts in the background: the first are made here).
    assert "intake_helper_ready" in log, log[-3000:]
    assert "intake_helper_ready" not in alone_log
    for key in ("received", "duplicates", "amendments", "delivered", "intake_dead_letters", "skipped"):
        assert with_helper[key] == alone[key], (key, with_helper, alone)
    assert with_helper["received"] > COUNT and with_helper["duplicates"] > 0 and with_helper["amendments"] > 0
    assert with_helper["intake_dead_letters"] == COUNT // 500
    facts = ledger_facts(tmp_path / "helper")
    assert facts == ledger_facts(tmp_path / "alone")
    assert {e[0] for e in facts["events"]} == {"invoice.received", "invoice.status_changed"}


def test_the_helper_dies_with_a_killed_hub_and_holds_none_of_its_locks(tmp_path: Path) -> None:
    """`kill -9` of `hub run`: its helper goes too (it would otherwise keep copies of the data
    directory's and the ledger's lock files open), and the next `hub run` starts at once."""
    cfg = generator_config(tmp_path, COUNT_KILLED)
    proc, log_path = start_run(tmp_path, cfg, "--quiet")
    try:
        helper_pid = wait_for_helper(proc, log_path)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while (
            Path(f"/proc/{helper_pid}").exists()
            and Path(f"/proc/{helper_pid}/status").read_text().find("State:\tZ") < 0
        ):
            assert time.monotonic() < deadline, f"the helper {helper_pid} outlived its hub"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The next run takes the data directory and the ledger (it would wait for ever on a writer lock
    # a surviving helper kept) and finishes the rest: every invoice reached the sink (a call cut off by the
    # kill, after the sink and before the ledger, is made again with the same idempotency key).
    result = run_hub("-c", str(cfg), "run", "--until-idle", "--json", cwd=tmp_path, timeout=300)
    summary = json.loads(result.stdout)
    assert summary["open"] == 0, summary
    with sqlite3.connect(tmp_path / "erp.db") as db:
        assert db.execute("SELECT count(*) FROM received").fetchone()[0] == COUNT_KILLED


def test_a_killed_helper_mid_batch_loses_nothing_and_records_nothing_twice(tmp_path: Path) -> None:
    """The helper records whole batches itself (it writes the ledger); `kill -9` of the helper alone,
    while it works: the hub's source thread takes over, records the batch the helper was on (what the
    helper had committed of it comes back as duplicates), and every invoice reaches the sink once."""
    count = 20_000
    cfg = generator_config(tmp_path, count)
    proc, log_path = start_run(tmp_path, cfg, "--until-idle", "--json")
    try:
        helper_pid = wait_for_helper(proc, log_path)
        # Let it record some batches, then kill it in the middle of one.
        deadline = time.monotonic() + 60
        with sqlite3.connect(tmp_path / "ledger.db", timeout=30) as db:
            while db.execute("SELECT count(*) FROM invoice_versions").fetchone()[0] < 2000:
                assert time.monotonic() < deadline, "intake made no progress"
                time.sleep(0.02)
        os.kill(helper_pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    summary = json.loads(out)
    text = log_path.read_text()
    assert "intake_helper_stopped" in text, text[-3000:]
    assert summary["open"] == 0 and summary["dead"] == 0 and summary["intake_dead_letters"] == 0, summary
    # (The run's counters may show a batch the helper committed just before it died as duplicates,
    # recorded again by the hub, instead of as received: the ledger below is what counts.)
    assert summary["received"] >= count - 100, summary
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT count(*) FROM invoice_versions").fetchone()[0] == count
        states = dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
    # One delivered delivery per invoice; a batch recorded again only adds skipped duplicates.
    assert states.pop("delivered") == count, states
    assert set(states) <= {"skipped"}, states
    with sqlite3.connect(tmp_path / "erp.db") as db:
        assert db.execute("SELECT count(*), max(count) FROM received").fetchone() == (count, 1)


def test_a_batch_the_helper_fails_to_record_is_read_again_and_none_after_it_is_skipped(
    tmp_path: Path,
) -> None:
    """The helper records batch k+1 while the hub collects batch k. When k fails (here: a trigger in the
    ledger refuses one invoice of it), k+1 must not be recorded either — its checkpoint would move the
    source past k's items — and the next pass reads them all again."""
    count, failing = 6000, 3050
    ledger_path = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{ledger_path}").close()  # the schema, so the test can add its trigger
    identity = Invoice.model_validate(invoice_data(failing)).identity
    with sqlite3.connect(ledger_path) as db:
        db.execute(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON invoice_versions"
            f" WHEN NEW.identity = '{identity}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    cfg = generator_config(tmp_path, count)
    proc, log_path = start_run(tmp_path, cfg, "--until-idle", "--json")
    try:
        deadline = time.monotonic() + 120
        while "refused by the test" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the refused batch never failed"
            time.sleep(0.05)
        with sqlite3.connect(ledger_path, timeout=30) as db:
            db.execute("DROP TRIGGER refuse_one")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert "intake_helper_ready" in text
    summary = json.loads(out)
    assert summary["open"] == 0, summary
    with sqlite3.connect(ledger_path) as db:
        assert db.execute("SELECT count(*) FROM invoice_versions").fetchone()[0] == count
        refused = db.execute("SELECT count(*) FROM invoice_versions WHERE identity = ?", (identity,))
        assert refused.fetchone() == (1,)
    with sqlite3.connect(tmp_path / "erp.db") as db:
        assert db.execute("SELECT count(*), max(count) FROM received").fetchone() == (count, 1)


_EMBEDDED = """
import json, sys, threading
from pathlib import Path
from hub.config import load_config
from hub.engine import Hub
from hub.logging import configure_logging

# An application that embeds the hub and already runs a thread of its own: the helper cannot be
# forked (a lock held by that thread would stay held in the child), so it is spawned.
threading.Thread(target=threading.Event().wait, daemon=True, name="app").start()
configure_logging("info", "json")
hub = Hub(load_config(Path(sys.argv[1])))
summary = hub.run(until_idle=True)
hub.close()
print(json.dumps(summary, default=str))
"""


def test_a_hub_embedded_beside_other_threads_spawns_its_helper_and_records_everything(
    tmp_path: Path,
) -> None:
    count = 20_000
    cfg = generator_config(tmp_path, count)
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", _EMBEDDED, str(cfg)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "intake_helper_ready" in result.stderr, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["open"] == 0 and summary["received"] == count, summary
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT count(*) FROM invoice_versions").fetchone()[0] == count
    with sqlite3.connect(tmp_path / "erp.db") as db:
        assert db.execute("SELECT count(*), max(count) FROM received").fetchone() == (count, 1)
