"""The accounting check every scale-out fault test ends with, and what those tests share.

``check_accounting`` reads the ledger and the recording sinks' own files and proves, for every accepted
invoice and every destination it was routed to: exactly one of delivered / skipped as a duplicate /
dead (with its dead letter), nothing missing, nothing delivered twice.

"Delivered twice" is counted by the sink itself (the ``recording`` sink counts calls per idempotency
key). One case is physics, not a bug: a process killed *after* the sink accepted a delivery and
*before* the ledger recorded it leaves the outcome unknown; the claim's lease runs out and the delivery
is sent again with the same idempotency key, which a real sink uses to drop the copy (that is what the
key is for). The check allows a count of 2 only for such in-doubt deliveries (their ledger history
shows the expired claim) and only when the test says processes were killed; it reports how many.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hub.ledger import schema as t

AMQP_BASE = os.environ.get("HUB_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
RABBIT_START = "rabbitmq-server -detached"

_TEMPLATE: dict[str, Any] = {
    "kind": "cn.digital.special",
    "issue_date": "2025-10-02",
    "currency": "CNY",
    "seller": {
        "name": "江苏长江机械制造有限公司",
        "tax_id": "91320200MA1MXK8P32",
        "address": "无锡市新吴区长江路7号 0510-81234567",
    },
    "buyer": {
        "name": "杭州明远贸易有限公司",
        "tax_id": "91330106MA2H0B3C4L",
        "address": "杭州市西湖区文三路90号 0571-88001234",
    },
}


def invoice(number: str, amount: int) -> dict[str, Any]:
    """A valid digitalised VAT invoice with this 20-digit number and a net amount in yuan."""
    net = Decimal(amount).quantize(Decimal("0.01"))
    tax = (net * Decimal("0.13")).quantize(Decimal("0.01"))
    return {
        **_TEMPLATE,
        "number": number,
        "lines": [
            {
                "name": "*机械设备*数控车床配件",
                "spec": "CK6140",
                "unit": "套",
                "quantity": "1",
                "unit_price": str(net),
                "amount": str(net),
                "tax_rate": "0.13",
                "tax_amount": str(tax),
            }
        ],
        "totals": {"net": str(net), "tax": str(tax), "gross": str(net + tax)},
    }


def write_invoices(folder: Path, count: int, *, per_file: int = 50, series: int = 0) -> list[str]:
    """``count`` distinct invoices in JSON files of ``per_file`` invoices each; returns their numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [f"2532{series:04d}{i:012d}" for i in range(count)]
    for f, start in enumerate(range(0, count, per_file)):
        batch = [invoice(n, 100 + int(n[-6:])) for n in numbers[start : start + per_file]]
        tmp = folder / f".{f:06d}.tmp"
        tmp.write_text(json.dumps(batch, ensure_ascii=False), encoding="utf-8")
        tmp.rename(folder / f"{f:06d}.json")
    return numbers


# ---------------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------------
def rabbitmqctl(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


class Vhost:
    """A RabbitMQ virtual host of its own for one test: its queues are invisible to every other test."""

    def __init__(self) -> None:
        self.name = f"hubtest_{uuid.uuid4().hex[:10]}"
        self.url = f"{AMQP_BASE}/{self.name}"

    def __enter__(self) -> Vhost:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def __exit__(self, *exc: object) -> None:
        rabbitmqctl("delete_vhost", self.name, check=False)


# ---------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------
@dataclass
class Accounting:
    invoices: int = 0
    deliveries: int = 0
    states: Counter[str] = field(default_factory=Counter)
    in_doubt_redelivered: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.invoices} invoices, {self.deliveries} deliveries {dict(self.states)}, "
            f"{self.in_doubt_redelivered} in-doubt redelivered"
        )


def recording_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=10)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'received'").fetchone():
            return {}  # the sink has not created its table yet
        return dict(db.execute("SELECT key, count FROM received").fetchall())
    finally:
        db.close()


def check_accounting(
    ledger_url: str,
    sinks: dict[str, Path],
    *,
    expected_numbers: list[str] | None = None,
    processes_killed: bool = False,
    deliveries_per_event: int = 1,
) -> Accounting:
    """The accounting check; fails the test with every problem found. ``sinks``: destination name →
    that recording sink's file. ``deliveries_per_event`` is 1 unless a test made copies of deliveries on
    purpose (to race claims). Returns the figures for the test to assert more on."""
    acc = Accounting()
    engine = sa.create_engine(ledger_url)
    d, v, tr, dl = t.deliveries, t.invoice_versions, t.transitions, t.dead_letters
    try:
        with engine.connect() as conn:
            numbers = list(conn.execute(sa.select(v.c.number)).scalars())
            acc.invoices = len(numbers)
            events = list(conn.execute(sa.select(t.events.c.id)).scalars())
            rows = conn.execute(
                sa.select(d.c.id, d.c.event_id, d.c.destination, d.c.idem_key, d.c.state, d.c.duplicate_of)
            ).all()
            # A delivery whose claim lapsed (its worker was killed) may have reached the sink once for
            # every claim that lapsed, plus the call that finally delivered it. A claim lapses by its
            # lease running out, or, on SQLite, by the next `hub run` taking back the claims of the
            # run that was killed ("recovered after a crash").
            lease_expired = Counter(
                conn.execute(
                    sa.select(tr.c.delivery_id).where(
                        tr.c.detail.in_(("claim lease expired", "recovered after a crash"))
                    )
                ).scalars()
            )
            letters = dict(
                conn.execute(
                    sa.select(dl.c.delivery_id, dl.c.traceback).where(
                        dl.c.stage == "delivery", dl.c.state == "open"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    problems = acc.problems
    if expected_numbers is not None:
        missing = sorted(set(expected_numbers) - set(numbers))
        if missing:
            problems.append(f"{len(missing)} invoice(s) never accepted, e.g. {missing[:5]}")
    if len(numbers) != len(set(numbers)):
        problems.append("an invoice number was accepted as two versions")
    acc.deliveries = len(rows)
    per_event: dict[tuple[str, str], int] = Counter((r.event_id, r.destination) for r in rows)
    for event_id in events:
        for dest in sinks:
            if per_event.get((event_id, dest), 0) != deliveries_per_event:
                problems.append(
                    f"event {event_id} has {per_event.get((event_id, dest), 0)} deliveries to {dest}"
                )
    counts = {dest: recording_counts(path) for dest, path in sinks.items()}
    delivered_keys: Counter[tuple[str, str]] = Counter()
    for r in rows:
        acc.states[r.state] += 1
        got = counts.get(r.destination, {}).get(r.idem_key, 0)
        if r.state == t.DELIVERED:
            delivered_keys[(r.destination, r.idem_key)] += 1
            if got == 1:
                continue
            if processes_killed and 1 < got <= 1 + lease_expired[r.id]:
                acc.in_doubt_redelivered += 1
                continue
            problems.append(
                f"delivery {r.id} ({r.destination}) is delivered but the sink counted {got} call(s)"
            )
        elif r.state == t.SKIPPED:
            continue  # a duplicate: its key must be delivered exactly once (checked below)
        elif r.state == t.DEAD:
            if r.id not in letters or not letters[r.id]:
                problems.append(f"delivery {r.id} is dead without an open dead letter with a traceback")
            if got:
                problems.append(f"dead delivery {r.id} reached the sink {got} time(s)")
        else:
            problems.append(f"delivery {r.id} ended {r.state!r}, not delivered/skipped/dead")
    for r in rows:
        if r.state == t.SKIPPED and delivered_keys[(r.destination, r.idem_key)] != 1:
            problems.append(f"delivery {r.id} was skipped as a duplicate but its key was never delivered")
    for (dest, key), n in delivered_keys.items():
        if n != 1:
            problems.append(f"key {key[:12]} delivered by {n} deliveries to {dest}")
    for dest, per_key in counts.items():
        for key in per_key:
            if (dest, key) not in delivered_keys:
                problems.append(f"{dest} holds key {key[:12]} that the ledger does not show as delivered")
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        pytest.fail(f"accounting failed ({acc.summary()}):\n  {shown}{more}")
    return acc
