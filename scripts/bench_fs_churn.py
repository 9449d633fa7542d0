"""Benchmark: what creating an archive's files costs right after many files were deleted.

    python scripts/bench_fs_churn.py                 # 10,000 files, 3 rounds, under $TMPDIR
    python scripts/bench_fs_churn.py --count 5000 --rounds 4 --path /srv/archive-disk

Each round creates ``count`` files the way ``archive.fs`` does (a sharded folder ``aa/bb/``, a temp
file written, linked to its name, unlinked; a ``sync`` per 500), then deletes them all. It prints the
time per file of each round. On ext4 without a journal the kernel skips the inodes freed in the last
minutes one lookup at a time when it allocates a new one (``recently_deleted`` in ``fs/ext4/ialloc.c``),
so the rounds after the first get slower; on a file system that does not do that they stay flat. This
is why ``hub bench`` removes its measurements' files only after the last measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path


def one_round(base: Path, count: int, tag: str) -> tuple[float, float]:
    """Create ``count`` files under ``base``; returns (µs per file, of which sync)."""
    made: set[Path] = set()
    synced = 0.0
    t0 = time.perf_counter()
    for i in range(count):
        name = hashlib.sha256(f"{tag}:{i}".encode()).hexdigest()
        folder = base / name[:2] / name[2:4]
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        part = folder / f".{name}.tmp"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, b"x" * 1500)
        finally:
            os.close(fd)
        os.link(part, folder / name)
        os.unlink(part)
        if i % 500 == 499:
            t = time.perf_counter()
            os.sync()
            synced += time.perf_counter() - t
    elapsed = time.perf_counter() - t0
    return elapsed / count * 1e6, synced / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000, help="files per round (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="create-and-delete rounds (default 3)")
    parser.add_argument("--path", type=Path, default=None, help="folder to work in (default: $TMPDIR)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fs-churn-", dir=args.path))
    try:
        os.sync()
        for n in range(1, args.rounds + 1):
            base = root / f"round-{n}"
            per_file, sync = one_round(base, args.count, str(n))
            line = f"round {n}: {args.count} files, {per_file:.0f} µs a file ({sync:.0f} of it sync)"
            print(line, flush=True)
            t = time.perf_counter()
            shutil.rmtree(base)
            os.sync()
            print(f"         deleted them in {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
