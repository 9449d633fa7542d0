"""Serving the HTTP app for real: `hub serve` and `hub run --http` as processes, and the helpers the other
HTTP, console and fuzzing tests use to start a live server on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, write_hub_yaml

EXAMPLES = REPO / "examples" / "inbox"
OPERATOR = "alice-operator-token-0001"
SECOND_OPERATOR = "bob-operator-token-00002"
VIEWER = "victor-viewer-token-0003"
INTAKE = "scanner-intake-token-004"
HMAC_SECRET = "intake-hmac-secret-0005"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hub_config(tmp_path: Path, *, four_eyes: bool = False, down: bool = False, **extra: Any) -> Path:
    """A hub with an inbox folder, a recording "erp" sink and an archive, and the http section."""
    (tmp_path / "inbox").mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "ledger": f"sqlite:///{tmp_path}/ledger.db",
        "bus": "memory://",
        "data_dir": str(tmp_path / ".hub"),
        "retry": {"max_attempts": 1, "initial_delay": 0},
        "worker": {"threads": 2, "relay_interval": 0.2},
        "connectors": {
            "inbox": {
                "type": "files",
                "settings": {"path": str(tmp_path / "inbox"), "min_age": 0, "poll_interval": 0.2},
            },
            "erp": {
                "type": "recording",
                "settings": {"path": str(tmp_path / "erp.db"), "down_file": str(tmp_path / "erp.down")},
            },
            "archive": {"type": "archive.fs", "settings": {"path": str(tmp_path / "archive")}},
        },
        "routes": [{"name": "to-both", "from": "inbox", "to": ["erp", "archive"]}],
        "http": {
            "tokens": [
                {"name": "alice", "token": "${HUB_TEST_OPERATOR}", "role": "operator"},
                {"name": "bob", "token": SECOND_OPERATOR, "role": "operator"},
                {"name": "victor", "token": VIEWER, "role": "viewer"},
                {"name": "scanner", "token": INTAKE, "role": "intake"},
            ],
            "intake": {"source": "inbox", "max_bytes": 200_000, "hmac_secret": HMAC_SECRET},
            "four_eyes": four_eyes,
        },
        **extra,
    }
    if down:
        (tmp_path / "erp.down").touch()
    return write_hub_yaml(tmp_path / "hub.yaml", config)


def env() -> dict[str, str]:
    return {**os.environ, "HUB_TEST_OPERATOR": OPERATOR}


def invoice(name: str = "01-25322000000000000001.json", **changes: Any) -> dict[str, Any]:
    data = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[key] = value
    return data


def wait_ready(
    base: str, proc: subprocess.Popen[str] | None = None, timeout: float = 30, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(encoding="utf-8")[-3000:] if log else ""
            raise AssertionError(f"the server exited {proc.returncode}:\n{text}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not come up in {timeout}s")


@contextmanager
def hub_process(cfg: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`hub -c cfg <args> ...` on a free port (args must contain `{port}`); stopped with SIGTERM."""
    port = free_port()
    cmd = [sys.executable, "-m", "hub", "-c", str(cfg), *(a.format(port=port) for a in args)]
    # Output to files: a pipe nobody reads fills up and blocks the server's logging.
    out = (cfg.parent / f"hub-{port}.out").open("w")
    err = (cfg.parent / f"hub-{port}.err").open("w")
    proc = subprocess.Popen(cmd, cwd=cfg.parent, env=env(), stdout=out, stderr=err, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log=cfg.parent / f"hub-{port}.err")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
        err.close()


def test_hub_serve_answers_health_and_the_openapi_document(tmp_path: Path) -> None:
    cfg = hub_config(tmp_path)
    with hub_process(cfg, "serve", "--port", "{port}") as (base, _proc):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"ledger": {"ok": True}, "bus": {"ok": True}}
        doc = httpx.get(f"{base}/openapi.json").json()
        assert doc["openapi"].startswith("3.")
        assert {"/api/documents", "/api/dead-letters/{letter_id}/edit", "/metrics"} <= set(doc["paths"])
        # Secrets from hub.yaml appear nowhere the server answers.
        for page in ("/openapi.json", "/metrics", "/login"):
            body = httpx.get(f"{base}{page}").text
            assert OPERATOR not in body and HMAC_SECRET not in body


def test_hub_serve_reports_a_bad_http_section_with_its_yaml_path(tmp_path: Path) -> None:
    cfg = hub_config(tmp_path)
    text = cfg.read_text(encoding="utf-8").replace("role: viewer", "role: admin")
    cfg.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "hub", "-c", str(cfg), "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "http.tokens.2.role" in result.stderr and "line" in result.stderr


@pytest.mark.slow
def test_metrics_during_a_load_run_add_up_to_the_ledger(tmp_path: Path) -> None:
    """`hub run --http`: scrapes during the run are consistent and never go backwards; once idle they
    equal `hub status` exactly (counters are derived from the ledger at scrape time)."""
    cfg = hub_config(tmp_path)
    n = 300
    base_invoice = invoice()
    for i in range(n):
        data = dict(base_invoice, number=f"2532200000000{i:07d}")
        (tmp_path / "inbox" / f"{i:04d}.json").write_text(
            json.dumps(data, ensure_ascii=False), encoding="utf-8"
        )
    # One poison pill: a dead letter at intake.
    (tmp_path / "inbox" / "broken.json").write_text(
        '{"kind": "cn.digital.special", "number": 1}', encoding="utf-8"
    )
    with hub_process(cfg, "run", "--quiet", "--http", "{port}") as (base, _proc):
        last_delivered = -1.0
        deadline = time.monotonic() + 120
        scrapes = 0
        while True:
            m = _parse_metrics(httpx.get(f"{base}/metrics", timeout=10).text)
            scrapes += 1
            for dest in ("erp", "archive"):
                states = {k[1]: v for k, v in m.get("hub_deliveries", {}).items() if k[0] == dest}
                assert m.get("hub_delivered_total", {}).get((dest,), 0) == states.get("delivered", 0)
                open_now = sum(states.get(s, 0) for s in ("pending", "inflight", "retrying"))
                assert m.get("hub_queue_depth", {}).get((dest,), 0) == open_now
            delivered = sum(m.get("hub_delivered_total", {}).values())
            assert delivered >= last_delivered
            last_delivered = delivered
            if delivered == 2 * n and sum(m.get("hub_queue_depth", {}).values()) == 0:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.05)
        status = json.loads(
            subprocess.run(
                [sys.executable, "-m", "hub", "-c", str(cfg), "status", "--json"],
                cwd=tmp_path,
                env=env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        final = _parse_metrics(httpx.get(f"{base}/metrics").text)
    assert scrapes >= 2
    for dest, states in status["destinations"].items():
        for state, count in states.items():
            assert final["hub_deliveries"][(dest, state)] == count
    assert sum(final["hub_delivered_total"].values()) == status["deliveries"]["delivered"] == 2 * n
    assert sum(final["hub_received_total"].values()) == n
    assert sum(final["hub_invoice_versions_total"].values()) == status["invoices"]["versions"] == n
    assert sum(final["hub_dead_letters_open"].values()) == status["dead_letters"]["open"] == 1
    hist = final["hub_delivery_latency_seconds_count"]
    assert sum(hist.values()) == 2 * n
    assert final["hub_ledger_up"][()] == 1


def _parse_metrics(text: str) -> dict[str, dict[tuple[str, ...], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name.startswith("hub_deliveries") and not s.name.endswith("_total"):
                key = (labels.get("destination", ""), labels.get("state", ""))
            elif "le" in labels:
                continue
            else:
                key = tuple(v for k, v in sorted(labels.items()) if k not in ("stage",)) if labels else ()
                if "destination" in labels and len(labels) == 1:
                    key = (labels["destination"],)
            out.setdefault(s.name, {})[key] = out.get(s.name, {}).get(key, 0) + s.value
    return out


def test_readyz_is_503_quickly_when_the_bus_is_unreachable(tmp_path: Path) -> None:
    cfg = hub_config(tmp_path)
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    cfg.write_text(
        cfg.read_text(encoding="utf-8").replace("bus: memory://", "bus: amqp://guest:guest@127.0.0.1:1//"),
        encoding="utf-8",
    )
    with hub_process(cfg, "serve", "--port", "{port}") as (base, _proc):
        started = time.monotonic()
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert time.monotonic() - started < 3
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "not ready",
            "checks": {"ledger": {"ok": True}, "bus": {"ok": False, "detail": "OperationalError"}},
        }
        assert httpx.get(f"{base}/healthz").status_code == 200
