"""The foundation end to end through the CLI: examples in, archive out, dead letters fixed and replayed."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_hub, write_hub_yaml


def make_config(
    tmp_path: Path,
    *,
    on_amendment: str = "deliver",
    sink: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
) -> Path:
    inbox = tmp_path / "inbox"
    if not inbox.exists():
        shutil.copytree(REPO / "examples" / "inbox", inbox)
    return write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp_path}/ledger.db",
            "data_dir": str(tmp_path / ".hub"),
            "logging": {"level": "warning"},
            "worker": {"threads": 2, "relay_interval": 0.2},
            "retry": retry or {"max_attempts": 3, "initial_delay": 0.05, "max_delay": 0.5, "jitter": 0.1},
            "connectors": {
                "inbox": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
                "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
                "rec": {"type": "recording", "settings": {"path": str(tmp_path / "rec.db"), **(sink or {})}},
            },
            "routes": [
                {"name": "in", "from": "inbox", "to": ["archive", "rec"], "on_amendment": on_amendment}
            ],
        },
    )


def hub(cfg: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> Any:
    result = run_hub("-c", str(cfg), *args, cwd=cfg.parent, check=check, env=env)
    if "--json" in args and result.returncode == 0:
        return json.loads(result.stdout)
    return result


def received(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "rec.db") as db:
        return dict(db.execute("SELECT key, count FROM received"))


def test_examples_flow_into_the_archive(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    summary = hub(cfg, "run", "--until-idle", "--json")
    assert summary["received"] == 22  # 20 distinct + 1 duplicate + 1 amendment
    assert summary["duplicates"] == 1
    assert summary["amendments"] == 1
    assert summary["intake_dead_letters"] == 3  # bad tax id, wrong totals, not an invoice
    assert summary["status"]["invoices"] == {"identities": 20, "versions": 21}
    assert summary["status"]["destinations"]["archive"] == {"delivered": 21, "skipped": 1}
    assert sorted(received(tmp_path).values()) == [1] * 21  # each version reached the sink exactly once
    inbox = tmp_path / "inbox"
    assert len(list((inbox / "done").iterdir())) == 22
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == [
        "23-bad-tax-id.json",
        "24-wrong-totals.json",
        "25-meeting-notes.txt",
    ]
    assert not [p for p in inbox.iterdir() if p.is_file()]
    groups = {(g["destination"], g["error"]): g["count"] for g in summary["dead_letter_groups"]}
    assert groups == {("intake:inbox", "InvoiceInvalid"): 2, ("intake:inbox", "ParseError"): 1}

    # A second run finds nothing new; the archive holds each version once.
    again = hub(cfg, "run", "--until-idle", "--json")
    assert again["received"] == 0
    archived = list((tmp_path / "archive").rglob("*.json"))
    assert archived, "archive.fs wrote metadata records"


def test_trace_tells_the_whole_story(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    hub(cfg, "run", "--until-idle", "--json")
    story = hub(cfg, "trace", "25112000000000000002", "--json")
    assert story["identities"] == ["CN:25112000000000000002"]
    assert len(story["versions"]) == 2
    archive = [d for d in story["deliveries"] if d["destination"] == "archive"]
    assert [d["state"] for d in archive] == ["delivered", "delivered"]
    assert archive[1]["amends"] == story["versions"][0]["content_hash"]
    whats = [e["what"] for e in story["timeline"]]
    assert "document received" in whats and "version recorded" in whats
    assert any("inflight → delivered" in w for w in whats)
    text = hub(cfg, "trace", "CN:25112000000000000002").stdout
    assert "delivery" in text and "delivered" in text
    missing = hub(cfg, "trace", "99999999999999999999", check=False)
    assert missing.returncode == 1 and "nothing in the ledger matches" in missing.stderr


@pytest.mark.parametrize(("policy", "state"), [("skip", "skipped"), ("dead_letter", "dead")])
def test_amendment_policy(tmp_path: Path, policy: str, state: str) -> None:
    cfg = make_config(tmp_path, on_amendment=policy)
    hub(cfg, "run", "--until-idle", "--json")
    story = hub(cfg, "trace", "25112000000000000002", "--json")
    archive = [d for d in story["deliveries"] if d["destination"] == "archive"]
    assert [d["state"] for d in archive] == ["delivered", state]
    if policy == "dead_letter":
        letters = hub(cfg, "dlq", "list", "--destination", "archive", "--json")
        assert letters[0]["error_class"] == "AmendmentRejected"


def test_dlq_edit_fixes_the_bad_checksum_and_the_audit_log_says_who(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    hub(cfg, "run", "--until-idle", "--json")
    letters = hub(cfg, "dlq", "list", "--json")
    bad = next(x for x in letters if "tax_id" in x["message"])
    shown = hub(cfg, "dlq", "show", str(bad["id"]), "--json")
    assert shown["detail"]["problems"][0]["path"] == "seller.tax_id"
    assert shown["document"]["filename"] == "23-bad-tax-id.json"

    fixed = dict(shown["invoice"])
    fixed["seller"] = {**fixed["seller"], "tax_id": fixed["seller"]["tax_id"][:-1] + "Q"}  # still wrong
    (tmp_path / "edit.json").write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
    refused = hub(cfg, "dlq", "edit", str(bad["id"]), "--file", str(tmp_path / "edit.json"), check=False)
    assert refused.returncode == 1 and "seller.tax_id" in refused.stderr

    from stdnum.cn import uscc

    body = fixed["seller"]["tax_id"][:-1]
    fixed["seller"]["tax_id"] = body + uscc.calc_check_digit(body)
    (tmp_path / "edit.json").write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
    result = hub(
        cfg,
        "dlq",
        "edit",
        str(bad["id"]),
        "--file",
        str(tmp_path / "edit.json"),
        "--reason",
        "supplier confirmed the credit code",
        "--json",
        env={"HUB_ACTOR": "alice"},
    )
    assert result["action"] == "replayed"
    hub(cfg, "run", "--until-idle", "--json")
    story = hub(cfg, "trace", fixed["number"], "--json")
    assert [d["state"] for d in story["deliveries"]] == ["delivered", "delivered"]
    operator = [e for e in story["timeline"] if e["what"].startswith("operator alice")]
    assert operator and "supplier confirmed" in operator[0]["detail"]
    assert hub(cfg, "dlq", "list", "--json") and all(
        x["id"] != bad["id"] for x in hub(cfg, "dlq", "list", "--json")
    )


def test_transient_failures_retry_with_backoff_and_retry_after_is_a_floor(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sink={"rate_limit_first": 1, "retry_after": 1.5})
    hub(cfg, "run", "--until-idle", "--json")
    story = hub(cfg, "trace", "25322000000000000001", "--json")
    rec = next(d for d in story["deliveries"] if d["destination"] == "rec")
    assert rec["state"] == "delivered" and rec["attempts"] == 2
    events = [e for e in story["timeline"] if f"delivery {rec['id']} " in e["what"]]
    from datetime import datetime

    failed_at = next(datetime.fromisoformat(e["at"]) for e in events if "inflight → retrying" in e["what"])
    retried_at = next(datetime.fromisoformat(e["at"]) for e in events if "retrying → inflight" in e["what"])
    assert (retried_at - failed_at).total_seconds() >= 1.5


def test_exhausted_and_crashing_sinks_become_dead_letters_with_the_real_error(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        sink={"fail_first": 10, "poison": ["25442000000000000003"]},
        retry={"max_attempts": 2, "initial_delay": 0.05, "max_delay": 0.1, "jitter": 0},
    )
    summary = hub(cfg, "run", "--until-idle", "--json")
    assert summary["status"]["destinations"]["archive"]["delivered"] == 21  # the other sink is unaffected
    groups = hub(cfg, "dlq", "list", "--destination", "rec", "--group-by", "error", "--json")
    by_error = {g["error"]: g["count"] for g in groups}
    assert by_error == {"HTTP 503": 20, "RuntimeError": 1}
    text = hub(cfg, "dlq", "list", "--group-by", "error").stdout
    assert "rec, HTTP 503, 20 letter(s), " in text
    poison = hub(cfg, "dlq", "list", "--error", "RuntimeError", "--json")[0]
    shown = hub(cfg, "dlq", "show", str(poison["id"]), "--json")
    assert "recording sink crashed on poison invoice" in shown["message"]
    assert "Traceback" in shown["traceback"] and "RuntimeError" in shown["traceback"]
    exhausted = hub(
        cfg,
        "dlq",
        "show",
        str(hub(cfg, "dlq", "list", "--error", "TransientError", "--json")[0]["id"]),
        "--json",
    )
    assert [a["outcome"] for a in exhausted["attempt_history"]] == ["retrying", "dead"]
    assert exhausted["attempt_history"][0]["remote_status"] == 503
    assert exhausted["attempt_history"][0]["remote_body"] == "try again later"


def test_replay_never_resends_acknowledged_content_unless_forced(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sink={"fail_first": 1}, retry={"max_attempts": 1, "initial_delay": 0.05})
    hub(cfg, "run", "--until-idle", "--json")
    letters = hub(cfg, "dlq", "list", "--destination", "rec", "--json")
    assert len(letters) == 21
    dry = hub(cfg, "dlq", "replay", "--all", "--destination", "rec", "--dry-run", "--json")
    assert {r["action"] for r in dry} == {"would_replay"} and len(dry) == 21
    replayed = hub(cfg, "dlq", "replay", "--all", "--destination", "rec", "--json")
    assert {r["action"] for r in replayed} == {"replayed"}
    hub(cfg, "run", "--until-idle", "--json")
    assert sorted(received(tmp_path).values()) == [1] * 21
    # Replaying a letter again whose content has since been acknowledged sends nothing...
    first = letters[0]["id"]
    again = hub(cfg, "dlq", "replay", str(first), "--json")
    assert again[0]["action"] == "skipped"
    # ...and a forced re-send needs a reason.
    forced = hub(cfg, "dlq", "replay", str(first), "--force", check=False)
    assert forced.returncode != 0


def test_discard_is_recorded(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    hub(cfg, "run", "--until-idle", "--json")
    notes = hub(cfg, "dlq", "list", "--error", "ParseError", "--json")[0]
    result = hub(
        cfg,
        "dlq",
        "discard",
        str(notes["id"]),
        "--reason",
        "meeting notes, not an invoice",
        "--json",
        env={"HUB_ACTOR": "bob"},
    )
    assert result[0]["action"] == "discarded"
    assert hub(cfg, "dlq", "list", "--state", "discarded", "--json")[0]["id"] == notes["id"]
    status = hub(cfg, "status", "--json")
    assert status["dead_letters"] == {"open": 2, "replayed": 0, "discarded": 1}


def test_plugins_lists_connector_types(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = hub(cfg, "plugins", "--json")
    by_name = {r["name"]: r for r in rows}
    assert by_name["files"]["connector_types"] == ["files"]
    assert by_name["files"]["distribution"] == "invoice-hub"
    assert "hub_register_connector_types" in by_name["files"]["hooks"]
    assert by_name["json_parser"]["parsers"] == ["json"]


def test_ingest_by_hand(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    one = tmp_path / "inbox" / "05-25322000000000000005.json"
    rows = hub(cfg, "ingest", "--source", "inbox", str(one), "--json")
    assert rows[0]["identities"] == ["CN:25322000000000000005"]
    assert hub(cfg, "status", "--json")["deliveries"] == {"pending": 2}


def test_a_sink_call_longer_than_the_lease_is_not_made_twice(tmp_path: Path) -> None:
    """A slow destination (a platform that answers after seconds) keeps its claim: the worker renews
    the lease while the call runs, so the relay does not hand the same delivery to the other thread."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(REPO / "examples" / "inbox" / "01-25322000000000000001.json", inbox)
    cfg = write_hub_yaml(
        tmp_path / "hub.yaml",
        {
            "ledger": f"sqlite:///{tmp_path}/ledger.db",
            "data_dir": str(tmp_path / ".hub"),
            "logging": {"level": "warning"},
            "worker": {"threads": 2, "relay_interval": 0.1, "lease_seconds": 0.6},
            "connectors": {
                "inbox": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
                "rec": {"type": "recording", "settings": {"path": str(tmp_path / "rec.db"), "delay": 2.0}},
            },
            "routes": [{"name": "in", "from": "inbox", "to": ["rec"]}],
        },
    )
    summary = hub(cfg, "run", "--until-idle", "--json")
    assert summary["delivered"] == 1, summary
    assert list(received(tmp_path).values()) == [1]
    story = hub(cfg, "trace", "--json", summary_number(tmp_path))
    details = json.dumps(story)
    assert "claim lease expired" not in details, details


def summary_number(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "rec.db") as db:
        return str(db.execute("SELECT number FROM received").fetchone()[0])
