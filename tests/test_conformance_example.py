"""contrib/example-plugin (Acme Ledger, with its own HTTP sandbox) passes the conformance kit, run the way
a vendor runs it: pytest in the package, not installed (the kit builds the connector from its class)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "example-plugin"


def test_example_declares_its_entry_point_and_api() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "invoice-hub-acme-ledger"
    assert project["entry-points"]["invoice_hub"] == {"acme-ledger": "invoice_hub_acme_ledger"}
    init = (EXAMPLE / "invoice_hub_acme_ledger" / "__init__.py").read_text()
    assert 'HUB_API = "1.0"' in init


@pytest.mark.slow
def test_example_plugin_passes_the_kit_against_its_sandbox() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=EXAMPLE,
        env={**os.environ, "PYTHONPATH": str(EXAMPLE)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 23, summary
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("is not a source" in line for line in skips), skips
