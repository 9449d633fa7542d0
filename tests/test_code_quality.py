"""The repository's own checks, so CI keeps them: ``ruff check``, ``ruff format --check`` and ``mypy``
(strict, over ``hub/``, as pyproject.toml configures it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["hub", "plugins", "tests", "contrib", "scripts"]

pytestmark = [pytest.mark.slow]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing_to_fix() -> None:
    lint = _run("ruff", "check", *CHECKED)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", *CHECKED)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_finds_no_error_in_the_core(tmp_path: Path) -> None:
    typed = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert typed.returncode == 0, typed.stdout + typed.stderr
    assert "Success: no issues found" in typed.stdout
