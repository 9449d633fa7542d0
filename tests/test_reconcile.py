"""`hub reconcile`: a recording "ERP" against an archive.fs archive, seeded with a known set of gaps."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hub.config import load_config
from hub.connectors import Incoming
from hub.engine import Hub
from hub.errors import ConfigError
from hub.models import Document
from hub.reconcile import reconcile, reconcile_entries
from tests.conftest import REPO, run_hub, write_hub_yaml

EXAMPLES = REPO / "examples" / "inbox"


def _config(tmp_path: Path, **extra: Any) -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    config = {
        "ledger": f"sqlite:///{tmp_path}/ledger.db",
        "bus": "memory://",
        "data_dir": str(tmp_path / ".hub"),
        "retry": {"max_attempts": 1, "initial_delay": 0},
        "worker": {"threads": 2, "relay_interval": 0.2},
        "connectors": {
            "inbox": {"type": "files", "settings": {"path": str(tmp_path / "inbox"), "min_age": 0}},
            "erp": {
                "type": "recording",
                "settings": {"path": str(tmp_path / "erp.db"), "down_file": str(tmp_path / "erp.down")},
            },
            "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
        },
        "routes": [{"name": "to-both", "from": "inbox", "to": ["erp", "archive"]}],
        **extra,
    }
    return write_hub_yaml(tmp_path / "hub.yaml", config)


def _invoice(name: str, **changes: Any) -> dict[str, Any]:
    data = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[key] = value
    return data


def _incoming(data: dict[str, Any], label: str) -> Incoming:
    body = json.dumps(data, ensure_ascii=False).encode()
    doc = Document(content=body, media_type="application/json", filename=f"{label}.json", source="inbox")
    return Incoming(documents=[doc], key=label)


def _phase(cfg: Path, *invoices: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """One `hub run` worth of work: ingest these invoices and run until nothing is open."""
    with Hub(load_config(cfg)) as hub:
        outcomes = hub.ingest([_incoming(d, label) for d, label in invoices], "inbox")
        assert all(o.accepted == 1 for o in outcomes), outcomes
        return hub.run(until_idle=True)


@pytest.fixture
def seeded(tmp_path: Path) -> dict[str, Any]:
    """Six invoices through erp (recording) and archive (archive.fs), then four known gaps:

    * 01 delivered to both (no gap);
    * 02 only in erp: the archive lost its record after delivery;
    * 05 only in archive: the ERP lost its row after delivery;
    * 03 only in archive: the ERP was down, its delivery is a dead letter;
    * 04 amended: version 1 reached both, version 2 reached the archive only (the ERP was down).
    """
    cfg = _config(tmp_path)
    first = {
        n: _invoice(f)
        for n, f in (
            ("01", "01-25322000000000000001.json"),
            ("02", "02-25112000000000000002.json"),
            ("04", "04-25312000000000000004.json"),
            ("05", "05-25322000000000000005.json"),
        )
    }
    _phase(cfg, *((d, n) for n, d in first.items()))
    # The archive loses 02, the ERP loses 05 (someone deleted them there).
    with Hub(load_config(cfg)) as hub:
        archive = hub.connectors["archive"]
        [lost] = [x for x in archive.inventory() if x.number == first["02"]["number"]]
        archive.store.path(lost.remote_ref).unlink()
    with sqlite3.connect(tmp_path / "erp.db") as db:
        db.execute("DELETE FROM received WHERE number = ?", (first["05"]["number"],))
    db.close()
    # The ERP goes down: 03 and the amendment of 04 are dead-lettered there (max_attempts 1).
    (tmp_path / "erp.down").touch()
    third = _invoice("03-25442000000000000003.json")
    amended = _invoice(
        "04-25312000000000000004.json", buyer__address="杭州市滨江区江南大道100号 0571-86000000"
    )
    summary = _phase(cfg, (third, "03"), (amended, "04-v2"))
    assert summary["dead"] == 2
    (tmp_path / "erp.down").unlink()
    numbers = {n: d["number"] for n, d in first.items()}
    numbers["03"] = third["number"]
    return {"cfg": cfg, "numbers": numbers, "tmp": tmp_path}


def test_reconcile_names_every_gap_with_its_reason_and_repair_closes_them(seeded: dict[str, Any]) -> None:
    cfg, numbers, tmp = seeded["cfg"], seeded["numbers"], seeded["tmp"]
    result = run_hub("-c", str(cfg), "reconcile", "erp", "archive", "--json", cwd=tmp)
    report = json.loads(result.stdout)
    gaps = {g["number"]: g for g in report["gaps"]}
    assert set(gaps) == {numbers["02"], numbers["03"], numbers["04"], numbers["05"]}, report["gaps"]

    only_erp = gaps[numbers["02"]]
    assert (only_erp["kind"], only_erp["missing_at"], only_erp["ledger"]) == (
        "only_in_a",
        "archive",
        "delivered_missing",
    )
    assert "missing there now" in only_erp["reason"]

    only_archive = gaps[numbers["05"]]
    assert (only_archive["kind"], only_archive["missing_at"], only_archive["ledger"]) == (
        "only_in_b",
        "erp",
        "delivered_missing",
    )

    dead = gaps[numbers["03"]]
    assert (dead["kind"], dead["missing_at"], dead["ledger"]) == ("only_in_b", "erp", "dead_lettered")
    assert "TransientError" in dead["reason"] and "connection refused" in dead["reason"]
    assert dead["dead_letter_id"] is not None

    amended = gaps[numbers["04"]]
    assert (amended["kind"], amended["missing_at"], amended["ledger"]) == ("differs", "erp", "dead_lettered")
    assert amended["hash_a"] != amended["hash_b"]
    assert all(g["repairable"] for g in gaps.values())
    assert report["counts"] == {"erp": 3, "archive": 5, "matched": 1}

    # The text report says the same, one line per gap.
    text = run_hub("-c", str(cfg), "reconcile", "erp", "archive", cwd=tmp).stdout
    for n in ("02", "03", "04", "05"):
        assert numbers[n] in text
    assert "dead_lettered" in text and "delivered_missing" in text and "content differs" in text

    repaired = json.loads(
        run_hub("-c", str(cfg), "reconcile", "erp", "archive", "--repair", "--json", cwd=tmp).stdout
    )
    assert repaired["repaired"] == 4, [g["repair"] for g in repaired["gaps"]]

    again = json.loads(run_hub("-c", str(cfg), "reconcile", "erp", "archive", "--json", cwd=tmp).stdout)
    assert again["gaps"] == [], again["gaps"]
    assert again["counts"]["matched"] == 5

    # Nothing was delivered twice under one key, and a repair run again changes nothing.
    with sqlite3.connect(tmp / "erp.db") as db:
        counts = [n for (n,) in db.execute("SELECT count FROM received")]
    db.close()
    assert counts and max(counts) == 1
    with Hub(load_config(cfg)) as hub:
        from prometheus_client import CollectorRegistry, generate_latest

        from hub.http import LedgerCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(LedgerCollector(hub))
        text_metrics = generate_latest(registry).decode()
    # Version 2 of 04 reached the archive (holding version 1) and, repaired, the ERP: two amendments.
    assert 'hub_amendments_delivered_total{destination="archive"} 1.0' in text_metrics
    assert 'hub_amendments_delivered_total{destination="erp"} 1.0' in text_metrics
    assert 'hub_amendments_total{source="inbox"} 1.0' in text_metrics
    third = json.loads(
        run_hub("-c", str(cfg), "reconcile", "erp", "archive", "--repair", "--json", cwd=tmp).stdout
    )
    assert third["gaps"] == [] and third["repaired"] == 0


def test_repair_is_idempotent_while_queued(seeded: dict[str, Any]) -> None:
    """Two repairs before anything is delivered queue each delivery once (the live-key check)."""
    cfg = seeded["cfg"]
    with Hub(load_config(cfg)) as hub:
        first = reconcile(hub, "erp", "archive", repair=True)
        second = reconcile(hub, "erp", "archive", repair=True)
        assert first.repaired == 4
        assert second.repaired == 0
        assert {g.number for g in second.gaps} == {g.number for g in first.gaps}
        # Replayed dead letters are now pending (the pipeline has them); re-sends find their live key.
        assert all(g.ledger == "pending" or "already under way" in (g.repair or "") for g in second.gaps), [
            (g.ledger, g.repair) for g in second.gaps
        ]
        hub.run(until_idle=True)
    with Hub(load_config(cfg)) as hub:
        assert reconcile(hub, "erp", "archive").gaps == []


def test_never_received_and_suspected_duplicates_are_reported_not_repaired(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    original = _invoice("01-25322000000000000001.json")
    # The same seller, buyer, day and amount under a second number: a mistyped number, typically.
    retyped = _invoice("01-25322000000000000001.json", number="25322000000000000091")
    _phase(cfg, (original, "01"), (retyped, "01-retyped"))
    # An invoice the ERP holds that never came through the hub.
    with sqlite3.connect(tmp_path / "erp.db") as db:
        db.execute(
            "INSERT INTO received VALUES ('manual-1', 'cn.digital.ordinary:91110000600037341L:99999999', "
            "'f00d', '99999999', '2025-10-03', '100.00', 'CNY', NULL, 1)"
        )
    db.close()
    with Hub(load_config(cfg)) as hub:
        report = reconcile(hub, "erp", "archive", repair=True, summary=True)
    [gap] = report.gaps
    assert (gap.kind, gap.ledger, gap.repairable, gap.repair) == ("only_in_a", "never_received", False, None)
    assert "never received" in gap.reason
    [dup] = report.duplicates
    assert dup["numbers"] == sorted([original["number"], retyped["number"]])
    assert dup["gross"] == "14480.00" or dup["gross"] == "14480"
    by_day = {r["day"]: r for r in report.summary or []}
    assert by_day["2025-10-02"]["a_count"] == 2 and by_day["2025-10-02"]["balanced"]
    assert by_day["2025-10-03"]["a_count"] == 1 and not by_day["2025-10-03"]["balanced"]


def test_reconcile_entries_are_validated_with_yaml_paths(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        reconcile=[
            {"a": "erp", "b": "archive", "cron": "every day"},
            {"a": "erp", "b": "nowhere", "cron": "0 2 * * *"},
        ],
    )
    with pytest.raises(ConfigError) as info:
        reconcile_entries(load_config(cfg))
    text = str(info.value)
    assert "reconcile.0.cron" in text and "not a cron expression" in text
    assert "reconcile.1.b" in text and "'nowhere'" in text
    assert "line" in text


def test_scheduled_reconcile_runs_from_hub_run(tmp_path: Path) -> None:
    """A `reconcile:` entry (here due every second: croniter's sixth field) runs inside `hub run`, and
    every run is in the audit log, which feeds the reconcile metrics."""
    import threading

    from hub.reconcile import last_runs

    cfg = _config(tmp_path, reconcile=[{"a": "erp", "b": "archive", "cron": "* * * * * *"}])
    _phase(cfg, (_invoice("01-25322000000000000001.json"), "01"))
    with Hub(load_config(cfg)) as hub:
        timer = threading.Timer(2.5, hub.stop)
        timer.start()
        try:
            hub.run()
        finally:
            timer.cancel()
        [run] = last_runs(hub.ledger)
    assert run["actor"] == "scheduler"
    assert (run["a"], run["b"], run["gaps"]) == (
        "erp",
        "archive",
        {"only_in_a": 0, "only_in_b": 0, "differs": 0},
    )
    assert run["counts"]["matched"] == 1


@pytest.mark.integration
def test_reconcile_and_metrics_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same ledger queries on PostgreSQL: a dead-lettered gap is found and repaired, and the metrics
    collector's counts equal `ops.status`."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from hub import ops
    from hub.http import LedgerCollector

    cfg = _config(tmp_path, ledger=pg_url)
    (tmp_path / "erp.down").touch()
    _phase(
        cfg,
        (_invoice("01-25322000000000000001.json"), "01"),
        (_invoice("03-25442000000000000003.json"), "03"),
    )
    (tmp_path / "erp.down").unlink()
    with Hub(load_config(cfg)) as hub:
        report = reconcile(hub, "erp", "archive", repair=True, deliver_now=True)
        assert {(g.kind, g.ledger) for g in report.gaps} == {("only_in_b", "dead_lettered")}
        assert report.repaired == 2
        assert reconcile(hub, "erp", "archive").gaps == []
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LedgerCollector(hub))
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        status = ops.status(hub.ledger)
    delivered = sum(s.value for s in families["hub_delivered"].samples)
    assert delivered == status["deliveries"]["delivered"] == 4
    latency = families["hub_delivery_latency_seconds"].samples
    count = sum(s.value for s in latency if s.name.endswith("_count"))
    total = sum(s.value for s in latency if s.name.endswith("_sum"))
    assert count == 4 and 0 < total < 600
    assert families["hub_amendments_delivered"].samples == []
    gaps = {s.labels["kind"]: s.value for s in families["hub_reconcile_gaps"].samples}
    assert gaps == {"only_in_a": 0, "only_in_b": 0, "differs": 0}


def test_a_version_never_routed_there_gets_a_delivery_under_its_normal_key(tmp_path: Path) -> None:
    """An invoice the routes did not send to the ERP (a filter) is `not_routed`; repair creates the
    delivery the route would have made (same idempotency key), and the worker delivers it."""
    cfg = _config(tmp_path)
    text = cfg.read_text(encoding="utf-8")
    routes = (
        "routes:\n"
        "- {name: archive-all, from: inbox, to: archive}\n"
        "- {name: erp-one-seller, from: inbox, to: erp, filters: {seller_tax_ids: [91110000600037341L]}}\n"
    )
    cfg.write_text(text[: text.index("routes:")] + routes, encoding="utf-8")
    _phase(cfg, (_invoice("01-25322000000000000001.json"), "01"))
    result = run_hub("-c", str(cfg), "reconcile", "erp", "archive", "--repair", cwd=tmp_path)
    assert "only in archive" in result.stdout and "not_routed" in result.stdout
    assert "no route sends it there" in result.stdout
    assert "1 repair(s) sent through the worker" in result.stdout
    with Hub(load_config(cfg)) as hub:
        assert reconcile(hub, "erp", "archive").gaps == []
    with sqlite3.connect(tmp_path / "erp.db") as db:
        [(key, count)] = db.execute("SELECT key, count FROM received").fetchall()
    db.close()
    assert len(key) == 64 and count == 1  # the content hash: the normal key, delivered once
