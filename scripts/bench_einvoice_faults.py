"""Issue 4's fault run: N invoices (default 1,000) through `hub run` to the Nuonuo sandbox injecting 20%
errors, 429 bursts and time-outs after the platform has issued; then the faults stop, `hub dlq replay --all`,
and a second run. Prints what each run did and the sandbox's own count of issues per order (which
proves no order was issued twice).

    python scripts/bench_einvoice_faults.py [N]        (from the repository root)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402

from hub import InvoiceKind  # noqa: E402
from tests.sandbox_server import run_asgi  # noqa: E402
from tests.test_einvoice_platforms import APP_KEY, APP_SECRET, SELLER_TAX, create_sandbox, make_invoice  # noqa: E402

FAULTS = {
    "error_rate": 0.2,
    "rate_429": 0.02,
    "burst_length": 3,
    "retry_after": 0.2,
    "timeout_after_issue_rate": 0.05,
    "hang_seconds": 1.5,
    "seed": 3,
}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    root = Path(tempfile.mkdtemp(prefix="einvoice-faults-"))
    (root / "inbox").mkdir()
    for n in range(count):
        inv = make_invoice(5000 + n, kind=InvoiceKind.INVOICE)
        inv.number = f"SO3{n:06d}"
        (root / "inbox" / f"so-{n}.json").write_text(inv.model_dump_json(), encoding="utf-8")

    def hub(*args: str) -> tuple[Any, float]:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "hub", "-c", str(root / "hub.yaml"), *args],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "NUONUO_SECRET": APP_SECRET},
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        return json.loads(result.stdout), time.monotonic() - started

    with run_asgi(create_sandbox("nuonuo", issue_delay=0.05, faults=FAULTS)) as url:
        config = {
            "ledger": f"sqlite:///{root}/ledger.db",
            "data_dir": str(root / ".hub"),
            "logging": {"level": "warning"},
            "worker": {"threads": 8, "relay_interval": 0.2},
            "retry": {"max_attempts": 4, "initial_delay": 0.1, "max_delay": 1.0, "jitter": 0.2},
            "connectors": {
                "erp-drop": {"type": "files", "settings": {"path": str(root / "inbox"), "min_age": 0}},
                "nuonuo": {
                    "type": "einvoice.nuonuo",
                    "settings": {
                        "base_url": url,
                        "app_key": APP_KEY,
                        "app_secret": "${NUONUO_SECRET}",
                        "user_tax": SELLER_TAX,
                        "read_timeout": 1.0,
                        "poll_interval": 0.05,
                        "poll_budget": 3,
                        "rate_limit": 500,
                        "rate_burst": 100,
                    },
                },
                "archive": {"type": "archive.fs", "settings": {"path": str(root / "archive")}},
            },
            "routes": [{"from": "erp-drop", "to": "nuonuo"}, {"from": "nuonuo", "to": "archive"}],
        }
        (root / "hub.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        first, t1 = hub("run", "--until-idle", "--json")
        stats = httpx.get(f"{url}/_sandbox/stats").json()
        print(
            f"run 1 ({t1:.1f} s): nuonuo {first['status']['destinations'].get('nuonuo')}, "
            f"retried {first['retried']}, issued {stats['issued']}, double issued {stats['double_issued']}"
        )
        letters, _ = hub("dlq", "list", "--json")
        print(f"dead letters: {len(letters)}" + (f" (e.g. {letters[0]['message']})" if letters else ""))
        httpx.post(
            f"{url}/_sandbox/faults", json={"error_rate": 0, "rate_429": 0, "timeout_after_issue_rate": 0}
        )
        hub("dlq", "replay", "--all", "--json")
        second, t2 = hub("run", "--until-idle", "--json")
        stats = httpx.get(f"{url}/_sandbox/stats").json()
        print(
            f"run 2 after replay ({t2:.1f} s): nuonuo {second['status']['destinations'].get('nuonuo')}, "
            f"archive {second['status']['destinations'].get('archive')}, issued {stats['issued']} for "
            f"{len(stats['issues_per_order'])} orders, "
            f"issues per order {set(stats['issues_per_order'].values())}, "
            f"double issued {stats['double_issued']}"
        )
    print(f"work folder: {root}")


if __name__ == "__main__":
    main()
