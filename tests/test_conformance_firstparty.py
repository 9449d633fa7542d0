"""Every first-party connector runs the conformance kit (hub.testing.ConnectorContract), as vendors do.

Here: recording, archive.fs, files (both modes), archive.s3 (moto server), erp.rest (odoo and erpnext
sandboxes), erp.sql (PostgreSQL and MariaDB), email.imap (Dovecot). einvoice.nuonuo and
einvoice.baiwang run it in tests/test_einvoice_contract.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import sqlalchemy as sa
from invoice_hub_plugins.archive_fs import ArchiveFs
from invoice_hub_plugins.archive_s3 import ArchiveS3
from invoice_hub_plugins.email_imap import ImapSource
from invoice_hub_plugins.erp_rest import ErpRestConnector
from invoice_hub_plugins.erp_sql import ErpSqlConnector, ErpSqlSettings, create_tables, drop_tables
from invoice_hub_plugins.files import FilesSource
from invoice_hub_plugins.recording import RecordingSink

from hub import Capabilities
from hub.testing import ConnectorContract
from hub.testing_golden import GoldenItem
from tests.conftest import port_open, server_missing
from tests.dovecot import Mailbox, free_port
from tests.imap_fixtures import Attachment, mail
from tests.sandbox_server import run_asgi
from tests.test_archive_store import S3Backend, _free_port, moto_endpoint  # noqa: F401 (a fixture)
from tests.test_erp_contract import ERPNEXT_KEY, ODOO_KEY

Settings = Callable[..., dict[str, Any]]


# ---------------------------------------------------------------------------------------------------
# recording (sink + inventory): fault injection through its own settings
# ---------------------------------------------------------------------------------------------------
class TestRecording(ConnectorContract):
    connector_type = RecordingSink
    failure_modes = frozenset({"down", "transient", "rate_limited"})
    invalid_settings = [({"fail_first": -1}, "fail_first"), ({"retry_after": "soon"}, "retry_after")]

    @pytest.fixture
    def hub_connector_settings(self, tmp_path: Path) -> Settings:
        down = tmp_path / "down"

        def settings(failure: str | None = None) -> dict[str, Any]:
            base: dict[str, Any] = {"path": tmp_path / f"recording-{failure or 'ok'}.db", "down_file": down}
            if failure == "down":
                down.touch()
            else:
                down.unlink(missing_ok=True)
            if failure == "transient":
                base["fail_first"] = 1
            if failure == "rate_limited":
                base.update(rate_limit_first=1, retry_after=0.3)
            return base

        return settings


# ---------------------------------------------------------------------------------------------------
# archive.fs (sink + inventory), with encryption so the key is checked for leaks
# ---------------------------------------------------------------------------------------------------
class TestArchiveFs(ConnectorContract):
    connector_type = ArchiveFs
    invalid_settings = [
        ({"retention_days": 0}, "retention_days"),
        ({"encryption": {"key_id": "k1"}}, "encryption"),
    ]

    @pytest.fixture
    def hub_connector_settings(self, tmp_path: Path) -> Settings:
        def settings(failure: str | None = None) -> dict[str, Any]:
            return {
                "path": tmp_path / "archive",
                "encryption": {"key_id": "k1", "key": "7f" * 32},
                "signing_key_file": tmp_path / "signing.pem",
            }

        return settings


# ---------------------------------------------------------------------------------------------------
# files (source): a folder, in both modes
# ---------------------------------------------------------------------------------------------------
def _write(folder: Path, items: list[GoldenItem]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        doc = item.attachment or item.original
        (folder / (doc.filename or item.name)).write_bytes(doc.content)


class TestFilesMove(ConnectorContract):
    connector_type = FilesSource
    failure_modes = frozenset({"down"})
    invalid_settings = [({"after": "delete"}, "after"), ({"min_age": -1}, "min_age")]

    @pytest.fixture
    def hub_connector_settings(self, tmp_path: Path) -> Settings:
        def settings(failure: str | None = None) -> dict[str, Any]:
            folder = tmp_path / ("missing" if failure == "down" else "inbox")
            if failure is None:
                folder.mkdir(exist_ok=True)
            return {"path": folder, "min_age": 0, "poll_interval": 0.05}

        return settings

    @pytest.fixture
    def hub_source_feed(self) -> Callable[[dict[str, Any], list[GoldenItem]], None]:
        return lambda settings, items: _write(Path(settings["path"]), items)


class TestFilesKeep(TestFilesMove):
    """``after: keep`` resumes from the checkpoint instead of moving files away."""

    @pytest.fixture
    def hub_connector_settings(self, tmp_path: Path) -> Settings:
        def settings(failure: str | None = None) -> dict[str, Any]:
            folder = tmp_path / ("missing" if failure == "down" else "inbox")
            if failure is None:
                folder.mkdir(exist_ok=True)
            return {"path": folder, "min_age": 0, "poll_interval": 0.05, "after": "keep"}

        return settings


# ---------------------------------------------------------------------------------------------------
# archive.s3 (sink + inventory) on moto's S3 server over real HTTP
# ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
class TestArchiveS3(ConnectorContract):
    connector_type = ArchiveS3
    failure_modes = frozenset({"down"})
    invalid_settings = [({"bucket": "x"}, "bucket"), ({"object_lock": "sometimes"}, "object_lock")]

    @pytest.fixture
    def hub_connector_settings(self, moto_endpoint: str, tmp_path: Path) -> Iterator[Settings]:  # noqa: F811
        bucket = f"kit-{uuid.uuid4().hex[:12]}"
        backend = S3Backend(moto_endpoint, bucket, tmp_path / "data")

        def settings(failure: str | None = None) -> dict[str, Any]:
            endpoint = f"http://127.0.0.1:{_free_port()}" if failure == "down" else moto_endpoint
            return {
                **backend.settings(),
                "endpoint_url": endpoint,
                "access_key_id": "AKIAKITCONFORMANCE01",
                "secret_access_key": "kit-s3-secret-5f1c0d9e",
                "connect_timeout": 1,
                "read_timeout": 5,
                "signing_key_file": tmp_path / "signing.pem",
            }

        try:
            yield settings
        finally:
            backend.client.close()


# ---------------------------------------------------------------------------------------------------
# erp.rest (sink + inventory) with the odoo and erpnext presets against their sandboxes over HTTP
# ---------------------------------------------------------------------------------------------------
class ErpRestAsDeclared(ErpRestConnector):
    """erp.rest posts Chinese invoices (its tax mapping knows the Chinese VAT rates; a 19 % EU rate is
    refused as a PermanentError by design) and red-letter invoices. The plugin does not declare this
    yet, so the kit is told here; once ``ErpRestConnector.capabilities`` says it, use the class itself."""

    capabilities = Capabilities(formats=frozenset({"cn"}), red_letter=True)


@pytest.fixture(scope="module")
def odoo_url() -> Iterator[str]:
    from contrib.sandbox.odoo import create_app

    with run_asgi(create_app(api_keys=[ODOO_KEY])) as url:
        yield url


@pytest.fixture(scope="module")
def erpnext_url() -> Iterator[str]:
    from contrib.sandbox.erpnext import create_app

    with run_asgi(create_app(api_keys=[ERPNEXT_KEY])) as url:
        yield url


#: The sandboxes' fault switches per kit failure mode (counts of the next requests to fail).
ERP_FAULTS: dict[str | None, dict[str, Any]] = {
    None: {"force_5xx": 0, "force_429": 0},
    "down": {"force_5xx": 0, "force_429": 0},
    "transient": {"force_5xx": 1, "force_429": 0},
    "rate_limited": {"force_5xx": 0, "force_429": 1, "retry_after": 1},
}


class _ErpRestContract(ConnectorContract):
    connector_type = ErpRestAsDeclared
    failure_modes = frozenset({"down", "transient", "rate_limited"})
    invalid_settings = [({"base_url": "ftp://erp.example.com"}, "base_url")]
    preset: ClassVar[str]

    def auth(self) -> dict[str, Any]:
        raise NotImplementedError

    @pytest.fixture
    def hub_connector_settings(self, request: pytest.FixtureRequest) -> Settings:
        url = request.getfixturevalue(f"{self.preset}_url")
        httpx.post(f"{url}/_sandbox/reset", timeout=5).raise_for_status()

        def settings(failure: str | None = None) -> dict[str, Any]:
            httpx.post(f"{url}/_sandbox/faults", json=ERP_FAULTS[failure], timeout=5).raise_for_status()
            return {
                "base_url": f"http://127.0.0.1:{_free_port()}" if failure == "down" else url,
                "preset": self.preset,
                "auth": self.auth(),
                "read_timeout": 2.0,
                "connect_timeout": 1.0,
            }

        return settings


class TestErpRestOdoo(_ErpRestContract):
    preset = "odoo"

    def auth(self) -> dict[str, Any]:
        return {"type": "bearer", "token": ODOO_KEY}


class TestErpRestErpNext(_ErpRestContract):
    preset = "erpnext"

    def auth(self) -> dict[str, Any]:
        key, secret = ERPNEXT_KEY.split(":")
        return {"type": "token", "key": key, "secret": secret}


# ---------------------------------------------------------------------------------------------------
# erp.sql (source + sink + inventory) on the real PostgreSQL and MariaDB
# ---------------------------------------------------------------------------------------------------
class ErpSqlAsDeclared(ErpSqlConnector):
    """erp.sql takes Chinese invoices and red-letter ones; told here until the plugin declares it."""

    capabilities = Capabilities(formats=frozenset({"cn"}), red_letter=True)


class _ErpSqlContract(ConnectorContract):
    connector_type = ErpSqlAsDeclared
    failure_modes = frozenset({"down"})
    invalid_settings = [({"outbound": {"table": "bad table; drop"}}, "outbound.table")]
    url: ClassVar[str]
    start: ClassVar[str]

    @pytest.fixture
    def erp_tables(self) -> Iterator[dict[str, Any]]:
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        if not port_open("127.0.0.1", port):
            server_missing(f"{self.url.split('+')[0]} at 127.0.0.1:{port}", self.start)
        prefix = f"k{uuid.uuid4().hex[:10]}"
        settings = {
            "url": self.url,
            "outbound": {"table": f"{prefix}_out"},
            "inbound": {"table": f"{prefix}_in"},
        }
        model = ErpSqlSettings.model_validate(settings)
        create_tables(model)
        try:
            yield settings
        finally:
            drop_tables(model)

    @pytest.fixture
    def hub_connector_settings(self, erp_tables: dict[str, Any]) -> Settings:
        def settings(failure: str | None = None) -> dict[str, Any]:
            if failure == "down":
                port = self.url.rsplit(":", 1)[1].split("/")[0]
                return {
                    **erp_tables,
                    "url": self.url.replace(f":{port}/", f":{_free_port()}/"),
                    "connect_timeout": 1,
                }
            return erp_tables

        return settings

    @pytest.fixture
    def hub_source_feed(self) -> Callable[[dict[str, Any], list[GoldenItem]], None]:
        """The ERP writes outbound rows: the whole invoice in the JSON payload column."""

        def feed(settings: dict[str, Any], items: list[GoldenItem]) -> None:
            engine = sa.create_engine(settings["url"])
            table = settings["outbound"]["table"]
            try:
                with engine.begin() as conn:
                    for item in items:
                        conn.execute(
                            sa.text(f"INSERT INTO {table} (order_no, payload) VALUES (:o, :p)"),
                            {"o": item.name, "p": item.invoice.model_dump_json()},
                        )
            finally:
                engine.dispose()

        return feed


@pytest.mark.integration
class TestErpSqlPostgres(_ErpSqlContract):
    # trust auth ignores the password; the kit checks it never shows (the URL is a SecretStr)
    url = "postgresql+psycopg://postgres:kit-pg-pass-7e2a@127.0.0.1:5432/test"
    start = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.mark.integration
class TestErpSqlMariaDb(_ErpSqlContract):
    url = "mysql+pymysql://root@127.0.0.1:3306/test"
    start = "service mariadb start  (or: mysqld_safe &)"


# ---------------------------------------------------------------------------------------------------
# email.imap (source) on a real Dovecot: the golden documents arrive as mail attachments
# ---------------------------------------------------------------------------------------------------
@pytest.mark.integration
class TestEmailImap(ConnectorContract):
    connector_type = ImapSource
    failure_modes = frozenset({"down"})
    invalid_settings = [({"security": "tls13"}, "security"), ({"port": 0}, "port")]

    @pytest.fixture
    def hub_connector_settings(self, dovecot: Mailbox) -> Settings:
        def settings(failure: str | None = None) -> dict[str, Any]:
            return {
                "host": dovecot.host,
                "port": free_port() if failure == "down" else dovecot.port,
                "security": "plain",
                "username": dovecot.username,
                "password": dovecot.password,
                "poll_interval": 0.2,
                "idle": False,
                "timeout": 5,
            }

        return settings

    @pytest.fixture
    def hub_source_feed(self, dovecot: Mailbox) -> Callable[[dict[str, Any], list[GoldenItem]], None]:
        def feed(settings: dict[str, Any], items: list[GoldenItem]) -> None:
            messages = []
            for item in items:
                doc = item.attachment or item.original
                attachment = Attachment(doc.filename or item.name, doc.content, doc.media_type)
                messages.append(mail([attachment], subject=f"Invoice {item.invoice.number}"))
            dovecot.append(messages)

        return feed
