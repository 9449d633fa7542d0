"""Benchmark: archive N invoices into archive.fs (every invoice durable before its receipt), then
verify them all.

    python scripts/bench_archive.py                  # 10,000 invoices, deliver() each, 4 threads
    python scripts/bench_archive.py --batch 200      # deliver_batch(): three flushes per 200 invoices
    python scripts/bench_archive.py --count 2000 --path /srv/archive-bench --encrypt

Each invoice is one XML original (about 1 KB) plus its metadata record. ``deliver()`` writes each
file with an fsync of the file and of its folder (about five fsyncs per invoice on a new archive,
where the shard folders are still being created); ``deliver_batch()`` writes a whole batch with three
flushes (originals' bytes; their keys and the records' bytes; the records' keys). ``--threads`` is
the number of concurrent callers, as the hub's ``worker.threads``. Only the delivery calls are timed
(building the test invoices is not). Verify checks the archive alone (no ledger cross-check): it
re-reads every object, recomputes SHA-256 and SM3, re-validates each record's invoice and canonical
hash, parses each XML original and lists every object for orphans. Peak memory is the process's max
RSS after each phase.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import structlog
from invoice_hub_plugins._archive import Verifier
from invoice_hub_plugins.archive_fs import ArchiveFs

from hub import ConnectorContext, DeliveryRequest, Document, Event, Invoice
from hub.canonical import content_hash

XML = """<?xml version="1.0" encoding="UTF-8"?>
<EInvoice><Header><InvoiceNumber>{number}</InvoiceNumber><IssueDate>{day}</IssueDate></Header>
<Seller><Name>江苏长江机械制造有限公司</Name><TaxID>91320200MA1MXK8P32</TaxID></Seller>
<Buyer><Name>杭州明远贸易有限公司</Name><TaxID>91330106MA2H0B3C4L</TaxID></Buyer>
<Lines><Line><Name>*机械设备*数控车床配件</Name><Amount>{net}</Amount><TaxRate>0.13</TaxRate>
<TaxAmount>{tax}</TaxAmount></Line></Lines><Totals><Gross>{gross}</Gross></Totals>{pad}</EInvoice>
"""


def requests(count: int) -> Iterator[DeliveryRequest]:
    start = date(2026, 1, 1)
    for n in range(count):
        net = Decimal(1000 + n % 997).quantize(Decimal("0.01"))
        tax = (net * Decimal("0.13")).quantize(Decimal("0.01"))
        day = start + timedelta(days=n % 300)
        invoice = Invoice.model_validate(
            {
                "kind": "cn.digital.special",
                "number": f"2632200000{n:010d}",
                "issue_date": day,
                "seller": {"name": "江苏长江机械制造有限公司", "tax_id": "91320200MA1MXK8P32"},
                "buyer": {"name": "杭州明远贸易有限公司", "tax_id": "91330106MA2H0B3C4L"},
                "lines": [
                    {"name": "*机械设备*数控车床配件", "amount": net, "tax_rate": "0.13", "tax_amount": tax}
                ],
                "totals": {"net": net, "tax": tax, "gross": net + tax},
            }
        )
        xml = XML.format(number=invoice.number, day=day, net=net, tax=tax, gross=net + tax, pad=" " * 200)
        doc = Document(content=xml.encode(), media_type="application/xml", filename=f"{invoice.number}.xml")
        chash = content_hash(invoice)
        event = Event(
            source="bench",
            identity=invoice.identity,
            content_hash=chash,
            invoice=invoice,
            document_sha256=doc.sha256,
        )
        yield DeliveryRequest(
            event=event, destination="archive", idempotency_key=chash, attempt=1, documents=[doc]
        )


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chunks(count: int, size: int) -> Iterator[list[DeliveryRequest]]:
    batch: list[DeliveryRequest] = []
    for request in requests(count):
        batch.append(request)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="concurrent deliveries, as the hub's worker.threads (default 4)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="deliver_batch() with this many invoices per call (three flushes per batch); 0: deliver() each",
    )
    parser.add_argument(
        "--path", type=Path, help="archive folder (default: a new temp folder, removed after)"
    )
    parser.add_argument("--encrypt", action="store_true", help="AES-GCM at rest with a random key")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    root = args.path or Path(tempfile.mkdtemp(prefix="bench-archive-"))
    settings: dict[str, object] = {"path": str(root / "archive")}
    if args.encrypt:
        settings["encryption"] = {"key_id": "bench", "key": base64.b64encode(os.urandom(32)).decode()}
    conn = ArchiveFs(ArchiveFs.Settings.model_validate(settings), ConnectorContext("archive", root / "data"))
    encryption = "on" if args.encrypt else "off"
    where = root / "archive"
    mode = f"deliver_batch of {args.batch}" if args.batch else "deliver() each"
    print(f"archive.fs at {where}: {args.count} invoices, {args.threads} thread(s), {mode}")
    print(f"encryption {encryption}")
    print(f"peak memory (max RSS) before: {peak_mib():.1f} MiB")
    try:
        spent = user = system = 0.0
        per_round = max(256, args.threads * args.batch)
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            for chunk in chunks(args.count, per_round):  # built untimed, delivered timed
                t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
                if args.batch:
                    parts = [chunk[i : i + args.batch] for i in range(0, len(chunk), args.batch)]
                    for results in pool.map(conn.deliver_batch, parts):
                        failed = [r for r in results if isinstance(r, Exception)]
                        if failed:
                            raise failed[0]
                else:
                    for _ in pool.map(conn.deliver, chunk):
                        pass
                spent += time.perf_counter() - t0
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                user += r1.ru_utime - r0.ru_utime
                system += r1.ru_stime - r0.ru_stime
        print(f"archive: {args.count} invoices in {spent:.2f} s = {args.count / spent:,.0f} invoices/s")
        print(
            f"CPU per invoice: {user / args.count * 1e6:.0f} µs in Python and libraries (user), "
            f"{system / args.count * 1e6:.0f} µs in the kernel (system)"
        )
        print(f"peak memory after archiving: {peak_mib():.1f} MiB")

        t0 = time.perf_counter()
        report = Verifier(conn.archive).run()
        spent = time.perf_counter() - t0
        n = report.counts["records"]
        print(
            f"verify: {n} invoices ({report.counts['originals']} originals, "
            f"{report.counts['objects_listed']} objects listed) in {spent:.2f} s = "
            f"{n / spent:,.0f} invoices/s; " + ("OK" if report.ok else f"{len(report.findings)} problems")
        )
        print(f"peak memory after verify: {peak_mib():.1f} MiB")
    finally:
        conn.close()
        if args.path is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
