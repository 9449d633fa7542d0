"""Benchmark: files of many invoices each, taken in by ``hub run --until-idle``, by batch settings.

    python scripts/bench_batch_bytes.py                    # 300 files of 100 invoices, under $TMPDIR
    python scripts/bench_batch_bytes.py --files 100 --per-file 200

``worker.batch_size`` counts a source's items, and one item can be a file of a hundred invoices: with
batches of 200 such files one intake transaction held 20,000 invoices. ``worker.batch_bytes`` ends a
batch once its items weigh that much. For each setting this runs the real ``hub run --until-idle`` (a
``files`` source, the ``recording`` sink, the intake helper) in a process of its own and prints the
time and the largest resident memory of its processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from hub.config import WorkerConfig
from hub.factory import invoice_data

#: hub.yaml's defaults, as ``worker`` declares them.
DEFAULTS = WorkerConfig()

SETTINGS = [
    ("batches of 200 items, no byte cap (before stop 18)", 200, 1_000_000_000),
    ("batches of 500 items, no byte cap", 500, 1_000_000_000),
    (
        f"batches of {DEFAULTS.batch_size} items or {DEFAULTS.batch_bytes // 2**20} MiB (the defaults)",
        DEFAULTS.batch_size,
        DEFAULTS.batch_bytes,
    ),
]


def make_inbox(folder: Path, files: int, per_file: int) -> int:
    folder.mkdir(parents=True)
    size = 0
    for f in range(files):
        data = orjson.dumps([invoice_data(f * per_file + i) for i in range(per_file)])
        (folder / f"{f:05d}.json").write_bytes(data)
        size += len(data)
    return size


def run(base: Path, inbox: Path, batch_size: int, batch_bytes: int) -> tuple[float, float, str]:
    """One ``hub run --until-idle`` over a copy of ``inbox``: (seconds, peak MB of its processes, the
    run's ledger line)."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    copy = work / "inbox"
    copy.mkdir()
    for f in inbox.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (work / "hub.yaml").write_text(
        orjson.dumps(
            {
                "ledger": f"sqlite:///{work}/ledger.db",
                "data_dir": f"{work}/.hub",
                "logging": {"level": "warning"},
                "worker": {"batch_size": batch_size, "batch_bytes": batch_bytes},
                "connectors": {
                    "inbox": {"type": "files", "settings": {"path": str(copy), "min_age": 0}},
                    "rec": {"type": "recording", "settings": {"path": f"{work}/received.db"}},
                },
                "routes": [{"from": "inbox", "to": "rec"}],
            }
        ).decode(),
        encoding="utf-8",
    )
    # A small Python parent that waits for the run, so RUSAGE_CHILDREN is that run's alone.
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run([sys.executable, '-m', 'hub', '-c', 'hub.yaml', 'run', '--until-idle'], "
        "capture_output=True, text=True); "
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
        "print(time.perf_counter() - t, peak, p.returncode); "
        "print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-2000:])"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=work, capture_output=True, text=True, check=True)
    first, last = out.stdout.strip().splitlines()[:2]
    seconds, rss_kb, code = first.split()
    if code != "0":
        raise SystemExit(f"hub run failed ({code}): {last}")
    return float(seconds), int(rss_kb) / 1024, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--per-file", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hub-batch-bytes-") as tmp:
        base = Path(tmp)
        print(f"writing {args.files} files of {args.per_file} invoices...", file=sys.stderr)
        size = make_inbox(base / "inbox", args.files, args.per_file)
        each = size / args.files / 1024
        print(f"{args.files} files, {each:.0f} KB each, {args.files * args.per_file} invoices")
        for label, batch_size, batch_bytes in SETTINGS:
            print(f"  {label}...", file=sys.stderr)
            t0 = time.perf_counter()
            seconds, peak_mb, ledger = run(base, base / "inbox", batch_size, batch_bytes)
            print(f"  {label:<52} {seconds:6.2f} s, largest process {peak_mb:6.1f} MB")
            print(f"    {ledger}  ({time.perf_counter() - t0:.1f} s with the copy)")


if __name__ == "__main__":
    main()
