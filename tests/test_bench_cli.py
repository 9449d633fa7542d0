"""`hub bench` (the benchmark the README names) runs on a fresh install and reports every figure; the
figures themselves are measured by hand (docs/benchmarks.md), never asserted as timings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.conftest import run_hub

pytestmark = [pytest.mark.slow]


def test_bench_reports_every_measurement(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = orjson.loads(
        run_hub(
            "bench",
            "--count",
            "120",
            "--repeat",
            "2",
            "--threads",
            "3",
            "--batch-size",
            "40",
            "--json",
            cwd=tmp_path,
            env={"TMPDIR": str(scratch)},
        ).stdout
    )
    # The measurements' files are kept until the last one (so no measurement pays for the clean-up of
    # the one before), then removed.
    assert list(scratch.iterdir()) == []
    steps, floor = out["steps"], out["ledger_floor"]
    assert steps["count"] == 120 and steps["validate_canonical_hash_us"] > 0
    assert floor["count"] == 120
    assert floor["total_us"] == pytest.approx(
        floor["intake_us"] + floor["claim_us"] + floor["record_us"], abs=0.2
    )
    for name in ("e2e_recording", "e2e_archive", "e2e_recording_process", "e2e_archive_process"):
        assert out[name]["delivered"] == 120, (name, out[name])
        assert out[name]["per_second"] > 0
        # CPU per invoice of the hub's process, and of the worker processes it waited for (with batches
        # of 40, below the helper's minimum, the helper records nothing here)
        assert out[name]["cpu_us"] > 0, (name, out[name])
        assert out[name]["other_cpu_us"] > 0 or not out[name]["processes"], (name, out[name])
    assert out["worker_processes"] >= 2  # one per core, at least two
    assert out["e2e_archive_process"]["processes"] == out["worker_processes"]
    assert out["e2e_recording_double"]["delivered"] == 240
    assert out["baseline"]["count"] == 120 and out["ratio_to_baseline"] > 0
    # The figures with targets (and the baseline) are the median of --repeat runs, the lower of the
    # middle two for an even count, with every run's rate beside it.
    assert out["repeat"] == 2
    assert out["worker"]["threads"] == 3 and out["worker"]["batch_size"] == 40
    for name in ("e2e_recording", "e2e_archive", "e2e_archive_process"):  # what the runs' hub.yaml said
        assert out[name]["worker"]["threads"] == 3 and out[name]["worker"]["batch_size"] == 40, name
    for name in ("e2e_recording", "e2e_archive", "baseline"):
        runs = out[name]["runs"]
        assert len(runs) == 2 and out[name]["per_second"] == min(runs), (name, out[name])
    archive = out["archive_floor"]
    assert archive["count"] == 120 and archive["ceiling_per_second"] > 0
    assert archive["total_us"] == pytest.approx(archive["files_us"] + archive["sync_us"], abs=0.2)


def test_bench_prints_every_figure_with_its_target(tmp_path: Path) -> None:
    proc = run_hub("bench", "--count", "60", cwd=tmp_path)
    text = proc.stdout
    for line in (
        "threads 2, batch_size 500",  # the worker settings of the end-to-end runs
        "= validate+canon+hash",
        "(target ≤ 50 µs: ",
        "ledger rows alone",
        "to the recording sink",
        "target ≥ 5,000/s: ",
        "median of 3 runs: ",
        "to archive.fs (fsync)",
        "target ≥ 2,000/s: ",
        "archive files alone",
        "CPU an invoice",  # under each end-to-end figure, with the rate that CPU allows on these cores
        "+ helper ",
        "+ worker processes ",
        "invoices/s)",
        "worker process",
        "bare baseline",
        "hub / baseline:",
    ):
        assert line in text, (line, text)
    # Each of the three targets says whether this run met it ("met" or "NOT met"; which one depends
    # on the machine, so only that one of them is there is checked).
    assert text.count("met)") == 3, text
    # Progress goes to stderr, one line per measurement, while the figures go to stdout.
    assert "archive.fs's file work alone" in proc.stderr and "bare baseline on 60" in proc.stderr
