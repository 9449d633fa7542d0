"""Exactly once under faults: 200 invoices through each platform sandbox while it answers 20% of calls
with 503, throws 429 bursts and holds back answers after it already issued. Each invoice is delivered
the way the worker does it: ``deliver()`` again after a ``TransientError`` (after ``retry_after`` for a
``RateLimited``, capped small here), from 8 threads sharing one connector. The sandbox's own count is
the proof: every order issued exactly once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub import RateLimited, Receipt, TransientError
from hub.canonical import content_hash
from tests.sandbox_server import run_asgi
from tests.test_einvoice_platforms import PLATFORMS, create_sandbox, make_connector, make_invoice, request_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 200
MAX_ATTEMPTS = 80


def deliver_until_done(connector: Any, n: int) -> tuple[Receipt, int]:
    invoice = make_invoice(1000 + n)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return connector.deliver(request_for(invoice, attempt=attempt)), attempt
        except RateLimited as exc:
            time.sleep(min(exc.retry_after, 0.05))
        except TransientError:
            time.sleep(0.005)
    raise AssertionError(f"invoice {n} not issued after {MAX_ATTEMPTS} attempts")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_order_issued_exactly_once_under_faults(platform: str, tmp_path: Path) -> None:
    faults = {
        "error_rate": 0.2,
        "rate_429": 0.03,
        "burst_length": 3,
        "retry_after": 0.05,
        "timeout_after_issue_rate": 0.08,
        "hang_seconds": 1.0,
        "seed": 7,
    }
    with run_asgi(create_sandbox(platform, issue_delay=0.03, faults=faults)) as url:
        with (
            make_connector(platform, url, tmp_path, read_timeout=0.25, poll_interval=0.02) as connector,
            ThreadPoolExecutor(max_workers=8) as pool,
        ):
            results = list(pool.map(lambda n: deliver_until_done(connector, n), range(COUNT)))
        stats = httpx.get(f"{url}/_sandbox/stats").json()

    receipts = [r for r, _ in results]
    numbers = [r.remote_ref for r in receipts]
    assert len(set(numbers)) == COUNT and all(n and len(n) == 20 for n in numbers)
    expected_orders = {connector.order_number(content_hash(make_invoice(1000 + n))) for n in range(COUNT)}
    assert set(stats["issues_per_order"]) == expected_orders
    assert set(stats["issues_per_order"].values()) == {1}
    assert stats["double_issued"] == [] and stats["issued"] == COUNT
    assert stats["counters"]["submissions"] == COUNT
    # The faults really happened, including answers lost after the platform had issued.
    counters = stats["counters"]
    assert counters["fault_5xx"] > 50 and counters["fault_429"] > 5
    assert counters["fault_timeout_after_issue"] > 3
    assert max(attempts for _, attempts in results) > 1
    assert stats["token_fetches"] == 1
