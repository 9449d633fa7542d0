"""`hub new-plugin NAME`: the generated package passes the conformance kit as generated, declares the
right entry point, and (slow) installs with `pip install -e` so `hub plugins` and `hub run` use it."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from hub.connectors import HUB_API_VERSION
from hub.testing_golden import golden_set


def _hub(*args: str, cwd: Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "hub", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    result = _hub("new-plugin", "acme", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "invoice-hub-acme" in result.stdout and "'acme'" in result.stdout
    return tmp_path / "invoice-hub-acme"


def test_generated_package_passes_the_conformance_kit(generated: Path) -> None:
    files = sorted(str(p.relative_to(generated)) for p in generated.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "invoice_hub_acme/__init__.py",
        "invoice_hub_acme/backend.py",
        "invoice_hub_acme/connector.py",
        "pyproject.toml",
        "tests/test_conformance.py",
    ]
    # Not installed: the kit constructs the connector from the class, so PYTHONPATH is enough.
    env = {**os.environ, "PYTHONPATH": str(generated)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=generated,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 20, summary
    # the only skips are the source tests (the skeleton is a sink + inventory)
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("is not a source" in line for line in skips), skips


def test_generated_pyproject_declares_the_entry_point(generated: Path) -> None:
    meta = tomllib.loads((generated / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "invoice-hub-acme"
    assert project["entry-points"]["invoice_hub"] == {"acme": "invoice_hub_acme"}
    assert any(dep.startswith("invoice-hub>=") for dep in project["dependencies"])
    assert meta["tool"]["setuptools"]["packages"] == ["invoice_hub_acme"]
    # the module the entry point names is a plugin built for this hub's API
    code = (
        "import invoice_hub_acme as m; from hub.plugins import build_plugins;"
        "p = build_plugins(extra=[('acme', m)]);"
        "print(m.HUB_API, p.connector_types['acme'].__name__, sorted(p.connector_types['acme'].roles()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(generated)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out[0] == HUB_API_VERSION and out[1] == "Acme"
    assert "sink" in " ".join(out[2:]) and "inventory" in " ".join(out[2:])


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    bad = _hub("new-plugin", "Acme Ledger", "--dir", str(tmp_path), cwd=tmp_path)
    assert bad.returncode != 0 and "lower-case letters and digits" in bad.stderr
    target = tmp_path / "invoice-hub-acme"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    again = _hub("new-plugin", "acme", "--dir", str(tmp_path), cwd=tmp_path)
    assert again.returncode != 0 and "exists and is not empty" in again.stderr
    assert (target / "keep.txt").read_text() == "mine"


def test_new_plugin_spells_multi_word_names(tmp_path: Path) -> None:
    result = _hub("new-plugin", "acme-ledger", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "invoice-hub-acme-ledger"
    connector = (root / "invoice_hub_acme_ledger" / "connector.py").read_text()
    assert 'type_name: ClassVar[str] = "acme.ledger"' in connector and "class AcmeLedger(" in connector
    assert "${ACME_LEDGER_TOKEN}" in (root / "README.md").read_text()


@pytest.mark.slow
def test_pip_install_e_then_hub_plugins_and_hub_run(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    # The new venv sees what this interpreter has installed (the hub among it), whether this one is
    # the system's Python or a venv itself (where --system-site-packages would skip a level).
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "_parent_site.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    )
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(generated)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    listed = _hub("plugins", "--json", cwd=tmp_path, python=python)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["acme"]["ok"] and rows["acme"]["connector_types"] == ["acme"], rows.get("acme")
    assert rows["acme"]["distribution"] == "invoice-hub-acme"

    # `pytest` in the installed package runs the kit (hub.testing arrives as a pytest11 plugin)
    kit = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(generated)],
        cwd=generated,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert kit.returncode == 0, kit.stdout[-3000:] + kit.stderr[-1000:]
    assert " passed" in kit.stdout.strip().splitlines()[-1]

    # the installed connector is usable from hub.yaml: `hub check`, then `hub run` delivers to it
    inbox, backend = tmp_path / "inbox", tmp_path / "acme-data"
    inbox.mkdir()
    backend.mkdir()
    item = next(i for i in golden_set() if i.original.media_type == "application/json")
    (inbox / "invoice.json").write_bytes(item.original.content)
    config = {
        "ledger": f"sqlite:///{tmp_path / 'ledger.db'}",
        "data_dir": str(tmp_path / ".hub"),
        "connectors": {
            "inbox": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
            "acme": {"type": "acme", "settings": {"path": str(backend), "token": "${ACME_TOKEN}"}},
        },
        "routes": [{"from": "inbox", "to": "acme"}],
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("ACME_TOKEN", "tok-from-env")
    check = _hub("-c", "hub.yaml", "check", "--json", cwd=tmp_path, python=python)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["connectors"]["acme"]["ok"]
    run = _hub("-c", "hub.yaml", "run", "--until-idle", "--json", cwd=tmp_path, python=python)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["delivered"] == 1 and summary["dead"] == 0, summary
    records = list((backend / "records").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["identity"] == item.identity
