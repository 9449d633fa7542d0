"""A broken plugin never takes the hub down: import errors, raising hooks and incompatible API versions
are reported by `hub plugins` and `hub check`; `plugins.allow` in hub.yaml is an allow-list; a sink that
crashes fails one delivery (dead letter with traceback), not the hub.

The broken plugins live in a real (temporary) distribution: a ``*.dist-info`` folder with an
``entry_points.txt`` on ``PYTHONPATH``, which is how importlib.metadata finds installed packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hub
from hub.testing import HubHarness, mock_sink, mock_source
from hub.testing_golden import golden_set

PLUGINS = {
    "broken_import_plugin": "import invoice_hub_no_such_dependency  # noqa\n",
    "raising_hook_plugin": (
        "from hub import hookimpl\n"
        "@hookimpl\n"
        "def hub_register_connector_types():\n"
        "    raise RuntimeError('settings file /etc/acme.ini missing')\n"
    ),
    "old_api_plugin": (
        "from hub import hookimpl\n"
        "HUB_API = '2.0'\n"
        "@hookimpl\n"
        "def hub_register_connector_types():\n"
        "    return []\n"
    ),
    "old_connector_plugin": (
        "from hub import Sink, hookimpl\n"
        "class Old(Sink):\n"
        "    type_name = 'old.sink'\n"
        "    hub_api = '0.3'\n"
        "@hookimpl\n"
        "def hub_register_connector_types():\n"
        "    return [Old]\n"
    ),
    "bad_commands_plugin": (
        "from hub import hookimpl\n"
        "@hookimpl\n"
        "def hub_register_commands(cli):\n"
        "    raise ValueError('cannot add commands today')\n"
    ),
    "marker_plugin": ("import os, pathlib\npathlib.Path(os.environ['MARKER_FILE']).write_text('imported')\n"),
}
ENTRY_POINTS = {
    "broken_import": "broken_import_plugin",
    "raising_hook": "raising_hook_plugin",
    "old_api": "old_api_plugin",
    "old_connector": "old_connector_plugin",
    "bad_commands": "bad_commands_plugin",
    "marker": "marker_plugin",
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    dist = root / "broken_vendor-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-vendor\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[invoice_hub]\n" + "".join(f"{name} = {module}\n" for name, module in ENTRY_POINTS.items())
    )
    for module, code in PLUGINS.items():
        (root / f"{module}.py").write_text(code)
    return root


def _hub(*args: str, cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "MARKER_FILE": str(cwd / "marker")}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _config(tmp_path: Path, **extra: object) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    config = {
        "ledger": f"sqlite:///{tmp_path / 'ledger.db'}",
        "data_dir": str(tmp_path / ".hub"),
        "connectors": {
            "inbox": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
            "out": {"type": "recording", "settings": {"path": str(tmp_path / "rec.db")}},
        },
        "routes": [{"from": "inbox", "to": "out"}],
        **extra,
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_hub_plugins_reports_broken_plugins_and_keeps_the_rest(tmp_path: Path, site: Path) -> None:
    _config(tmp_path)
    result = _hub("plugins", "--json", cwd=tmp_path, site=site)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    broken = rows["broken_import"]
    assert not broken["ok"] and broken["distribution"] == "broken-vendor" and broken["version"] == "1.0"
    assert "failed to import broken_import_plugin" in broken["error"]
    assert "No module named 'invoice_hub_no_such_dependency'" in broken["error"]
    first_line = broken["error"].splitlines()[0]  # what `hub plugins` and `hub check` print
    assert "to fix: upgrade or repair broken-vendor 1.0 (pip install --upgrade broken-vendor)" in first_line
    assert "`plugins: {disabled: [broken_import]}` in hub.yaml" in first_line
    raising = rows["raising_hook"]
    assert not raising["ok"] and "RuntimeError: settings file /etc/acme.ini missing" in raising["error"]
    assert "to fix:" in raising["error"].splitlines()[0] and "[raising_hook]" in raising["error"]
    assert not rows["bad_commands"]["ok"]
    assert (
        "hub_register_commands raised ValueError: cannot add commands today" in rows["bad_commands"]["error"]
    )
    # first-party plugins still load
    assert rows["recording"]["ok"] and rows["recording"]["connector_types"] == ["recording"]
    assert rows["files"]["ok"]


def test_incompatible_hub_api_is_refused_with_a_clear_message(tmp_path: Path, site: Path) -> None:
    _config(tmp_path)
    rows = {r["name"]: r for r in json.loads(_hub("plugins", "--json", cwd=tmp_path, site=site).stdout)}
    old = rows["old_api"]
    assert not old["ok"]
    assert "built for hub API 2.0, this hub speaks 1.0" in old["error"]
    assert "install a version of the plugin made for hub API 1.x" in old["error"]
    connector = rows["old_connector"]
    assert not connector["ok"] and "connector 'old.sink' is built for hub API 0.3" in connector["error"]


def test_hub_check_and_run_survive_broken_plugins(tmp_path: Path, site: Path) -> None:
    _config(tmp_path)
    item = next(i for i in golden_set() if i.original.media_type == "application/json")
    (tmp_path / "inbox" / "a.json").write_bytes(item.original.content)
    check = _hub("-c", "hub.yaml", "check", "--json", cwd=tmp_path, site=site)
    report = json.loads(check.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    failures = {f["name"]: f["error"] for f in report["plugin_failures"]}
    assert {"broken_import", "raising_hook", "old_api", "old_connector", "bad_commands"} <= set(failures)
    assert all("to fix:" in failures[n] for n in ("broken_import", "raising_hook", "old_api"))
    run = _hub("-c", "hub.yaml", "run", "--until-idle", "--json", cwd=tmp_path, site=site)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["delivered"] == 1


def test_a_config_naming_a_type_from_a_broken_plugin_points_at_hub_plugins(
    tmp_path: Path, site: Path
) -> None:
    config = _config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["connectors"]["out"] = {"type": "old.sink"}
    config.write_text(yaml.safe_dump(data))
    check = _hub("-c", "hub.yaml", "check", "--json", cwd=tmp_path, site=site)
    assert check.returncode == 1
    [error] = json.loads(check.stdout)["errors"]
    assert "connectors.out.type" in error and "unknown connector type 'old.sink'" in error
    assert "old_connector" in error and "see `hub plugins`" in error


def test_plugins_allow_is_an_allow_list(tmp_path: Path, site: Path) -> None:
    _config(tmp_path, plugins={"allow": ["files", "recording", "json_parser"]})
    result = _hub("plugins", "--json", cwd=tmp_path, site=site)
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {n for n, r in rows.items() if r["ok"]} == {"files", "recording", "json_parser"}
    assert rows["marker"]["error"] == "not in plugins.allow of hub.yaml"
    assert rows["archive_fs"]["error"] == "not in plugins.allow of hub.yaml"
    assert not (tmp_path / "marker").exists(), "a plugin outside plugins.allow must not even be imported"
    # without the allow-list the same plugin is imported
    _config(tmp_path)
    _hub("plugins", "--json", cwd=tmp_path, site=site)
    assert (tmp_path / "marker").read_text() == "imported"


def test_plugins_disabled_are_not_loaded(tmp_path: Path, site: Path) -> None:
    _config(tmp_path, plugins={"disabled": ["broken_import", "marker"]})
    rows = {r["name"]: r for r in json.loads(_hub("plugins", "--json", cwd=tmp_path, site=site).stdout)}
    assert "broken_import" not in rows and "marker" not in rows
    assert not (tmp_path / "marker").exists()


def test_a_crashing_sink_fails_one_delivery_not_the_hub(tmp_path: Path) -> None:
    items = golden_set()[:3]

    def handler(request: hub.DeliveryRequest) -> hub.Receipt:
        if request.invoice.number == items[1].invoice.number:
            raise KeyError("vendor bug")
        return hub.Receipt(remote_ref="ok")

    sink = mock_sink(handler)
    source = mock_source(
        [hub.Incoming(documents=[], key=i.name, invoices=[(i.invoice, i.original)]) for i in items]
    )
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": sink.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
    )
    summary = harness.run(timeout=30)
    assert summary["delivered"] == 2 and summary["dead"] == 1
    [letter] = harness.dead_letters()
    assert letter["error_class"] == "KeyError" and letter["identity"] == items[1].identity
    assert "vendor bug" in letter["traceback"] and "handler" in letter["traceback"]
    [attempt] = letter["attempt_history"]  # not retried: an unknown exception is permanent
    assert attempt["outcome"] == "dead"


def test_a_document_naming_an_unknown_parent_does_not_wedge_the_hub(tmp_path: Path) -> None:
    """A source may hand in a document whose ``parent_sha256`` names a container it never handed in;
    the worker once looked for that parent forever while holding the SQLite write lock."""
    item = next(i for i in golden_set() if i.attachment is not None)
    assert item.original.parent_sha256 == item.attachment.sha256 if item.attachment else False
    sink = mock_sink()
    source = mock_source([hub.Incoming(documents=[], key="x", invoices=[(item.invoice, item.original)])])
    harness = HubHarness(
        root=tmp_path,
        connectors={"in": {"type": source.type_name}, "out": {"type": sink.type_name}},
        routes=[{"from": "in", "to": "out"}],
        types=[source, sink],
    )
    assert harness.run(timeout=20)["delivered"] == 1
    [request] = sink.requests
    assert [d.sha256 for d in request.documents] == [item.original.sha256]
