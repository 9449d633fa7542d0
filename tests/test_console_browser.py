"""The web console end to end in a real headless Chromium (Debian's package, driven by Playwright) against
`hub run --http`: log in, find a dead letter, fix it in the form (seeing the validation error on the
field and the diff first), replay it, and see it delivered in the trace. Screenshots go to
test-artifacts/console/ for a person to look at."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, server_missing
from tests.test_http_server import OPERATOR, VIEWER, hub_config, hub_process, invoice

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "console"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_fail() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        server_missing("the playwright Python package", "bash scripts/install-browser.sh")
    if not CHROMIUM.exists():
        # Like Dovecot for the IMAP tests: the project's own script installs it from Debian's packages.
        script = Path(__file__).resolve().parent.parent / "scripts" / "install-browser.sh"
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        if result.returncode != 0 or not CHROMIUM.exists():
            server_missing(
                f"Chromium at /usr/bin/chromium (install script exit {result.returncode}: "
                f"{result.stderr.strip()[-300:]})",
                "bash scripts/install-browser.sh",
            )


def _wait_for_letter(base: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = httpx.get(f"{base}/api/dead-letters", headers={"Authorization": f"Bearer {VIEWER}"}).json()
        if rows:
            return rows[0]  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError("the broken invoice did not become a dead letter")


@pytest.mark.slow
def test_operator_fixes_and_replays_a_dead_letter_in_the_browser(tmp_path: Path) -> None:
    _browser_or_fail()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cfg = hub_config(tmp_path)
    number = "25322000000000000042"
    broken = invoice(number=number, totals__gross="14408.00")  # two digits swapped
    (tmp_path / "inbox" / "broken.json").write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")

    with hub_process(cfg, "run", "--quiet", "--http", "{port}") as (base, _proc):
        letter = _wait_for_letter(base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{base}/dead-letters")
                assert "/login" in page.url  # not logged in: the console sends us to log in first
                page.fill("#token", "wrong-token-wrong-token")
                page.click("#login")
                expect(page.locator(".error")).to_contain_text("unknown token")
                page.fill("#token", OPERATOR)
                page.click("#login")
                page.wait_for_url(f"{base}/dead-letters")
                page.screenshot(path=str(ARTIFACTS / "01-dead-letters.png"), full_page=True)
                assert OPERATOR not in page.content()

                # Find it in the list and open it.
                row = page.locator("table.letters tr", has_text="InvoiceInvalid")
                expect(row).to_have_count(1)
                row.locator("a.letter-link").click()
                page.wait_for_url(f"{base}/dead-letters/{letter['id']}")
                expect(page.locator(".error-text")).to_contain_text("totals.gross")
                # The seller's bank account is masked, never rendered.
                assert broken["seller"]["bank_account"] not in page.content()

                # A wrong fix first: the error is shown on the field itself.
                gross = page.locator("input[data-path='totals.gross']")
                gross.fill("15000.00")
                page.click("#check-edit")
                expect(page.locator(".field-error[data-path='totals.gross']")).to_contain_text("net + tax")
                expect(page.locator("input[data-path='totals.gross']")).to_have_attribute(
                    "aria-invalid", "true"
                )
                page.screenshot(path=str(ARTIFACTS / "02-field-error.png"), full_page=True)

                # The right fix: the diff is shown before anything is replayed.
                page.locator("input[data-path='totals.gross']").fill("14480.00")
                page.fill("#reason", "digits swapped when typing")
                page.click("#check-edit")
                diff = page.locator("#diff")
                expect(diff).to_contain_text("totals.gross")
                expect(diff.locator(".before")).to_have_text("14408.00")
                expect(diff.locator(".after")).to_have_text("14480.00")
                page.screenshot(path=str(ARTIFACTS / "03-diff.png"), full_page=True)
                assert broken["seller"]["bank_account"] not in page.content()
                page.click("#confirm-edit")

                # The trace: delivered to both destinations (the page is reloaded until the workers are done).
                page.wait_for_url(f"{base}/trace?*")
                deadline = time.monotonic() + 30
                while page.locator("#deliveries tr.delivery.delivered").count() < 2:
                    assert time.monotonic() < deadline, page.inner_text("main")
                    time.sleep(0.3)
                    page.reload()
                timeline = page.inner_text("#timeline")
                assert "operator alice: dlq.edit" in timeline
                assert "delivered" in timeline
                page.screenshot(path=str(ARTIFACTS / "04-trace-delivered.png"), full_page=True)

                # And the dead letter is no longer open.
                page.goto(f"{base}/dead-letters")
                expect(page.locator(".empty")).to_contain_text("No dead letters match")
            finally:
                browser.close()
    assert (tmp_path / "erp.db").exists()
    assert os.path.getsize(ARTIFACTS / "04-trace-delivered.png") > 0
