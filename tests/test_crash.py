"""kill -9 of `hub run` in the middle of 2,000 invoices, then `hub run --until-idle`: every invoice is in
the archive exactly once and the ledger agrees."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub.config import load_config
from hub.engine import Hub
from hub.factory import invoice_json
from hub.ledger import schema as t
from tests.conftest import run_hub, write_hub_yaml

COUNT = 2000


def delivered_so_far(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM received").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(COUNT):
        (inbox / f"{i:05d}.json").write_bytes(invoice_json(i))
    cfg = write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp_path}/ledger.db",
            "data_dir": str(tmp_path / ".hub"),
            "logging": {"level": "error"},
            "worker": {"threads": 2, "batch_size": 50, "relay_interval": 0.2},
            "connectors": {
                "inbox": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
                "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
                "rec": {"type": "recording", "settings": {"path": str(tmp_path / "rec.db")}},
            },
            "routes": [{"from": "inbox", "to": ["archive", "rec"]}],
        },
    )
    kills = 0
    for target in (COUNT // 5, COUNT // 2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "-c", str(cfg), "run", "--quiet"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while delivered_so_far(tmp_path / "rec.db") < target and time.monotonic() < deadline:
            assert proc.poll() is None, "hub run exited on its own"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == 2
    assert delivered_so_far(tmp_path / "rec.db") < COUNT, "the kills came too late to prove anything"

    run_hub("-c", str(cfg), "run", "--until-idle", "--quiet", cwd=tmp_path, timeout=300)

    with Hub(load_config(cfg)) as hub:
        archived = Counter(item.identity for item in hub.connectors["archive"].inventory())  # type: ignore[attr-defined]
        with hub.ledger.engine.connect() as conn:
            states = dict(
                conn.execute(
                    sa.select(t.deliveries.c.state, sa.func.count())
                    .where(t.deliveries.c.destination == "archive")
                    .group_by(t.deliveries.c.state)
                ).all()
            )
            per_key = Counter(
                conn.execute(
                    sa.select(t.deliveries.c.idem_key).where(
                        t.deliveries.c.destination == "archive", t.deliveries.c.state == "delivered"
                    )
                ).scalars()
            )
            versions = conn.execute(sa.select(sa.func.count()).select_from(t.invoice_versions)).scalar()
    assert len(archived) == COUNT and set(archived.values()) == {1}
    assert versions == COUNT
    assert len(per_key) == COUNT and set(per_key.values()) == {1}
    assert states.get("delivered") == COUNT
    assert not {"pending", "inflight", "retrying", "dead"} & set(states)
    with sqlite3.connect(tmp_path / "rec.db") as conn:
        assert conn.execute("SELECT count(*) FROM received").fetchone()[0] == COUNT
    assert len(list((inbox / "done").iterdir())) == COUNT
    assert not [p for p in inbox.iterdir() if p.is_file()]
