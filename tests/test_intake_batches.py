"""A source's items are taken in batches of ``worker.batch_size`` items, or fewer once they weigh
``worker.batch_bytes`` together: a batch is one intake transaction and one bus message per destination,
so a sink's ``deliver_batch`` sees at most one batch's invoices at a time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import hub
from hub.factory import invoice_json
from hub.testing import HubHarness, MockSettings, mock_source
from tests.conftest import run_hub

#: Each document: one invoice's JSON padded with whitespace to about 100 KB (a scanned PDF's size).
DOC_BYTES = 100_000


class BatchRecorder(hub.Sink):
    """A sink that notes how many requests each ``deliver_batch`` call brought."""

    type_name: ClassVar[str] = "test.batch_recorder"
    Settings = MockSettings
    sizes: ClassVar[list[int]] = []
    _lock = threading.Lock()

    def deliver(self, request: hub.DeliveryRequest) -> hub.Receipt:
        return self.deliver_batch([request])[0]

    def deliver_batch(self, requests: list[hub.DeliveryRequest]) -> list[hub.Receipt]:
        with self._lock:
            type(self).sizes.append(len(requests))
        return [hub.Receipt(remote_ref=r.idempotency_key[:12]) for r in requests]


def _documents(count: int) -> list[hub.Incoming]:
    items = []
    for i in range(count):
        body = invoice_json(i)
        content = body + b" " * (DOC_BYTES - len(body))
        doc = hub.Document(content=content, media_type="application/json", filename=f"{i}.json")
        items.append(hub.Incoming(documents=[doc], key=doc.filename or "", checkpoint=str(i)))
    return items


def _run(tmp_path: Path, worker: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    BatchRecorder.sizes = []
    source = mock_source(_documents(24))
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": BatchRecorder.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, BatchRecorder],
        worker=worker,
    )
    return harness.run(timeout=60), list(BatchRecorder.sizes)


def test_heavy_items_close_a_batch_before_its_count_does(tmp_path: Path) -> None:
    summary, sizes = _run(tmp_path, {"batch_size": 500, "batch_bytes": 3 * DOC_BYTES})
    assert summary["delivered"] == 24, summary
    assert sum(sizes) == 24
    # Three documents weigh batch_bytes: no batch holds more, though 500 items would fit by count.
    assert max(sizes) == 3, sizes


def test_light_items_fill_a_batch_by_count(tmp_path: Path) -> None:
    summary, sizes = _run(tmp_path, {"batch_size": 8, "batch_bytes": 100 * DOC_BYTES})
    assert summary["delivered"] == 24, summary
    assert sum(sizes) == 24
    assert max(sizes) == 8, sizes


def test_hub_check_names_a_bad_batch_bytes_by_its_yaml_path(tmp_path: Path) -> None:
    (tmp_path / "hub.yaml").write_text(
        f"ledger: sqlite:///{tmp_path}/ledger.db\nworker:\n  batch_size: 500\n  batch_bytes: 0\n",
        encoding="utf-8",
    )
    proc = run_hub("check", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "worker.batch_bytes" in out and "line 4" in out, out
