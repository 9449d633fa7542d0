"""Scale-out benchmark: invoices through ``hub run --workers N`` on RabbitMQ + PostgreSQL, beside the
embedded default and a bare kombu publish/consume loop measured in the same run.

    python scripts/bench_scaleout.py                 # 100,000 invoices, workers 1, 2 and 4
    python scripts/bench_scaleout.py --count 20000 --workers 2

Each hub case is the real CLI in a subprocess (``hub run [--workers N] --until-idle``) reading JSON files
of 100 invoices from a folder (``files`` source, in the supervisor) and delivering to the ``recording``
sink without a file (it accepts everything and counts in memory). Every case gets a fresh PostgreSQL
database and a RabbitMQ virtual host of its own. Figures:

* throughput: invoices / (last ``delivered`` transition − first event ``received_at``), from the ledger;
  ``wall`` is the whole command including process start-up and the idle check at the end;
* latency p50/p99: per invoice, event ``received_at`` → its ``delivered`` transition;
* peak memory: VmHWM of the supervisor and of each worker process (sampled from /proc until exit);
* bare kombu: one persistent JSON message per invoice, published through kombu on a channel in
  confirm mode (confirms awaited per window of 500), consumed by a kombu consumer in another process
  (prefetch 200, one ack per message) — the transport with nothing of the hub on it;
* kombu per-message confirms (``confirm_publish=True``) on a smaller count, for the record.

Needs RabbitMQ at 127.0.0.1:5672 (guest/guest, ``rabbitmqctl`` on the PATH) and PostgreSQL at
127.0.0.1:5432 (user postgres, trust). Nothing is asserted: figures are printed (and ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

PG_ADMIN = os.environ.get("HUB_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_BASE = os.environ.get("HUB_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PER_FILE = 100


# ---------------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------------
def make_inbox(folder: Path, count: int) -> None:
    from hub.factory import invoice_data

    folder.mkdir(parents=True)
    for f, start in enumerate(range(0, count, PER_FILE)):
        batch = [invoice_data(i) for i in range(start, min(count, start + PER_FILE))]
        (folder / f"{f:06d}.json").write_bytes(orjson.dumps(batch))


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


class Servers:
    """A fresh PostgreSQL database and RabbitMQ virtual host, removed afterwards."""

    def __init__(self) -> None:
        self.name = f"hub_bench_{uuid.uuid4().hex[:8]}"
        self.ledger = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.name}"
        self.bus = f"{AMQP_BASE}/{self.name}"
        self.admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def __enter__(self) -> Servers:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()
        subprocess.run(["rabbitmqctl", "delete_vhost", self.name], capture_output=True, timeout=60)


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------------
# A hub case
# ---------------------------------------------------------------------------------------------------
def hub_case(
    label: str, inbox: Path, count: int, ledger: str, bus: str, workers: int, tmp: Path
) -> dict[str, Any]:
    work = tmp / label.replace(" ", "_").replace("+", "_")
    (work / "inbox").mkdir(parents=True)
    for f in inbox.iterdir():
        os.link(f, work / "inbox" / f.name)
    config = {
        "ledger": ledger,
        "bus": bus,
        "data_dir": str(work / ".hub"),
        "logging": {"level": "error", "format": "json"},
        "worker": {"threads": 4, "batch_size": 5, "relay_interval": 1.0},  # 5 files = 500 invoices
        "connectors": {
            "inbox": {"type": "files", "settings": {"path": str(work / "inbox"), "min_age": 0}},
            "sink": {"type": "recording"},
        },
        "routes": [{"from": "inbox", "to": "sink"}],
    }
    cfg = work / "hub.yaml"
    cfg.write_text(json.dumps(config), encoding="utf-8")
    cmd = [sys.executable, "-c", "import sys; from hub.cli import main; sys.exit(main())"]
    cmd += ["-c", str(cfg), "run", "--until-idle", "--json", "--quiet"]
    if workers:
        cmd += ["--workers", str(workers)]
    peaks: dict[int, float] = {}
    t0 = time.perf_counter()
    with (work / "hub.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        pids_file = work / ".hub" / "workers.json"
        while proc.poll() is None:
            pids = [proc.pid]
            with contextlib.suppress(OSError, ValueError, KeyError):  # not written yet
                pids += json.loads(pids_file.read_text())["workers"]
            for pid in pids:
                hwm = vm_hwm_mb(pid)
                if hwm is not None:
                    peaks[pid] = max(peaks.get(pid, 0.0), hwm)
            time.sleep(0.2)
        out = proc.stdout.read() if proc.stdout else b""
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label}: hub run failed ({proc.returncode}); see {work / 'hub.log'}")
    summary = json.loads(out)
    figures = ledger_figures(ledger)
    supervisor_mb = peaks.pop(proc.pid, 0.0)
    return {
        "case": label,
        "workers": workers or "threads",
        "count": count,
        "delivered": figures["delivered"],
        "open": summary.get("open"),
        "per_second": round(figures["delivered"] / figures["seconds"]) if figures["seconds"] else None,
        "seconds": round(figures["seconds"], 2),
        "wall_seconds": round(wall, 2),
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "peak_mb_supervisor": round(supervisor_mb, 1),
        "peak_mb_workers": [round(v, 1) for v in peaks.values()],
    }


def ledger_figures(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url, poolclass=NullPool)
    query = sa.text(
        "SELECT e.received_at, tr.at FROM delivery_transitions tr"
        " JOIN deliveries d ON d.id = tr.delivery_id JOIN events e ON e.id = d.event_id"
        " WHERE tr.to_state = 'delivered'"
    )
    first = last = None
    latencies: list[float] = []
    with engine.connect() as conn:
        for received, delivered in conn.execution_options(yield_per=10_000).execute(query):
            if isinstance(received, str):  # SQLite returns text
                from datetime import datetime

                received, delivered = datetime.fromisoformat(received), datetime.fromisoformat(delivered)
            latencies.append((delivered - received).total_seconds() * 1000)
            first = received if first is None or received < first else first
            last = delivered if last is None or delivered > last else last
    engine.dispose()
    if not latencies:
        return {"delivered": 0, "seconds": 0.0, "p50_ms": None, "p99_ms": None}
    latencies.sort()
    return {
        "delivered": len(latencies),
        "seconds": (last - first).total_seconds(),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
    }


# ---------------------------------------------------------------------------------------------------
# Bare kombu
# ---------------------------------------------------------------------------------------------------
def _bare_consumer(url: str, queue_name: str, count: int, done: Any) -> None:
    from kombu import Connection, Exchange, Queue

    queue = Queue(
        queue_name, Exchange(queue_name, type="direct", durable=True), routing_key="k", durable=True
    )
    got = 0
    with Connection(url) as conn:

        def on_message(body: Any, message: Any) -> None:
            nonlocal got
            got += 1
            message.ack()

        with conn.Consumer([queue], callbacks=[on_message], accept=["application/json"], prefetch_count=200):
            while got < count:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    continue
    done.value = time.time()


def bare_kombu(
    url: str, count: int, *, window: int = 500, per_message_confirms: bool = False
) -> dict[str, Any]:
    from kombu import Connection, Exchange, Queue

    name = f"bare-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="direct", durable=True)
    queue = Queue(name, exchange, routing_key="k", durable=True)
    options = {"confirm_publish": True} if per_message_confirms else {}
    with Connection(url, transport_options=options) as conn:
        queue(conn.default_channel).declare()
        done = mp.get_context("spawn").Value("d", 0.0)
        consumer = mp.get_context("spawn").Process(target=_bare_consumer, args=(url, name, count, done))
        consumer.start()
        time.sleep(1.0)  # the consumer is connected before the clock starts
        channel = conn.default_channel
        acked = [0]
        if not per_message_confirms:
            channel.confirm_select()
            channel.events["basic_ack"].add(lambda tag, multiple: acked.__setitem__(0, max(acked[0], tag)))
        producer = conn.Producer(channel, exchange=exchange)
        t0 = time.time()
        for i in range(count):
            producer.publish({"delivery_ids": [i]}, routing_key="k", serializer="json", delivery_mode=2)
            if not per_message_confirms and ((i + 1) % window == 0 or i + 1 == count):
                while acked[0] < i + 1:
                    conn.drain_events(timeout=30)
        published = time.time() - t0
        consumer.join(timeout=600)
        elapsed = done.value - t0
        queue(conn.default_channel).delete()
        exchange(conn.default_channel).delete()
    return {
        "case": "bare kombu"
        + (" (per-message confirms)" if per_message_confirms else f" (confirm window {window})"),
        "count": count,
        "per_second": round(count / elapsed),
        "publish_per_second": round(count / published),
        "seconds": round(elapsed, 2),
    }


# ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--json", action="store_true", help="Also print the results as JSON.")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    try:
        inbox = tmp / "master"
        t0 = time.perf_counter()
        make_inbox(inbox, args.count)
        print(
            f"{args.count} invoices in {len(list(inbox.iterdir()))} files ({time.perf_counter() - t0:.1f}s)"
        )
        with Servers() as servers:
            results.append(bare_kombu(servers.bus, args.count))
            print(results[-1], flush=True)
            results.append(bare_kombu(servers.bus, min(args.count, 5000), per_message_confirms=True))
            print(results[-1], flush=True)
        for n in args.workers:
            with Servers() as servers:
                results.append(
                    hub_case(
                        f"rabbitmq+postgresql workers={n}",
                        inbox,
                        args.count,
                        servers.ledger,
                        servers.bus,
                        n,
                        tmp,
                    )
                )
                print(results[-1], flush=True)
        if not args.skip_embedded:
            ledger = f"sqlite:///{tmp}/embedded.db"
            results.append(hub_case("embedded sqlite+memory", inbox, args.count, ledger, "memory://", 0, tmp))
            print(results[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bare = results[0]["per_second"]
    print()
    print(
        f"{'case':<36}{'inv/s':>8}{'x bare':>8}{'p50 ms':>9}{'p99 ms':>9}{'wall s':>8}"
        "  peak MB (supervisor; workers)"
    )
    for r in results:
        if "p50_ms" not in r:
            print(f"{r['case']:<36}{r['per_second']:>8}{'':>8}{'':>9}{'':>9}{r['seconds']:>8}")
            continue
        ratio = f"{r['per_second'] / bare:.2f}" if r["per_second"] else "-"
        mem = f"{r['peak_mb_supervisor']}; {', '.join(map(str, r['peak_mb_workers'])) or '-'}"
        print(
            f"{r['case']:<36}{r['per_second']:>8}{ratio:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}"
            f"{r['wall_seconds']:>8}  {mem}"
        )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
