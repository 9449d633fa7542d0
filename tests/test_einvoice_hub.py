"""End to end through the real CLI: invoices dropped in a folder are issued by the Nuonuo sandbox (with a
429 and a time-out after issue on the way), and the issued invoice with its OFD/XML/PDF goes on to the
archive; ``hub trace`` tells each step; the sandbox's count shows one issue per invoice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub import InvoiceKind
from tests.conftest import run_hub, write_hub_yaml
from tests.sandbox_server import run_asgi
from tests.test_einvoice_platforms import APP_KEY, APP_SECRET, SELLER_TAX, create_sandbox, make_invoice

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def hub(cfg: Path, *args: str) -> Any:
    result = run_hub("-c", str(cfg), *args, cwd=cfg.parent, env={"NUONUO_SECRET": APP_SECRET})
    return json.loads(result.stdout) if "--json" in args else result.stdout


def einvoice_cli(cfg: Path, url: str) -> None:
    """`hub einvoice ...`: status, inventory, red letter (idempotent), void refused for 数电."""
    listed = [json.loads(line) for line in hub(cfg, "einvoice", "inventory", "nuonuo").splitlines()]
    assert len(listed) == 3 and all(len(item["number"]) == 20 for item in listed)
    blue = listed[0]["number"]
    order_no = httpx.get(f"{url}/_sandbox/stats").json()["issues_per_order"]
    shown = json.loads(hub(cfg, "einvoice", "status", "nuonuo", "--order-no", next(iter(order_no))))
    assert shown["state"] == "issued" and shown["number"] in {item["number"] for item in listed}

    red = json.loads(hub(cfg, "einvoice", "red-letter", "nuonuo", blue, "--reason", "02"))
    again = json.loads(hub(cfg, "einvoice", "red-letter", "nuonuo", blue, "--reason", "02"))
    assert red["red_number"] == again["red_number"] != blue
    assert f"CN:{red['red_number']}" in red["recorded"] and f"CN:{blue}" in red["recorded"]
    assert httpx.get(f"{url}/_sandbox/stats").json()["issued"] == 4  # three blue, one red
    story = hub(cfg, "trace", red["red_number"], "--json")
    assert story["identities"] == [f"CN:{red['red_number']}"]

    refused = run_hub(
        "-c",
        str(cfg),
        "einvoice",
        "void",
        "nuonuo",
        blue,
        cwd=cfg.parent,
        check=False,
        env={"NUONUO_SECRET": APP_SECRET},
    )
    assert refused.returncode != 0 and "void_not_allowed" in refused.stderr


def test_files_to_nuonuo_to_archive(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    requests = []
    for n in range(3):
        # An ERP's issue request: a commercial invoice with the ERP's own number, to be issued as 数电.
        invoice = make_invoice(500 + n, kind=InvoiceKind.INVOICE)
        invoice.number = f"SO2026{n + 1:04d}"
        requests.append(invoice)
        (inbox / f"so-{n + 1}.json").write_text(invoice.model_dump_json(), encoding="utf-8")

    sandbox = create_sandbox("nuonuo", issue_delay=0.05)
    with run_asgi(sandbox) as url:
        httpx.post(
            f"{url}/_sandbox/faults",
            json={"force_429": 1, "retry_after": 0.1, "force_timeout_after_issue": 1, "hang_seconds": 1},
        ).raise_for_status()
        cfg = write_hub_yaml(
            tmp_path / "hub.yaml",
            {
                "ledger": f"sqlite:///{tmp_path}/ledger.db",
                "data_dir": str(tmp_path / ".hub"),
                "logging": {"level": "warning"},
                "worker": {"threads": 2, "relay_interval": 0.2},
                "retry": {"max_attempts": 6, "initial_delay": 0.05, "max_delay": 0.5, "jitter": 0.1},
                "connectors": {
                    "erp-drop": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
                    "nuonuo": {
                        "type": "einvoice.nuonuo",
                        "settings": {
                            "base_url": url,
                            "app_key": APP_KEY,
                            "app_secret": "${NUONUO_SECRET}",
                            "user_tax": SELLER_TAX,
                            "read_timeout": 0.5,
                            "poll_interval": 0.05,
                            "poll_budget": 5,
                            "rate_limit": 500,
                            "rate_burst": 100,
                        },
                    },
                    "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
                },
                "routes": [
                    {"name": "issue", "from": "erp-drop", "to": "nuonuo"},
                    {"name": "keep", "from": "nuonuo", "to": "archive"},
                ],
            },
        )
        summary = hub(cfg, "run", "--until-idle", "--json")
        stats = httpx.get(f"{url}/_sandbox/stats").json()
        einvoice_cli(cfg, url)

    assert stats["issued"] == 3 and stats["double_issued"] == []
    assert set(stats["issues_per_order"].values()) == {1}
    assert stats["counters"]["fault_timeout_after_issue"] == 1 and stats["counters"]["fault_429"] == 1
    assert summary["status"]["destinations"]["nuonuo"] == {"delivered": 3}
    assert summary["status"]["destinations"]["archive"] == {"delivered": 3}

    assert summary["status"]["documents"] == 3 + 3 * 3  # the requests, and each issued OFD, XML and PDF

    # The 429 and the answer lost after issue were retried, and the worker says so.
    assert summary["retried"] >= 2
    story = hub(cfg, "trace", requests[0].number, "--json")
    [to_platform] = [d for d in story["deliveries"] if d["destination"] == "nuonuo"]
    assert to_platform["state"] == "delivered"
    number = to_platform["remote_ref"]
    assert len(number) == 20 and number.isdigit()
    issued = hub(cfg, "trace", number, "--json")
    assert issued["identities"] == [f"CN:{number}"]
    to_archive = [d["state"] for d in issued["deliveries"] if d["destination"] == "archive"]
    assert "delivered" in to_archive  # (and, if it was red-lettered above, its status change pending)
    text = hub(cfg, "trace", number)
    assert f"CN:{number}" in text and "archive" in text
    archived = [p for p in (tmp_path / "archive").rglob("*") if p.is_file()]
    assert any(p.read_bytes().startswith(b"PK") for p in archived), "the OFD (legal original) is archived"
    assert any(p.read_bytes().startswith(b"%PDF") for p in archived), "the issued PDF is archived beside it"
    assert any(b"<EInvoice" in p.read_bytes()[:400] for p in archived), "and the issued XML"


def test_faults_dead_letters_then_replay_issues_the_rest_exactly_once(tmp_path: Path) -> None:
    """Heavy faults and two attempts per delivery: some requests end as dead letters (some of them after
    the platform had already issued). Faults off, `hub dlq replay --all`, run again: every request is
    issued, each exactly once — the replay queries the order number before it submits."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    count = 30
    for n in range(count):
        invoice = make_invoice(700 + n, kind=InvoiceKind.INVOICE)
        invoice.number = f"SO2027{n:04d}"
        (inbox / f"so-{n}.json").write_text(invoice.model_dump_json(), encoding="utf-8")
    faults = {
        "error_rate": 0.25,
        "rate_429": 0.05,
        "burst_length": 2,
        "retry_after": 0.05,
        "timeout_after_issue_rate": 0.3,
        "hang_seconds": 0.6,
        "seed": 11,
    }
    with run_asgi(create_sandbox("nuonuo", issue_delay=0.02, faults=faults)) as url:
        cfg = write_hub_yaml(
            tmp_path / "hub.yaml",
            {
                "ledger": f"sqlite:///{tmp_path}/ledger.db",
                "data_dir": str(tmp_path / ".hub"),
                "logging": {"level": "warning"},
                "worker": {"threads": 4, "relay_interval": 0.1},
                "retry": {"max_attempts": 2, "initial_delay": 0.02, "max_delay": 0.05, "jitter": 0},
                "connectors": {
                    "erp-drop": {"type": "files", "settings": {"path": str(inbox), "min_age": 0}},
                    "nuonuo": {
                        "type": "einvoice.nuonuo",
                        "settings": {
                            "base_url": url,
                            "app_key": APP_KEY,
                            "app_secret": "${NUONUO_SECRET}",
                            "user_tax": SELLER_TAX,
                            "read_timeout": 0.3,
                            "poll_interval": 0.02,
                            "poll_budget": 2,
                            "rate_limit": 500,
                            "rate_burst": 100,
                        },
                    },
                    "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
                },
                "routes": [
                    {"name": "issue", "from": "erp-drop", "to": "nuonuo"},
                    {"name": "keep", "from": "nuonuo", "to": "archive"},
                ],
            },
        )
        first = hub(cfg, "run", "--until-idle", "--json")
        during = httpx.get(f"{url}/_sandbox/stats").json()
        dead = first["status"]["destinations"]["nuonuo"].get("dead", 0)
        assert dead > 0, first["status"]  # the faults did bite
        assert during["double_issued"] == [] and set(during["issues_per_order"].values()) <= {1}
        assert during["counters"]["fault_timeout_after_issue"] > 0  # answers lost after the platform issued

        httpx.post(
            f"{url}/_sandbox/faults",
            json={"error_rate": 0, "rate_429": 0, "timeout_after_issue_rate": 0},
        ).raise_for_status()
        letters = hub(cfg, "dlq", "list", "--json")
        assert letters and all(letter["destination"] == "nuonuo" for letter in letters)
        hub(cfg, "dlq", "replay", "--all", "--json")
        # (A replay from this separate CLI process marks the deliveries published on its own memory bus,
        # so `hub run` takes them up only after the engine's republish interval, ~30 s at present.)
        second = hub(cfg, "run", "--until-idle", "--json")
        after = httpx.get(f"{url}/_sandbox/stats").json()

    assert second["status"]["destinations"]["nuonuo"] == {"delivered": count}
    assert second["status"]["destinations"]["archive"] == {"delivered": count}
    assert after["issued"] == count and after["double_issued"] == []
    assert len(after["issues_per_order"]) == count and set(after["issues_per_order"].values()) == {1}
