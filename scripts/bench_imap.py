"""Benchmark: mails per second from a real Dovecot mailbox through ``hub run --until-idle``.

Starts a throw-away Dovecot on a loopback port (as the tests do: tests/dovecot.py; run
scripts/install-dovecot.sh first, as root), fills one mailbox with N mails by IMAP APPEND, writes a
hub.yaml (email.imap → recording sink and archive.fs, SQLite ledger, in-process bus) and runs the
real ``hub`` command until idle. Prints the time and mails per second, and checks the end state:
every invoice delivered exactly once, the mailbox drained into processed/failed.

    python scripts/bench_imap.py                 # 200 mails, the mix of every format (tests' mixed_mails)
    python scripts/bench_imap.py --mails 1000 --kind json
    python scripts/bench_imap.py --json          # one JSON line for scripts
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dovecot import DovecotServer, DovecotUnavailable  # noqa: E402
from tests.imap_fixtures import Attachment, json_bytes, mail, mixed_mails  # noqa: E402


def build(kind: str, n: int, limit: int) -> tuple[list[bytes], set[str], int, int]:
    if kind == "mix":
        mix = mixed_mails(n, oversized_limit=limit)
        return mix.mails, mix.numbers, mix.processed, mix.failed
    mails = [
        mail([Attachment(f"inv-{i}.json", json_bytes(10_000 + i), "application/json")]) for i in range(n)
    ]
    return mails, {f"2532{10_000 + i:016d}" for i in range(n)}, n, 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mails", type=int, default=200)
    ap.add_argument("--kind", choices=["mix", "json"], default="mix")
    ap.add_argument("--fetch-batch", type=int, default=50, help="email.imap batch_size (mails per FETCH)")
    ap.add_argument("--intake-batch", type=int, default=50, help="worker.batch_size (items per intake)")
    ap.add_argument("--no-archive", action="store_true", help="recording sink only")
    ap.add_argument(
        "--in-process", action="store_true", help="run the Hub in this process (no interpreter start-up)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    limit = 2_000_000
    work = Path(tempfile.mkdtemp(prefix="hub-bench-imap-"))
    work.chmod(0o755)
    try:
        server = DovecotServer.start(work / "dovecot", install=os.geteuid() == 0)
    except DovecotUnavailable as exc:
        print(f"cannot start Dovecot: {exc}\nrun scripts/install-dovecot.sh (as root)", file=sys.stderr)
        return 2
    try:
        box = server.add_user()
        mails, numbers, processed, failed = build(args.kind, args.mails, limit)
        started = time.perf_counter()
        box.append(mails)
        fill = time.perf_counter() - started
        sinks = ["recorded"] if args.no_archive else ["recorded", "archive"]
        config: dict[str, Any] = {
            "ledger": f"sqlite:///{work}/ledger.db",
            "bus": "memory://",
            "data_dir": str(work / ".hub"),
            "logging": {"level": "error", "format": "json"},
            "worker": {"batch_size": args.intake_batch},
            "connectors": {
                "mailbox": {
                    "type": "email.imap",
                    "settings": {
                        "host": box.host,
                        "port": box.port,
                        "security": "plain",
                        "username": box.username,
                        "password": "${BENCH_IMAP_PASSWORD}",
                        "batch_size": args.fetch_batch,
                        "max_message_size": limit,
                        "idle_wait": 0.2,
                    },
                },
                "recorded": {"type": "recording", "settings": {"path": str(work / "recorded.db")}},
                "archive": {"type": "archive.fs", "settings": {"path": str(work / "archive")}},
            },
            "routes": [{"name": "mail", "from": "mailbox", "to": sinks}],
        }
        cfg = work / "hub.yaml"
        cfg.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
        env = {**os.environ, "BENCH_IMAP_PASSWORD": box.password}
        started = time.perf_counter()
        if args.in_process:
            from hub.config import load_config
            from hub.engine import Hub
            from hub.logging import configure_logging

            configure_logging("error", "json")
            logging.getLogger("pypdf").setLevel(logging.ERROR)  # "EOF marker not found" on broken PDFs
            os.environ["BENCH_IMAP_PASSWORD"] = box.password
            with Hub(load_config(cfg)) as running:
                summary = running.run(until_idle=True)
            elapsed = time.perf_counter() - started
        else:
            result = subprocess.run(
                [sys.executable, "-m", "hub", "-c", str(cfg), "run", "--until-idle", "--json"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            elapsed = time.perf_counter() - started
            if result.returncode != 0:
                print(result.stdout, result.stderr, file=sys.stderr)
                return 1
            summary = json.loads(result.stdout)
        conn = sqlite3.connect(work / "recorded.db")
        try:
            counts = dict(conn.execute("SELECT number, count FROM received").fetchall())
        finally:
            conn.close()
        folders = box.counts()
        checks = {
            "exactly_once": set(counts) == numbers and set(counts.values()) == {1},
            "inbox_empty": folders["INBOX"]["messages"] == 0,
            "processed": folders.get("processed", {}).get("messages", 0) == processed,
            "failed": folders.get("failed", {}).get("messages", 0) == failed,
        }
        out = {
            "mails": len(mails),
            "kind": args.kind,
            "in_process": args.in_process,
            "archive": not args.no_archive,
            "megabytes": round(sum(map(len, mails)) / 1e6, 1),
            "append_seconds": round(fill, 2),
            "run_seconds": round(elapsed, 2),
            "mails_per_second": round(len(mails) / elapsed, 1),
            "invoices": len(counts),
            "intake_dead_letters": summary.get("intake_dead_letters"),
            "checks": checks,
        }
        if args.json:
            print(json.dumps(out))
        else:
            print(
                f"{out['mails']} mails ({out['kind']}, {out['megabytes']} MB) → {out['invoices']} invoices, "
                f"{out['intake_dead_letters']} dead letters in {out['run_seconds']} s "
                f"({'in process' if args.in_process else 'hub start-up included'}): "
                f"{out['mails_per_second']} mails/s"
            )
            print("checks: " + ", ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in checks.items()))
        return 0 if all(checks.values()) else 1
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
