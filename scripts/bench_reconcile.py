"""Reconcile at scale: two synthetic inventories of N invoices each, with a gap every K invoices.

    python scripts/bench_reconcile.py [N] [K]

Prints the time to stream both sides into the temporary store, compare and resolve the gaps against
the ledger, and the process's peak resident memory, to show that memory does not grow with N.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import yaml

from hub import ConnectorSettings, Inventory, InventoryItem, hookimpl
from hub.config import load_config
from hub.engine import Hub
from hub.reconcile import reconcile


class SyntheticSettings(ConnectorSettings):
    count: int = 1000
    skip_every: int = 0  # leave out every k-th invoice (a gap on this side)
    change_every: int = 0  # other content for every k-th invoice


class Synthetic(Inventory):
    type_name = "synthetic"
    Settings = SyntheticSettings

    def inventory(self, since: date | None = None, until: date | None = None) -> Iterator[InventoryItem]:
        s: SyntheticSettings = self.settings  # type: ignore[assignment]
        day0 = date(2026, 1, 1)
        for i in range(s.count):
            if s.skip_every and i % s.skip_every == 0:
                continue
            content = f"{i}:{'changed' if s.change_every and i % s.change_every == 1 else 'same'}"
            yield InventoryItem(
                identity=f"CN:{i:020d}",
                content_hash=hashlib.sha256(content.encode()).hexdigest(),
                issue_date=day0 + timedelta(days=i % 300),
                gross=Decimal(i % 9973) + Decimal("0.50"),
                currency="CNY",
                number=f"{i:020d}",
            )


plugin = SimpleNamespace(hub_register_connector_types=hookimpl(lambda: [Synthetic]))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "hub.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "ledger": f"sqlite:///{tmp}/ledger.db",
                    "data_dir": f"{tmp}/.hub",
                    "connectors": {
                        "a": {"type": "synthetic", "settings": {"count": n, "skip_every": k}},
                        "b": {
                            "type": "synthetic",
                            "settings": {"count": n, "skip_every": k + 1, "change_every": k},
                        },
                    },
                }
            )
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with Hub(load_config(cfg), extra_plugins=[("bench", plugin)]) as hub:
            started = time.perf_counter()
            report = reconcile(hub, "a", "b", summary=True)
            elapsed = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = report.gap_counts()
    print(f"items: a {report.counts['a']:,}, b {report.counts['b']:,}; matched {report.counts['matched']:,}")
    print(
        f"gaps: only in a {counts['only_in_a']:,}, only in b {counts['only_in_b']:,}, "
        f"differs {counts['differs']:,}"
    )
    print(f"days in summary: {len(report.summary or [])}")
    print(
        f"reconcile took {elapsed:.1f} s ({(report.counts['a'] + report.counts['b']) / elapsed:,.0f} items/s)"
    )
    print(f"peak RSS {peak / 1024:.0f} MiB (before the run {before / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
