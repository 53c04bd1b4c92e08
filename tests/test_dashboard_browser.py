"""End to end in a real browser: `streamlit run app.py` against a seeded store, driven by headless Chromium.

Needs Debian's `chromium` package (`.ci/run` installs it) and Playwright's Python package; without
them the test is skipped and says why. The screenshot lands in `test-artifacts/`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from llmcost.sdk import fallback
from llmcost.store import connection as store
from tests.dashboard_seed import event, failed_log, insert

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is missing")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def dashboard(settings, tmp_path):
    """The app served by `streamlit run` on a free port, reading the test's data folder."""
    port = free_port()
    env = {**os.environ, "LLMCOST_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def store_rows(settings, sql: str) -> list[tuple]:
    with store.reading(settings.db_path) as db:
        return db.execute(sql).fetchall()


@pytest.mark.slow
def test_overview_in_a_real_browser(settings, chromium, dashboard):
    today = dt.datetime.now(settings.tz).date()
    insert(settings.db_path, "usage_events", [
        event(today, "1.25", use_case="chat_tutor", total_tokens=1_000),
        event(today, "0.004", use_case="=cmd|' /C calc'!A0", total_tokens=20_000),
        event(today - dt.timedelta(days=1), "0.5", use_case="scaffolder", total_tokens=10),
    ])
    noon = dt.datetime.combine(today, dt.time(12))
    insert(settings.db_path, "failed_logs", [failed_log(noon), failed_log(noon, kind="invalid")])
    # One record waits in the fallback log: Refresh must store it.
    waiting = {"event_id": "from-fallback", "ts": dt.datetime.now(dt.timezone.utc).isoformat(), "user_id": "u9",
               "tenant_id": "tenant-a", "use_case": "chat_tutor", "provider": "openai", "model": "gpt-4o",
               "input_tokens": 1000, "output_tokens": 500}
    fallback.append(settings.fallback_log, waiting, "OSError: [Errno 28] No space left on device")

    # A deep link as the server's very first request still gets app.py's navigation, not Streamlit's
    # legacy menu built from the file names in pages/.
    first = chromium.new_page()
    first.goto(dashboard.rstrip("/") + "/failed_logs")
    first.get_by_role("heading", name="Failed logs").wait_for(timeout=30_000)
    assert first.get_by_text("Page not found").count() == 0
    menu = [link.inner_text() for link in first.get_by_test_id("stSidebarNavLink").all()]
    assert any("Budgets and alerts" in label for label in menu) and not any(l.strip() == "app" for l in menu)
    first.close()

    page = chromium.new_page(viewport={"width": 1400, "height": 2200}, accept_downloads=True)
    page.goto(dashboard)
    page.get_by_role("heading", name="Overview").wait_for(timeout=30_000)
    banner = page.get_by_text("2 LLM calls failed to log — cost data may be incomplete")
    banner.wait_for(timeout=30_000)
    values = page.get_by_test_id("stMetricValue")
    # Streamlit draws the page in steps: wait for each figure rather than read the first one drawn.
    from playwright.sync_api import expect

    expect(values.nth(0)).to_have_text("$1.25", timeout=30_000)  # today: $1.25 + $0.004
    expect(values.nth(1)).to_have_text("2", timeout=30_000)
    expect(values.nth(2)).to_have_text("21,000", timeout=30_000)
    page.get_by_text("Waiting in the fallback log").wait_for(timeout=30_000)  # drawn after the chart

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

    page.get_by_role("button", name="Refresh").click()
    page.get_by_text("Ingested:").wait_for(timeout=30_000)
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=stMetricValue]')[1]?.innerText === '3'", timeout=30_000)
    expect(values.nth(0)).to_have_text("$1.26", timeout=30_000)  # plus gpt-4o's 1,000 in and 500 out: $0.0075
    assert store_rows(settings, "SELECT count(*) FROM usage_events WHERE event_id = 'from-fallback'") == [(1,)]

    # The rerun after Refresh draws the rest of the page (charts, sections) after the figures: a click on a
    # download button it is about to replace would fetch nothing.
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state') === 'notRunning'",
        timeout=30_000)
    page.get_by_text("Daily figures by use case").click()
    with page.expect_download() as download_info:
        page.locator(".st-key-overview_daily").get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == "daily-spend.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    downloaded = {(r["day"], r["use_case"]): (int(r["calls"]), Decimal(r["cost_usd"])) for r in rows}
    expected = {
        (str(day), "'" + use_case if use_case.startswith("=") else use_case): (calls, cost)
        for day, use_case, calls, cost in store_rows(
            settings, "SELECT day, use_case, count(*), sum(cost_usd) FROM usage_events GROUP BY ALL")
    }
    assert downloaded == expected
    assert ("'=cmd|' /C calc'!A0" in {use_case for _, use_case in downloaded})


@pytest.mark.slow
def test_a_link_reproduces_filters_and_page_and_the_top_users_fit(settings, chromium, dashboard):
    today = dt.datetime.now(settings.tz).date()
    insert(settings.db_path, "usage_events", [
        *[event(today, f"0.{i + 10}", user_id=f"user-{i:02d}", tenant_id="tenant-b") for i in range(24)],
        event(today, "5", user_id="other", tenant_id="tenant-a"),
        event(today - dt.timedelta(days=50), "1", user_id="old", tenant_id="tenant-b"),
    ])
    start = today - dt.timedelta(days=60)
    page = chromium.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{dashboard}/users?tenant=tenant-b&start={start}&end={today}")
    page.get_by_role("heading", name="Users and tenants").wait_for(timeout=30_000)
    from playwright.sync_api import expect

    sidebar = page.get_by_test_id("stSidebar")
    # The filters' popover says what they are set to, and opened shows the link's tenant and dates chosen.
    filters = sidebar.get_by_test_id("stPopover")
    expect(filters).to_contain_text(f"Filters: {start} to {today}, 1 tenant", timeout=30_000)
    filters.get_by_role("button").click()
    body = page.get_by_test_id("stPopoverBody")
    expect(body.get_by_text("tenant-b")).to_be_visible(timeout=30_000)
    expect(body.locator("input").first).to_have_value(str(start))
    assert "tenant=tenant-b" in page.url and f"start={start}" in page.url and "/users" in page.url
    # Twenty rows asked, twenty in view: the table is as tall as 20 rows and its header (35 px each).
    grid = page.locator(".st-key-users_top [data-testid=stDataFrameResizable]")
    expect(grid).to_have_css("height", "738px", timeout=30_000)
