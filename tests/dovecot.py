"""A throw-away Dovecot IMAP server on a loopback port, for tests and the IMAP benchmark.

``DovecotServer.start(root)`` writes a config, passwd files and Maildirs under ``root``, starts
``dovecot -c <config>`` (plain IMAP, or IMAPS plus STARTTLS with a self-signed certificate made here
with ``cryptography``) and waits until the port answers. ``add_user()`` creates a user with an empty
mailbox (a passwd file of its own), ``Mailbox`` fills and inspects one with IMAP APPEND/SELECT
through imapclient. ``stop()`` ends the server: it runs in the foreground (``dovecot -F``) as our child.

Dovecot refuses to run its login process or mail processes as root, so mail files belong to the
``dovecot`` system user the Debian package creates (see ../shared/recipes/dovecot-imap.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imapclient import IMAPClient

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "install-dovecot.sh"


class DovecotUnavailable(RuntimeError):
    """Dovecot is not installed or would not start; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed(install: bool = True) -> str:
    """The path of the ``dovecot`` binary, running scripts/install-dovecot.sh first if allowed."""
    found = shutil.which("dovecot") or (Path("/usr/sbin/dovecot").exists() and "/usr/sbin/dovecot")
    if found:
        return str(found)
    if not install:
        raise DovecotUnavailable("dovecot is not installed; run scripts/install-dovecot.sh")
    result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=300)
    found = shutil.which("dovecot") or (Path("/usr/sbin/dovecot").exists() and "/usr/sbin/dovecot")
    if result.returncode != 0 or not found:
        raise DovecotUnavailable(
            f"scripts/install-dovecot.sh failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return str(found)


def make_self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (and localhost): (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "invoice-hub test IMAP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclass
class Mailbox:
    """One user's mailbox on a running server, filled and inspected over IMAP."""

    host: str
    port: int
    username: str
    password: str
    tls_port: int | None = None
    ca_file: Path | None = None

    def client(self) -> IMAPClient:
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=30)
        client.login(self.username, self.password)
        return client

    def append(self, messages: list[bytes], folder: str = "INBOX", flags: tuple[bytes, ...] = ()) -> None:
        """IMAP APPEND each message (raw RFC 5322 bytes) to ``folder``."""
        client = self.client()
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                client.append(folder, raw, flags=flags)
        finally:
            client.logout()

    def counts(self) -> dict[str, dict[str, int]]:
        """Per folder: messages and unseen messages."""
        client = self.client()
        try:
            out = {}
            for _flags, _delim, name in client.list_folders():
                folder = name if isinstance(name, str) else name.decode()
                status = client.folder_status(folder, [b"MESSAGES", b"UNSEEN"])
                out[folder] = {"messages": int(status[b"MESSAGES"]), "unseen": int(status[b"UNSEEN"])}
            return out
        finally:
            client.logout()

    def messages(self, folder: str) -> list[bytes]:
        """The raw messages in ``folder`` (read with BODY.PEEK[], flags unchanged)."""
        client = self.client()
        try:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            if not uids:
                return []
            fetched = client.fetch(uids, ["BODY.PEEK[]"])
            return [bytes(fetched[u][b"BODY[]"]) for u in sorted(fetched)]
        finally:
            client.logout()


@dataclass
class DovecotServer:
    root: Path
    binary: str
    port: int = 0
    tls: bool = False
    imaps_port: int | None = None
    cert: Path | None = None
    host: str = "127.0.0.1"
    users: dict[str, str] = field(default_factory=dict)
    _uid: int = 0
    _gid: int = 0
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[str] | None = None

    # -----------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls, root: Path, *, tls: bool = False, install: bool = True, timeout: float = 15
    ) -> DovecotServer:
        binary = ensure_installed(install)
        try:
            account = pwd.getpwnam("dovecot")
        except KeyError:
            raise DovecotUnavailable(
                "the `dovecot` system user is missing (reinstall dovecot-core)"
            ) from None
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        for parent in root.parents:
            if not parent.stat().st_mode & 0o001:
                raise DovecotUnavailable(
                    f"{parent} is not searchable by other users (mode {oct(parent.stat().st_mode & 0o777)}); "
                    "the `dovecot` user must reach the mail folder: use a folder under /tmp"
                )
        server = cls(
            root=root, binary=binary, port=free_port(), tls=tls, _uid=account.pw_uid, _gid=account.pw_gid
        )
        (root / "mail").mkdir(exist_ok=True)
        (root / "run").mkdir(exist_ok=True)
        os.chown(root / "mail", server._uid, server._gid)
        (root / "users").mkdir(exist_ok=True)
        if tls:
            server.imaps_port = free_port()
            server.cert, _key = make_self_signed(root, server.host)
        server._write_config()
        # In the foreground (-F): the server is our child, so we know its pid and reap it.
        server._log = (root / "start.log").open("w")
        server._process = subprocess.Popen(
            [binary, "-F", "-c", str(root / "dovecot.conf")],
            stdout=server._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        ports = [server.port] + ([server.imaps_port] if server.imaps_port else [])
        while not all(server._answers(p) for p in ports):
            if server._process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise DovecotUnavailable(
                    f"dovecot did not answer on {ports} within {timeout}s: {server._tail()}"
                )
            time.sleep(0.02)
        return server

    def _answers(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _write_config(self) -> None:
        d = self.root
        ssl_lines = "ssl = no\n"
        imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
        if self.tls:
            ssl_lines = f"ssl = yes\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem\n"
            imaps = (
                f"  inet_listener imaps {{\n    address = {self.host}\n"
                f"    port = {self.imaps_port}\n    ssl = yes\n  }}\n"
            )
        (d / "dovecot.conf").write_text(
            f"""protocols = imap
listen = {self.host}
base_dir = {d}/run
state_dir = {d}/run
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
{ssl_lines}disable_plaintext_auth = no
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
first_valid_uid = 1
mail_max_userip_connections = 100
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users/%u.passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/users/%u.passwd
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
{imaps}}}
"""
        )

    def add_user(self, username: str | None = None, password: str | None = None) -> Mailbox:
        """A new user with an empty mailbox."""
        username = username or f"invoices{uuid.uuid4().hex[:8]}"
        password = password or uuid.uuid4().hex
        home = self.root / "mail" / username
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, self._uid, self._gid)
        self.users[username] = password
        # One passwd file per user (Dovecot re-reads a changed passwd file at most once a second).
        line = f"{username}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{home}::\n"
        (self.root / "users" / f"{username}.passwd").write_text(line)
        return Mailbox(self.host, self.port, username, password, self.imaps_port, self.cert)

    def _tail(self) -> str:
        text = ""
        for name in ("start.log", "dovecot.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")[-1500:]
        return text.strip() or "no log output"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert) if self.cert else None)
