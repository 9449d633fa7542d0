"""``email.imap``: a source that takes invoices out of an IMAP mailbox (``invoices@company``).

Each message in ``folder`` is handed in as one ``Incoming``: the raw mail (``.eml``, media type
``message/rfc822``) as a ``Document``; the ``email`` parser turns it into its attachments, each parsed
by its own parser. The message is fetched with ``BODY.PEEK[]``, so reading changes nothing in the
mailbox. Only after ``commit()`` — the mail, its attachments, their invoices and dead letters are in
the ledger — is it moved to ``processed_folder`` (at least one invoice came out of it, duplicates
included) or ``failed_folder`` (nothing in it was an invoice; the raw mail is a dead letter). Moves
are sent in groups (one STORE and one MOVE per folder, before the next FETCH and on close); MOVE is
used where the server has it, else COPY, STORE \\Deleted and (UID) EXPUNGE.

A crash between the ledger and the move means the message is read again on the next poll. That
creates nothing new: the raw mail has the same sha256, and its invoices the same content hashes, so
they are recorded as duplicates and never delivered twice. The same mail sent twice is handled the
same way.

``select: all`` (the default) reads every message still in the folder, read or not: the folder is
the hub's queue, and a mail a person opened in a mail client is still an invoice to take in.
``select: unseen`` reads only unseen messages, for a folder people share with the hub.

Connection: ``security: ssl`` (IMAPS, port 993), ``starttls`` (port 143, upgraded before login) or
``plain`` (loopback tests only; a warning is logged for other hosts). ``password`` is a secret,
normally ``${IMAP_PASSWORD}`` in ``hub.yaml`` (an app password or token works the same way).

Waiting for mail: with ``idle: true`` and a server that announces IDLE, an empty poll waits in IDLE
up to ``idle_wait`` seconds and returns as soon as the server reports new mail; otherwise the hub
polls every ``poll_interval`` seconds. ``idle_wait`` bounds how long ``hub run`` takes to stop.

A message larger than ``max_message_size`` is not parsed: the raw mail is still fetched and handed
in, marked so that the ``email`` parser dead-letters it with the reason (size and limit).

IMAP and socket errors become ``TransientError`` (the next poll tries again); a refused login or a
folder that does not exist becomes ``PermanentError`` with a message naming user, host and folder.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from pydantic import Field, SecretStr, model_validator

from hub import (
    ConnectorSettings,
    Document,
    Health,
    Incoming,
    IntakeOutcome,
    PermanentError,
    Source,
    TransientError,
    hookimpl,
)
from hub.errors import HubError

log = structlog.get_logger()

MEDIA_TYPE = "message/rfc822"
#: Media type parameter the ``email`` parser reads to dead-letter a mail that was too large to read.
OVERSIZED_PARAM = "x-hub-oversized"
_MESSAGE_ID = re.compile(rb"^message-id:\s*(.*?)\s*$", re.I | re.M | re.S)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]+")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_SIZE = b"RFC822.SIZE"
_HEADER = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
_BODY = b"BODY[]"
#: After an empty poll that waited in IDLE, the hub polls again this soon (IDLE does the waiting).
_IDLE_REPOLL = 0.05


class ImapHandle(NamedTuple):
    """What ``commit()`` needs back: the message's UID and the folder's UIDVALIDITY when it was read."""

    uidvalidity: int | None
    uid: int


class ImapSettings(ConnectorSettings):
    host: str
    port: int | None = Field(None, ge=1, le=65535, description="default 993 for ssl, 143 otherwise")
    security: Literal["ssl", "starttls", "plain"] = "ssl"
    username: str = Field(min_length=1)
    password: SecretStr
    folder: str = "INBOX"
    processed_folder: str = "processed"
    failed_folder: str = "failed"
    select: Literal["all", "unseen"] = "all"
    #: Set \\Seen on a message when it is moved out (so people see it was handled).
    mark_seen: bool = True
    #: Messages whose size and Message-ID are fetched per FETCH command.
    batch_size: int = Field(50, ge=1, le=1000)
    #: Most bytes of message bodies fetched (and held in memory) per FETCH command.
    fetch_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    poll_interval: float = Field(10.0, gt=0)
    idle: bool = True
    idle_wait: float = Field(2.0, gt=0, le=1740)
    max_message_size: int = Field(25 * 1024 * 1024, ge=1024)
    timeout: float = Field(30.0, gt=0)
    #: Extra CA certificates to trust (PEM), e.g. a company CA or a test server's own certificate.
    ca_file: Path | None = None
    verify_tls: bool = True

    @model_validator(mode="after")
    def _distinct_folders(self) -> ImapSettings:
        folders = [self.folder, self.processed_folder, self.failed_folder]
        if len({f.lower() if f.upper() == "INBOX" else f for f in folders}) < 3:
            got = ", ".join(map(repr, folders))
            raise ValueError(f"folder, processed_folder and failed_folder must differ (got {got})")
        return self


def _message_id(header: bytes | None) -> str | None:
    if not header:
        return None
    found = _MESSAGE_ID.search(header.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" "))
    if not found:
        return None
    value = found.group(1).decode("ascii", "replace").strip()
    return value or None


def _text(exc: BaseException) -> str:
    """An IMAP error's text: imaplib puts the server's answer in as bytes (``b'[AUTHENTICATIONFAILED]'``)."""
    args = exc.args
    if len(args) == 1 and isinstance(args[0], bytes):
        return args[0].decode("utf-8", "replace")
    text = str(exc)
    found = re.fullmatch(r"""b(['"])(.*)\1""", text, re.S)
    return found.group(2) if found else text


def _safe_name(message_id: str) -> str:
    return _UNSAFE.sub("_", message_id.strip("<> ")).strip("._")[:150]


class ImapSource(Source):
    type_name = "email.imap"
    Settings = ImapSettings
    settings: ImapSettings

    def __init__(self, settings: ImapSettings, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, context)
        self.port = settings.port or (993 if settings.security == "ssl" else 143)
        self.where = f"{settings.host}:{self.port}"
        self.poll_interval = settings.poll_interval
        self._client: IMAPClient | None = None
        self._uidvalidity: int | None = None
        self._folders: set[str] = set()
        #: committed messages not yet moved: target folder → handles
        self._pending: dict[str, list[ImapHandle]] = {}
        self._quick_next = True  # the first empty poll after activity returns at once
        if settings.security == "plain" and settings.host not in _LOOPBACK:
            self.log.warning("imap_plaintext", host=settings.host, port=self.port)

    # -----------------------------------------------------------------------------------------------
    # Connection
    # -----------------------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.settings.ca_file) if self.settings.ca_file else None
        )
        if not self.settings.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @contextmanager
    def _errors(self, action: str, folder: str | None = None) -> Iterator[None]:
        """Translate IMAP, TLS and socket errors into the hub's classes; drop a broken connection."""
        try:
            yield
        except HubError:
            raise
        except LoginError as exc:
            self._drop()
            raise PermanentError(
                f"IMAP login refused for user {self.settings.username} at {self.where}: {_text(exc)}",
                connector=self.name,
                code="login",
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            self._drop()
            raise PermanentError(
                f"IMAP server {self.where}: TLS certificate not trusted ({exc.verify_message}); "
                "set ca_file to the CA that signed it",
                connector=self.name,
            ) from exc
        except IMAPClientAbortError as exc:
            self._drop()
            raise TransientError(
                f"IMAP connection to {self.where} lost during {action}: {_text(exc)}", connector=self.name
            ) from exc
        except IMAPClientError as exc:
            text = _text(exc)
            if folder is not None and re.search(
                r"nonexistent|doesn't exist|does not exist|not found", text, re.I
            ):
                raise PermanentError(
                    f"IMAP folder {folder!r} does not exist for user {self.settings.username} "
                    f"at {self.where}",
                    connector=self.name,
                ) from exc
            # A NO or BAD answer: the server refused this command; the connection is still good.
            raise TransientError(
                f"IMAP {action} at {self.where} failed: {text}", connector=self.name
            ) from exc
        except (OSError, EOFError) as exc:  # socket errors, time-outs, TLS errors, refused connections
            self._drop()
            raise TransientError(
                f"IMAP server {self.where} unreachable during {action}: {type(exc).__name__}: {exc}",
                connector=self.name,
            ) from exc

    def _connect(self) -> IMAPClient:
        s = self.settings
        with self._errors("connect"):
            client = IMAPClient(
                s.host,
                port=self.port,
                ssl=s.security == "ssl",
                ssl_context=self._ssl_context() if s.security == "ssl" else None,
                timeout=s.timeout,
            )
        try:
            with self._errors("STARTTLS" if s.security == "starttls" else "login"):
                if s.security == "starttls":
                    client.starttls(self._ssl_context())
                client.login(s.username, s.password.get_secret_value())
        except HubError:
            self._close_client(client)
            raise
        return client

    def _open(self) -> IMAPClient:
        if self._client is None:
            client = self._connect()
            try:
                with self._errors("SELECT", folder=self.settings.folder):
                    info = client.select_folder(self.settings.folder)
            except HubError:
                self._close_client(client)
                raise
            validity = info.get(b"UIDVALIDITY")
            if self._uidvalidity is not None and validity != self._uidvalidity:
                self.log.warning(
                    "imap_uidvalidity_changed", folder=self.settings.folder, uidvalidity=validity
                )
            self._uidvalidity = validity
            self._client = client
            self.log.debug(
                "imap_connected", host=self.settings.host, port=self.port, folder=self.settings.folder
            )
        return self._client

    def _close_client(self, client: IMAPClient) -> None:
        try:
            client.logout()
        except (IMAPClientError, OSError, EOFError) as exc:
            self.log.debug("imap_logout_failed", error=f"{type(exc).__name__}: {exc}")
            try:
                client.shutdown()
            except OSError as inner:
                self.log.debug("imap_shutdown_failed", error=str(inner))

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.shutdown()
            except (OSError, IMAPClientError) as exc:
                self.log.debug("imap_shutdown_failed", error=str(exc))

    def close(self) -> None:
        waiting = sum(map(len, self._pending.values()))
        if waiting:
            try:
                self._flush()
            except HubError as exc:  # the messages stay in the folder and are read again (duplicates)
                self.log.warning("imap_move_failed", error=str(exc), messages=waiting)
        client, self._client = self._client, None
        if client is not None:
            self._close_client(client)

    # -----------------------------------------------------------------------------------------------
    # Source
    # -----------------------------------------------------------------------------------------------
    def _search(self, client: IMAPClient) -> list[int]:
        criteria = ["UNSEEN", "UNDELETED"] if self.settings.select == "unseen" else ["UNDELETED"]
        with self._errors("SEARCH"):
            return sorted(int(u) for u in client.search(criteria))

    def _wait_idle(self, client: IMAPClient) -> bool:
        """Wait in IDLE up to ``idle_wait`` seconds; True when the server reported new mail."""
        with self._errors("IDLE"):
            client.idle()
            try:
                responses = client.idle_check(timeout=self.settings.idle_wait)
            finally:
                client.idle_done()
        return any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses)

    def _uses_idle(self, client: IMAPClient) -> bool:
        return self.settings.idle and client.has_capability("IDLE")

    def poll(self, checkpoint: str | None) -> Iterator[Incoming]:
        self._flush()
        client = self._open()
        uids = self._search(client)
        if not uids:
            if self._quick_next or not self._uses_idle(client):
                # Return at once: a hub run --until-idle ends without waiting out an IDLE.
                self.poll_interval = _IDLE_REPOLL if self._uses_idle(client) else self.settings.poll_interval
                self._quick_next = False
                return
            self.poll_interval = _IDLE_REPOLL
            if not self._wait_idle(client):
                return
            uids = self._search(client)
        self._quick_next = True
        size = self.settings.batch_size
        for start in range(0, len(uids), size):
            yield from self._fetch(uids[start : start + size])

    def _fetch(self, uids: list[int]) -> Iterator[Incoming]:
        """Sizes and Message-IDs first (cheap), then the bodies, at most ``fetch_bytes`` per FETCH."""
        validity = self._uidvalidity
        meta = self._fetch_items(uids, ["RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"], validity)
        present = [u for u in uids if u in meta]  # others were moved or expunged meanwhile
        limit = self.settings.max_message_size
        group: list[int] = []
        group_bytes = 0
        for uid in present:
            size = int(meta[uid].get(_SIZE, 0))
            if group and (group_bytes + size > self.settings.fetch_bytes or size > limit):
                yield from self._bodies(group, meta, validity)
                group, group_bytes = [], 0
            group.append(uid)
            group_bytes += size
        if group:
            yield from self._bodies(group, meta, validity)

    def _fetch_items(self, uids: list[int], items: list[str], validity: int | None) -> dict[int, Any]:
        """FETCH ``items`` of ``uids``. When the server refuses it, or drops the connection over it
        (Dovecot does on a message file it cannot read), each message is fetched alone — over a fresh
        connection if need be — so one bad message does not hold up the rest: it stays in the folder,
        is logged, and is tried again at the next poll. A server that is down still fails the poll."""
        client = self._open()
        if self._uidvalidity != validity:
            return self._recreated()
        try:
            with self._errors("FETCH"):
                return dict(client.fetch(uids, items))
        except TransientError as exc:
            self.log.warning("imap_fetch_retried_one_by_one", messages=len(uids), error=str(exc))
        found: dict[int, Any] = {}
        for uid in uids:
            client = self._open()  # reconnects after a dropped connection; raises when the server is down
            if self._uidvalidity != validity:
                return self._recreated()
            try:
                with self._errors("FETCH"):
                    found.update(client.fetch([uid], items))
            except TransientError as exc:
                self.log.error("imap_fetch_failed", uid=uid, folder=self.settings.folder, error=str(exc))
        return found

    def _recreated(self) -> dict[int, Any]:
        # The folder was deleted and created again: these UIDs name other messages now.
        self.log.warning("imap_uidvalidity_changed", folder=self.settings.folder)
        return {}

    def _bodies(self, uids: list[int], meta: dict[int, Any], validity: int | None) -> Iterator[Incoming]:
        self._flush()
        bodies = self._fetch_items(uids, ["BODY.PEEK[]"], validity)
        limit = self.settings.max_message_size
        folder = self.settings.folder
        for uid in uids:
            raw = bodies.get(uid, {}).get(_BODY)
            if raw is None:
                continue  # gone between the two FETCH commands
            message_id = _message_id(meta[uid].get(_HEADER))
            size = int(meta[uid].get(_SIZE, 0))
            media_type = MEDIA_TYPE
            if size > limit:
                # Too large to parse, but the raw mail is still kept: the email parser dead-letters it.
                media_type = f'{MEDIA_TYPE}; {OVERSIZED_PARAM}="{size}/{limit}"'
                self.log.warning("imap_message_too_large", uid=uid, size=size, limit=limit)
            name = _safe_name(message_id) if message_id else ""
            document = Document(
                content=bytes(raw),
                media_type=media_type,
                filename=f"{name or f'uid-{uid}'}.eml",
                source=self.name,
                origin=f"imap:{folder}:{uid}:{message_id or ''}",
            )
            key = message_id or f"uid:{self._uidvalidity}:{uid}"
            yield Incoming(documents=[document], key=key, handle=ImapHandle(validity, uid))

    def _ensure_folder(self, client: IMAPClient, folder: str) -> None:
        if folder in self._folders:
            return
        with self._errors("CREATE", folder=None):
            if not client.folder_exists(folder):
                client.create_folder(folder)
                self.log.info("imap_folder_created", folder=folder)
        self._folders.add(folder)

    def commit(self, incoming: Incoming, outcome: IntakeOutcome) -> None:
        """The outcome is in the ledger: the message is due to move out of the folder it was read from.

        Moves are collected and sent as one STORE and one MOVE per target folder (before the next
        FETCH, at the next poll, every ``batch_size`` messages and on close): a crash before that
        means the message is read again, which the ledger turns into duplicates.
        """
        handle: ImapHandle = incoming.handle
        target = self.settings.processed_folder if outcome.ok else self.settings.failed_folder
        self._pending.setdefault(target, []).append(handle)
        self.log.debug("imap_message_done", uid=handle.uid, key=incoming.key, folder=target)
        if sum(len(v) for v in self._pending.values()) >= self.settings.batch_size:
            self._flush()

    def _flush(self) -> None:
        """Move the committed messages to their folders."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        client = self._open()
        for target, handles in pending.items():
            uids = [h.uid for h in handles if h.uidvalidity == self._uidvalidity]
            if len(uids) < len(handles):
                # The folder was recreated (new UIDVALIDITY): these UIDs may name other messages now.
                # Leave them; they are read again, and the ledger makes them duplicates.
                self.log.warning("imap_uidvalidity_changed_before_move", messages=len(handles) - len(uids))
            if not uids:
                continue
            self._ensure_folder(client, target)
            with self._errors("MOVE"):
                if self.settings.mark_seen:
                    client.add_flags(uids, [b"\\Seen"], silent=True)
                if client.has_capability("MOVE"):
                    client.move(uids, target)
                else:
                    client.copy(uids, target)
                    client.delete_messages(uids, silent=True)
                    if client.has_capability("UIDPLUS"):
                        client.uid_expunge(uids)
                    else:
                        client.expunge()
            self.log.debug("imap_messages_moved", folder=target, messages=len(uids))

    def health(self) -> Health:
        try:
            client = self._connect()
        except HubError as exc:
            return Health(False, str(exc))
        try:
            with self._errors("STATUS", folder=self.settings.folder):
                status = client.folder_status(self.settings.folder, ["MESSAGES", "UNSEEN"])
                client.select_folder(self.settings.folder, readonly=True)
        except HubError as exc:
            return Health(False, str(exc))
        finally:
            self._close_client(client)
        return Health(
            True,
            f"{status.get(b'MESSAGES', 0)} message(s) ({status.get(b'UNSEEN', 0)} unseen) in "
            f"{self.settings.folder} for {self.settings.username} at {self.where}",
        )


@hookimpl
def hub_register_connector_types() -> list[type]:
    return [ImapSource]
