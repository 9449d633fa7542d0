"""hub.yaml: unknown keys rejected, every error with its YAML path and line, ${ENV} for secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import load_config, validate_connectors
from hub.errors import ConfigError
from hub.plugins import build_plugins
from tests.conftest import run_hub

BASE = """\
ledger: sqlite:///{tmp}/ledger.db
data_dir: {tmp}/.hub
connectors:
  inbox:
    type: files
    settings:
      path: {tmp}/in
  archive:
    type: archive.fs
    settings:
      path: {tmp}/archive
routes:
  - from: inbox
    to: archive
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(text.format(tmp=tmp_path), encoding="utf-8")
    return path


def test_the_shipped_hub_yaml_is_valid() -> None:
    loaded = load_config(Path(__file__).resolve().parent.parent / "hub.yaml")
    settings = validate_connectors(loaded, build_plugins())
    assert set(settings) == {"inbox", "archive"}


def test_unknown_key_names_path_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "    on_amendmnt: skip\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "routes.0.on_amendmnt (line 15): unknown key" in str(caught.value)


def test_route_to_unknown_connector(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("to: archive", "to: [archiv]"))
    with pytest.raises(ConfigError, match=r"routes\.0\.to\.0 \(line 14\): no connector named 'archiv'"):
        load_config(path)


def test_connector_settings_are_validated_by_the_connector_model(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("      path: {tmp}/archive", "      pth: {tmp}/archive"))
    loaded = load_config(path)
    with pytest.raises(ConfigError) as caught:
        validate_connectors(loaded, build_plugins())
    text = str(caught.value)
    assert "connectors.archive.settings.pth (line 11): unknown key" in text
    assert "connectors.archive.settings.path" in text  # the missing required field, too


def test_unknown_connector_type(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("type: archive.fs", "type: archive.ftp"))
    with pytest.raises(ConfigError, match=r"connectors\.archive\.type \(line 9\): unknown connector type"):
        validate_connectors(load_config(path), build_plugins())


def test_env_interpolation_and_missing_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_TEST_ARCHIVE", str(tmp_path / "from-env"))
    path = write(tmp_path, BASE.replace("path: {tmp}/archive", "path: ${{HUB_TEST_ARCHIVE}}"))
    loaded = load_config(path)
    assert loaded.config.connectors["archive"].settings["path"] == str(tmp_path / "from-env")
    path = write(tmp_path, BASE.replace("path: {tmp}/archive", "path: ${{HUB_TEST_NOT_SET}}"))
    with pytest.raises(
        ConfigError,
        match=r"connectors\.archive\.settings\.path \(line 11\): environment variable "
        r"HUB_TEST_NOT_SET is not set",
    ):
        load_config(path)


def test_hub_check_reports_errors_with_location(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("      path: {tmp}/archive", "      pth: {tmp}/archive"))
    result = run_hub("-c", str(path), "check", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "connectors.archive.settings.pth (line 11): unknown key" in result.stderr


def test_hub_check_asks_connector_health(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = write(tmp_path, BASE)
    result = run_hub("-c", str(path), "check", "--json", cwd=tmp_path, check=False)
    import json

    report = json.loads(result.stdout)
    assert report["connectors"]["inbox"]["ok"] is True
    assert report["ledger"]["schema_version"] >= 1
    (tmp_path / "in").rmdir()
    result = run_hub("-c", str(path), "check", "--json", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "does not exist" in json.loads(result.stdout)["connectors"]["inbox"]["detail"]
