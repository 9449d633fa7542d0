"""``email.imap`` end to end against a real Dovecot: mailbox → hub → recording sink and archive.

What the issue's "Done when" asks, at test size: every valid invoice delivered exactly once, every
broken mail or attachment a dead letter with its raw bytes and a reason a person understands, every
message moved to ``processed`` or ``failed``, none left in the INBOX — also after the hub is killed
with SIGKILL at random points and run again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from invoice_hub_plugins.email_imap import ImapSettings, ImapSource

from hub import Inventory, PermanentError, TransientError
from hub.config import load_config
from hub.connectors import ConnectorContext, IntakeOutcome
from hub.engine import Hub
from hub.ledger import Ledger
from hub.ledger import schema as t
from tests.dovecot import DovecotServer, Mailbox, free_port
from tests.imap_fixtures import (
    FACTURX_PDF,
    Attachment,
    MailMix,
    cii_invoice,
    json_bytes,
    mail,
    malformed_mail,
    mixed_mails,
    running_dovecot,
    text_only_mail,
    ubl_invoice,
    wrong_totals_json,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def imap_settings(box: Mailbox, **extra: Any) -> dict[str, Any]:
    return {
        "host": box.host,
        "port": box.port,
        "security": "plain",
        "username": box.username,
        "password": "${TEST_IMAP_PASSWORD}",
        "poll_interval": 0.5,
        "idle_wait": 0.5,
        **extra,
    }


def write_config(
    tmp_path: Path, box: Mailbox, *, archive: bool = False, worker: dict[str, Any] | None = None, **imap: Any
) -> Path:
    sinks = ["recorded", "archive"] if archive else ["recorded"]
    config: dict[str, Any] = {
        "ledger": f"sqlite:///{tmp_path}/ledger.db",
        "bus": "memory://",
        "data_dir": str(tmp_path / ".hub"),
        "logging": {"level": "warning", "format": "json"},
        "connectors": {
            "mailbox": {"type": "email.imap", "settings": imap_settings(box, **imap)},
            "recorded": {"type": "recording", "settings": {"path": str(tmp_path / "recorded.db")}},
        },
        "routes": [{"name": "mail", "from": "mailbox", "to": sinks}],
    }
    if worker:
        config["worker"] = worker
    if archive:
        config["connectors"]["archive"] = {
            "type": "archive.fs",
            "settings": {"path": str(tmp_path / "archive")},
        }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def hub_env(box: Mailbox) -> dict[str, str]:
    return {**os.environ, "TEST_IMAP_PASSWORD": box.password}


def hub(cfg: Path, box: Mailbox, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "hub", "-c", str(cfg), *args],
        cwd=cfg.parent,
        env=hub_env(box),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"hub {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result


def recorded(tmp_path: Path) -> dict[str, int]:
    """Idempotency key → how many times the recording sink stored it."""
    db = tmp_path / "recorded.db"
    if not db.exists():
        return {}
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT number, count FROM received").fetchall())
    finally:
        conn.close()


def dead_letters(cfg: Path, box: Mailbox, tmp_path: Path) -> list[dict[str, Any]]:
    """``hub dlq list --json`` with each letter's document (raw bytes) from the ledger."""
    letters = json.loads(hub(cfg, box, "dlq", "list", "--json").stdout)
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    try:
        from hub import ops

        for letter in letters:
            shown = ops.dlq_show(ledger, letter["id"])
            doc = shown["document"]
            letter["document"] = ledger.get_document(doc["sha256"]) if doc else None
    finally:
        ledger.close()
    return letters


def assert_mailbox_drained(box: Mailbox, processed: int, failed: int) -> None:
    counts = box.counts()
    assert counts["INBOX"]["messages"] == 0, counts
    assert counts.get("processed", {}).get("messages", 0) == processed, counts
    assert counts.get("failed", {}).get("messages", 0) == failed, counts
    assert all(c["unseen"] == 0 for c in counts.values()), counts


# ---------------------------------------------------------------------------------------------------
# The mixed mailbox
# ---------------------------------------------------------------------------------------------------
def mixed_mailbox(box: Mailbox) -> dict[str, Any]:
    """Fill ``box`` with one of every case; return what the hub must make of it."""
    facturx = FACTURX_PDF.read_bytes()
    twice = mail([Attachment("invoice-1.json", json_bytes(1), "application/json")], subject="JSON 1")
    mails = [
        twice,
        twice,  # the same mail sent twice (same Message-ID and bytes)
        mail(
            [
                Attachment("invoice-2.json", json_bytes(2), "application/json"),
                Attachment("invoice-3.json", json_bytes(3), "application/json", encoding="ascii"),
            ],
            subject="two JSON invoices",
        ),
        mail([Attachment("peppol.xml", ubl_invoice(1), "application/xml")], subject="UBL"),
        mail([Attachment("zugferd.xml", cii_invoice(1), "text/xml")], subject="CII"),
        mail([Attachment("facturx.pdf", facturx, "application/pdf")], subject="Factur-X"),
        mail(
            [Attachment("发票镕-25320000000000000004.json", json_bytes(4), encoding="rfc2047-gb2312")],
            subject="GBK 发票",
        ),
        mail([Attachment("發票.json", json_bytes(5), encoding="rfc2047-big5")], subject="Big5"),
        text_only_mail(),
        malformed_mail(),
        mail(
            [Attachment("broken.pdf", facturx[: len(facturx) // 3], "application/pdf")], subject="truncated"
        ),
        mail(
            [
                Attachment("ok-6.json", json_bytes(6), "application/json"),
                Attachment("wrong-totals.json", wrong_totals_json(7), "application/json"),
            ],
            subject="one good, one bad",
        ),
        mail([Attachment("big.json", json_bytes(8) + b" " * 800_000, "application/json")], subject="too big"),
        mail(
            [
                Attachment(
                    "logo.png",
                    b"\x89PNG\r\n\x1a\n" + b"0" * 64,
                    "image/png",
                    disposition="inline",
                    content_id="logo",
                ),
                Attachment("invoice-9.json", json_bytes(9), "application/json"),
            ],
            subject="inline logo",
        ),
    ]
    box.append(mails)
    return {
        "numbers": {f"2532{n:016d}" for n in (1, 2, 3, 4, 5, 6, 9)} | {"UBL-1", "CII-1", "F20260023"},
        # mails out of which at least one invoice came (the duplicate included)
        "processed": 10,
        # text only, malformed, truncated PDF, too big
        "failed": 4,
    }


def test_mixed_mailbox_end_to_end(dovecot: Mailbox, tmp_path: Path) -> None:
    expected = mixed_mailbox(dovecot)
    cfg = write_config(tmp_path, dovecot, archive=True, max_message_size=600_000)
    summary = json.loads(hub(cfg, dovecot, "run", "--until-idle", "--json").stdout)
    assert not summary.get("source_errors"), summary

    counts = recorded(tmp_path)
    assert set(counts) == expected["numbers"], counts
    assert set(counts.values()) == {1}, f"an invoice was delivered more than once: {counts}"
    assert_mailbox_drained(dovecot, expected["processed"], expected["failed"])

    letters = dead_letters(cfg, dovecot, tmp_path)
    messages = [letter["message"] for letter in letters]
    for letter in letters:
        assert letter["stage"] == "intake" and letter["source"] == "mailbox"
        assert letter["document"] is not None and letter["document"].content, letter
    by_reason = {
        "mail has no invoice attachment": "message/rfc822",
        "malformed MIME": "message/rfc822",
        "max_message_size": "message/rfc822",
        "broken.pdf": "application/pdf",
        "gross": "application/json",
    }
    for reason, media in by_reason.items():
        found = [letter for letter in letters if reason in letter["message"]]
        assert len(found) == 1, f"expected one dead letter about {reason!r}, got: {messages}"
        assert found[0]["document"].media_type.startswith(media)
    assert len(letters) == len(by_reason), messages
    # The raw mail of the text-only message is kept byte for byte.
    no_attachment = next(x for x in letters if "no invoice attachment" in x["message"])
    assert "Question about your invoice" in no_attachment["message"]
    raw_mails = dovecot.messages("failed")
    assert no_attachment["document"].content in raw_mails

    # A second run finds nothing new and changes nothing.
    hub(cfg, dovecot, "run", "--until-idle", "--json")
    assert recorded(tmp_path) == counts
    assert_mailbox_drained(dovecot, expected["processed"], expected["failed"])


def test_running_hub_takes_new_mail_as_it_arrives(dovecot: Mailbox, tmp_path: Path) -> None:
    """``hub run`` (no --until-idle) waits in IDLE and takes a mail in as soon as it arrives;
    SIGTERM stops it cleanly."""
    cfg = write_config(tmp_path, dovecot, idle_wait=5, poll_interval=30)
    checked = json.loads(hub(cfg, dovecot, "check", "--json").stdout)
    assert checked["connectors"]["mailbox"]["ok"], checked  # health: login and folder
    assert "0 message(s)" in checked["connectors"]["mailbox"]["detail"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "-c", str(cfg), "run"],
        cwd=tmp_path,
        env=hub_env(dovecot),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_for(count: int) -> float:
        started = time.monotonic()
        while len(recorded(tmp_path)) < count and time.monotonic() - started < 60:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        return time.monotonic() - started

    try:
        # The first mail proves the hub is up and reading (start-up time is not what is measured).
        dovecot.append([mail([Attachment("first.json", json_bytes(29), "application/json")])])
        wait_for(1)
        time.sleep(0.5)  # now it waits in IDLE
        dovecot.append([mail([Attachment("new.json", json_bytes(30), "application/json")])])
        took = wait_for(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert recorded(tmp_path) == {f"2532{29:016d}": 1, f"2532{30:016d}": 1}
    assert took < 5, f"took {took:.1f}s: IDLE did not wake the source (poll_interval is 30 s)"
    assert proc.returncode == 0, err


def test_gbk_attachment_name_reaches_the_ledger(dovecot: Mailbox, tmp_path: Path) -> None:
    dovecot.append(
        [
            mail([Attachment("发票镕.json", json_bytes(11), encoding="rfc2047-gb2312")]),
            mail([Attachment("電子發票.json", json_bytes(12), encoding="rfc2047-big5")]),
            mail([Attachment("增值税发票.json", json_bytes(13), encoding="raw-gbk")]),
            mail([Attachment("发票 № 14.json", json_bytes(14), encoding="rfc2231-utf8")]),
        ]
    )
    cfg = write_config(tmp_path, dovecot)
    hub(cfg, dovecot, "run", "--until-idle", "--json")
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    try:
        import sqlalchemy as sa

        from hub.ledger import schema as t

        with ledger.engine.connect() as conn:
            names = set(conn.execute(sa.select(t.documents.c.filename)).scalars())
    finally:
        ledger.close()
    assert {"发票镕.json", "電子發票.json", "增值税发票.json", "发票 № 14.json"} <= names, names
    assert len(recorded(tmp_path)) == 4


# ---------------------------------------------------------------------------------------------------
# The connector's own contract
# ---------------------------------------------------------------------------------------------------
def source(box: Mailbox, tmp_path: Path, **extra: Any) -> ImapSource:
    settings = ImapSettings.model_validate({**imap_settings(box, **extra), "password": box.password})
    return ImapSource(settings, ConnectorContext(name="mailbox", data_dir=tmp_path))


def test_poll_peeks_and_commit_moves(dovecot: Mailbox, tmp_path: Path) -> None:
    raw = mail(
        [Attachment("a.json", json_bytes(21), "application/json")], message_id="<abc/1@supplier.example>"
    )
    dovecot.append([raw, text_only_mail()])
    with source(dovecot, tmp_path) as src:
        items = list(src.poll(None))
        first = items[0]
        assert first.documents[0].content == raw
        assert first.key == "<abc/1@supplier.example>"
        doc = first.documents[0]
        assert doc.media_type == "message/rfc822"
        assert doc.filename == "abc_1@supplier.example.eml"
        assert doc.origin == f"imap:INBOX:{first.handle.uid}:<abc/1@supplier.example>"
        # Reading changed nothing: both are still unseen in the INBOX.
        assert dovecot.counts()["INBOX"] == {"messages": 2, "unseen": 2}
        # Polled again before commit (a crash): the same messages come again.
        assert [i.key for i in src.poll(None)] == [i.key for i in items]
        src.commit(items[0], IntakeOutcome(accepted=1))
        src.commit(items[1], IntakeOutcome(dead_letters=1))
    counts = dovecot.counts()
    assert counts["INBOX"]["messages"] == 0
    assert counts["processed"] == {"messages": 1, "unseen": 0}
    assert counts["failed"] == {"messages": 1, "unseen": 0}
    assert dovecot.messages("processed") == [raw]


def test_bodies_fetched_in_bounded_groups_keep_uid_order(dovecot: Mailbox, tmp_path: Path) -> None:
    raws = [
        mail([Attachment(f"{i}.json", json_bytes(40 + i))], message_id=f"<order-{i}@x>") for i in range(7)
    ]
    dovecot.append(raws)
    with source(dovecot, tmp_path, batch_size=3, fetch_bytes=4096) as src:
        items = list(src.poll(None))
    assert [i.key for i in items] == [f"<order-{i}@x>" for i in range(7)]
    assert [i.documents[0].content for i in items] == raws


def test_recreated_folder_moves_nothing_by_stale_uid(dovecot: Mailbox, tmp_path: Path) -> None:
    first = mail([Attachment("a.json", json_bytes(50))], message_id="<first@x>")
    dovecot.append([first], folder="Rechnungen")
    with source(dovecot, tmp_path, folder="Rechnungen") as src:
        (item,) = list(src.poll(None))
    # Someone deletes and recreates the folder: UID 1 now names another message.
    admin = dovecot.client()
    try:
        admin.delete_folder("Rechnungen")
        admin.create_folder("Rechnungen")
    finally:
        admin.logout()
    other = mail([Attachment("b.json", json_bytes(51))], message_id="<other@x>")
    dovecot.append([other], folder="Rechnungen")
    with source(dovecot, tmp_path, folder="Rechnungen") as src:
        src.commit(item, IntakeOutcome(accepted=1))
        (again,) = list(src.poll(None))  # moves nothing, then reads what is there now
    assert again.key == "<other@x>"
    assert dovecot.messages("Rechnungen") == [other]
    assert dovecot.messages("processed") == []


def test_unreadable_message_does_not_hold_up_the_rest(
    dovecot: Mailbox,
    dovecot_server: DovecotServer,
    tmp_path: Path,
) -> None:
    raws = [mail([Attachment(f"{i}.json", json_bytes(60 + i))], message_id=f"<m{i}@x>") for i in range(3)]
    dovecot.append(raws)
    # Make the middle message unreadable for the server (its Maildir file belongs to nobody it knows).
    maildir = dovecot_server.root / "mail" / dovecot.username / "Maildir"
    files = sorted(p for sub in ("new", "cur") for p in (maildir / sub).iterdir())
    assert len(files) == 3
    victim = next(p for p in files if b"Message-ID: <m1@x>" in p.read_bytes())
    victim.chmod(0)
    with source(dovecot, tmp_path) as src:
        items = list(src.poll(None))
    assert [i.key for i in items] == ["<m0@x>", "<m2@x>"]
    assert dovecot.counts()["INBOX"]["messages"] == 3  # nothing lost; the bad one is tried again later


def test_unseen_only_leaves_read_mail(dovecot: Mailbox, tmp_path: Path) -> None:
    dovecot.append([mail([Attachment("a.json", json_bytes(22))])], flags=(b"\\Seen",))
    dovecot.append([mail([Attachment("b.json", json_bytes(23))])])
    with source(dovecot, tmp_path, select="unseen") as src:
        assert len(list(src.poll(None))) == 1
    with source(dovecot, tmp_path) as src:  # select: all (the default) takes read mail too
        assert len(list(src.poll(None))) == 2


def test_idle_returns_when_mail_arrives(dovecot: Mailbox, tmp_path: Path) -> None:
    with source(dovecot, tmp_path, idle_wait=20) as src:
        assert list(src.poll(None)) == []  # the first empty poll returns at once
        started = time.monotonic()
        import threading

        timer = threading.Timer(
            0.5, dovecot.append, args=([mail([Attachment("late.json", json_bytes(24))])],)
        )
        timer.start()
        try:
            items = list(src.poll(None))  # waits in IDLE until the mail arrives
        finally:
            timer.join()
        elapsed = time.monotonic() - started
    assert len(items) == 1
    assert 0.4 < elapsed < 10, elapsed


def test_oversized_message_is_handed_in_marked(dovecot: Mailbox, tmp_path: Path) -> None:
    big = mail([Attachment("big.json", json_bytes(25) + b" " * 5000)])
    dovecot.append([big])
    with source(dovecot, tmp_path, max_message_size=2048) as src:
        (item,) = list(src.poll(None))
    assert item.documents[0].content == big
    assert 'x-hub-oversized="' in item.documents[0].media_type


def test_wrong_password_is_a_clear_permanent_error(tmp_path: Path) -> None:
    # A server of its own: Dovecot slows down every login from an address after a failed one.
    with running_dovecot() as server:
        box = server.add_user()
        settings = ImapSettings.model_validate({**imap_settings(box), "password": "not-the-password"})
        src = ImapSource(settings, ConnectorContext(name="mailbox", data_dir=tmp_path))
        with pytest.raises(PermanentError) as info:
            list(src.poll(None))
        src.close()
    assert str(info.value) == (
        f"IMAP login refused for user {box.username} at {box.host}:{box.port}: "
        "[AUTHENTICATIONFAILED] Authentication failed."
    )
    assert "not-the-password" not in str(info.value)


def test_settings_refuse_moving_mail_into_the_folder_it_is_read_from(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "ledger": f"sqlite:///{tmp_path}/ledger.db",
                "data_dir": str(tmp_path / ".hub"),
                "connectors": {
                    "mailbox": {
                        "type": "email.imap",
                        "settings": {
                            "host": "mail.example",
                            "username": "u",
                            "password": "p",
                            "processed_folder": "inbox",
                        },
                    }
                },
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "hub", "-c", str(cfg), "check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "processed_folder and failed_folder must differ" in result.stdout + result.stderr


def test_unreachable_server_is_transient(tmp_path: Path) -> None:
    box = Mailbox("127.0.0.1", free_port(), "nobody", "secret")
    with source(box, tmp_path, timeout=2) as src:
        with pytest.raises(TransientError, match="unreachable"):
            list(src.poll(None))
        health = src.health()
    assert not health.ok and "unreachable" in health.detail


def test_missing_folder_is_permanent(dovecot: Mailbox, tmp_path: Path) -> None:
    with (
        source(dovecot, tmp_path, folder="Rechnungen") as src,
        pytest.raises(PermanentError, match="Rechnungen"),
    ):
        list(src.poll(None))


def test_health_reports_the_folder(dovecot: Mailbox, tmp_path: Path) -> None:
    dovecot.append([text_only_mail()])
    with source(dovecot, tmp_path) as src:
        health = src.health()
    assert health.ok, health.detail
    assert "1 message(s)" in health.detail and dovecot.username in health.detail


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls(dovecot_tls: Mailbox, tmp_path: Path, security: str) -> None:
    dovecot_tls.append([mail([Attachment("tls.json", json_bytes(26))])])
    port = dovecot_tls.tls_port if security == "ssl" else dovecot_tls.port
    settings = ImapSettings.model_validate(
        {
            **imap_settings(dovecot_tls),
            "password": dovecot_tls.password,
            "security": security,
            "port": port,
            "ca_file": str(dovecot_tls.ca_file),
        }
    )
    with ImapSource(settings, ConnectorContext(name="mailbox", data_dir=tmp_path)) as src:
        assert len(list(src.poll(None))) == 1
    # Without the CA the certificate is refused, with a message that says what to do.
    untrusted = settings.model_copy(update={"ca_file": None})
    with (
        ImapSource(untrusted, ConnectorContext(name="mailbox", data_dir=tmp_path)) as src,
        pytest.raises(PermanentError, match="certificate not trusted"),
    ):
        list(src.poll(None))


# ---------------------------------------------------------------------------------------------------
# The full mailbox, and crashes
# ---------------------------------------------------------------------------------------------------
def archived_once(cfg: Path, box: Mailbox, numbers: set[str]) -> None:
    """The archive holds each invoice once, and the ledger recorded one delivery per key and sink."""
    os.environ["TEST_IMAP_PASSWORD"] = box.password
    try:
        with Hub(load_config(cfg)) as running:
            archive = running.connectors["archive"]
            assert isinstance(archive, Inventory)
            archived = Counter(item.number for item in archive.inventory())
            with running.ledger.engine.connect() as conn:
                delivered = Counter(
                    conn.execute(
                        sa.select(t.deliveries.c.destination, t.deliveries.c.idem_key).where(
                            t.deliveries.c.state == "delivered"
                        )
                    ).all()
                )
                still_open = conn.execute(
                    sa.select(sa.func.count()).where(t.deliveries.c.state.in_(t.OPEN_STATES))
                ).scalar()
    finally:
        del os.environ["TEST_IMAP_PASSWORD"]
    assert set(archived) == numbers and set(archived.values()) == {1}, archived
    assert set(delivered.values()) == {1}, {k: v for k, v in delivered.items() if v > 1}
    assert len(delivered) == 2 * len(numbers)  # archive and recording sink
    assert still_open == 0


def assert_end_state(
    cfg: Path, box: Mailbox, tmp_path: Path, mix: MailMix, *, killed: bool = False
) -> list[dict[str, Any]]:
    counts = recorded(tmp_path)
    assert set(counts) == mix.numbers, sorted(set(counts) ^ mix.numbers)
    if killed:
        # A kill between the sink's write and the ledger's "delivered" makes the hub call the sink
        # again with the same idempotency key (a real sink deduplicates on it; the recording sink
        # counts the call). What must hold: one archived copy, one delivery per key in the ledger.
        archived_once(cfg, box, mix.numbers)
    else:
        assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert_mailbox_drained(box, mix.processed, mix.failed)
    letters = dead_letters(cfg, box, tmp_path)
    for letter in letters:
        assert letter["document"] is not None and letter["document"].content, letter
        assert letter["message"] and "crashed" not in letter["message"], letter["message"]
    # Every broken mail or attachment is there, once: the same broken document sent twice, or a mail
    # re-read after a kill between the ledger and the IMAP move, finds its open letter and adds none.
    assert {x["document"].sha256 for x in letters} == mix.dead_documents, sorted(
        x["message"][:80] for x in letters
    )
    pairs = [(x["document"].sha256, x["message"]) for x in letters]
    assert len(pairs) == len(set(pairs)), "one open dead letter per broken document and reason"
    return letters


@pytest.mark.slow
def test_full_mailbox_of_200_mails(dovecot: Mailbox, tmp_path: Path) -> None:
    """The issue's check: 200 mails of every format, duplicates, broken and hostile ones."""
    mix = mixed_mails(200, oversized_limit=2_000_000)
    dovecot.append(mix.mails)
    cfg = write_config(tmp_path, dovecot, archive=True, max_message_size=2_000_000)
    summary = json.loads(hub(cfg, dovecot, "run", "--until-idle", "--json").stdout)
    assert not summary.get("source_errors"), summary
    letters = assert_end_state(cfg, dovecot, tmp_path, mix)
    # The mix sends some broken mails more than once: identical bytes are one dead letter, not several.
    assert len(mix.dead_documents) <= len(letters) < mix.dead_letters
    reasons = " | ".join(x["message"] for x in letters)
    for expected in (
        "mail has no invoice attachment",
        "malformed MIME",
        "max_message_size",
        "no structured invoice data",
        "totals.gross",
    ):
        assert expected in reasons, expected


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(dovecot: Mailbox, tmp_path: Path) -> None:
    mix = mixed_mails(60, oversized_limit=2_000_000)
    dovecot.append(mix.mails)
    cfg = write_config(
        tmp_path,
        dovecot,
        archive=True,
        worker={"batch_size": 5, "threads": 2, "relay_interval": 0.2},
        batch_size=5,
        max_message_size=2_000_000,
    )
    rng = random.Random(int(os.environ.get("HUB_TEST_SEED", "3")))
    total = len(mix.mails)
    left = [total]
    while len(left) <= 4 and left[-1] > 0:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "-c", str(cfg), "run"],
            cwd=tmp_path,
            env=hub_env(dovecot),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Wait until this run has moved its first message, then kill it a random moment later:
            # between a FETCH, the ledger commit, a MOVE and a delivery.
            deadline = time.monotonic() + 60
            while dovecot.counts()["INBOX"]["messages"] == left[-1] and time.monotonic() < deadline:
                assert proc.poll() is None, f"hub run exited with {proc.returncode}"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        left.append(dovecot.counts()["INBOX"]["messages"])
    assert any(0 < n < total for n in left[1:]), f"no kill landed inside the mailbox: {left}"
    hub(cfg, dovecot, "run", "--until-idle", "--json")
    assert_end_state(cfg, dovecot, tmp_path, mix, killed=True)
