"""An auditor's machine: a fresh virtualenv with nothing but the hub installed (from this source tree,
not editable), no hub.yaml, no archive, no ledger — `hub archive verify-export` must check a bundle
there, and fail loudly when one file in it changed."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from hub import ConnectorContext
from tests.test_archive_store import make_invoice, make_request

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HUB_", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.slow
def test_verify_export_on_a_fresh_virtualenv(tmp_path: Path) -> None:
    from invoice_hub_plugins.archive_fs import ArchiveFs

    # The archive's side: archive three invoices, export their month with the real `hub` command.
    site = tmp_path / "site"
    site.mkdir()
    conn = ArchiveFs(ArchiveFs.Settings(path=site / "archive"), ConnectorContext("archive", site / "data"))
    for n in (1, 2, 3):
        conn.deliver(make_request(make_invoice(n)))
    config = {
        "ledger": f"sqlite:///{site}/ledger.db",
        "data_dir": str(site / "data-root"),
        "connectors": {"archive": {"type": "archive.fs", "settings": {"path": str(site / "archive")}}},
    }
    (site / "hub.yaml").write_text(yaml.safe_dump(config))
    bundle = tmp_path / "2026-10.zip"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub",
            "-c",
            str(site / "hub.yaml"),
            "archive",
            "export",
            "--period",
            "2026-10",
            str(bundle),
        ],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    fingerprint = exported.stdout.split("signing key fingerprint: ", 1)[1].splitlines()[0]

    # The auditor's side: a new virtualenv, the hub installed into it, an empty folder.
    env_dir = tmp_path / "auditor-venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert install.returncode == 0, f"pip install of the hub failed:\n{install.stdout}\n{install.stderr}"
    desk = tmp_path / "desk"
    desk.mkdir()
    where = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "import hub, invoice_hub_plugins._archive as a; print(hub.__file__, a.__file__)",
        ],
        cwd=desk,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert str(env_dir) in where.stdout and str(REPO) not in where.stdout, where.stdout + where.stderr
    hub_cmd = [str(env_dir / "bin" / "hub"), "archive", "verify-export"]

    ok = subprocess.run(
        [*hub_cmd, str(bundle), "--fingerprint", fingerprint],
        cwd=desk,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "RESULT: OK" in ok.stdout and fingerprint in ok.stdout

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(tampered, "w") as zout:
        victim = next(n for n in zin.namelist() if n.startswith("originals/"))
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, data.replace(b"Invoice", b"Invoicf") if item.filename == victim else data)
    bad = subprocess.run(
        [*hub_cmd, str(tampered)], cwd=desk, capture_output=True, text=True, timeout=120, env=_clean_env()
    )
    assert bad.returncode == 1
    assert f"FAILED {victim}: sha256 is" in bad.stdout
    assert "RESULT: FAILED" in bad.stdout
