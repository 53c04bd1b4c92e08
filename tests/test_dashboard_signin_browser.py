"""Sign-in end to end: `streamlit run app.py` with `[auth]` pointing at a real OpenID Connect provider on
loopback (oidc-provider-mock), driven by headless Chromium. An operator, a viewer, a tenant-scoped user and
a user with no role sign in; each sees and can do what their role allows; the tenant user's CSV holds only
their tenant's rows; signing out ends the session. Also: two sessions at once, one refreshing a 1M-line
file while the other loads every page."""

from __future__ import annotations

import csv
import io
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from llmcost.control import audit
from llmcost.store import connection as store
from tests.test_dashboard_access import seed  # the same three tenants' calls and failed logs
from tests.test_dashboard_browser import chromium, free_port, wait_until_healthy  # noqa: F401 - a fixture
from tests.test_dashboard_sessions import write_events

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CONFIG = """
[dashboard]
tenant_claim = "tenant_id"
[dashboard.roles]
operator = ["group:llm-ops"]
viewer = ["@example.com"]
"""
USERS = {
    "ana@example.com": {"email": "ana@example.com", "email_verified": True, "groups": ["llm-ops"]},
    "vic@example.com": {"email": "vic@example.com", "email_verified": True},
    "tess@client.example": {"email": "tess@client.example", "email_verified": True, "tenant_id": "tenant-b"},
    "mallory@elsewhere.org": {"email": "mallory@elsewhere.org", "email_verified": True},
}
OPERATOR_BUTTONS = ("Refresh", "Replay the fallback log", "Disable", "Enable")


@pytest.fixture
def browser(request):
    """Headless Chromium, as tests/test_dashboard_browser.py launches it."""
    return request.getfixturevalue("chromium")


@pytest.fixture
def identity_provider():
    oidc = pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock is missing (pip install -e '.[dev]')")
    users = [oidc.User(sub=sub, claims=claims) for sub, claims in USERS.items()]
    with oidc.run_server_in_thread(user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


def serve(folder: Path, home: Path, env_extra: dict[str, str] | None = None):
    port = free_port()
    env = {**os.environ, "LLMCOST_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    # As `make run` serves it: `llmcost dashboard` prepares the first page, then runs Streamlit's server on app.py.
    server = subprocess.Popen(
        [sys.executable, "-m", "llmcost", "dashboard", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return server, f"http://127.0.0.1:{port}", port


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture
def signed_in_dashboard(settings, tmp_path, identity_provider):
    """The app with `[auth]` in .streamlit/secrets.toml and roles in llmcost.toml, in the test's folder."""
    (tmp_path / "llmcost.toml").write_text(CONFIG)
    server, url, port = serve(tmp_path, settings.home)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n"
        f'redirect_uri = "{url}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "llmcost-dashboard"\n'
        'client_secret = "any-secret-the-mock-accepts"\n'
        f'server_metadata_url = "{identity_provider}/.well-known/openid-configuration"\n'
    )
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        stop(server)


def sign_in(browser, url: str, who: str):
    """A fresh browser session signed in as `who` through the provider's form."""
    page = browser.new_context(viewport={"width": 1400, "height": 1600}, accept_downloads=True).new_page()
    page.goto(url)
    page.get_by_role("button", name="Sign in").click(timeout=30_000)
    page.get_by_role("button", name=who, exact=True).click(timeout=30_000)  # the provider's predefined user
    page.wait_for_url(f"{url}/**", timeout=30_000)
    return page


def buttons(page) -> set[str]:
    return {name.strip() for name in page.get_by_role("button").all_inner_texts()}


def menu(page) -> list[str]:
    """The navigation's page titles (each link's last line: the first is its icon's name)."""
    return [link.inner_text().strip().splitlines()[-1] for link in page.get_by_test_id("stSidebarNavLink").all()]


# The last heading each page draws: once it shows, the page's buttons are all there.
LAST_HEADING = {"Overview": "Sync", "Users and tenants": "Top tenants by cost",
                "Failed logs": "Not recovered, by error", "Budgets and alerts": "Kill switches"}
# Pages whose last part is a section (a collapsed expander) rather than a heading.
LAST_SECTION = {"Use cases": "Models and providers"}


def open_page(page, title: str) -> None:
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    wait_until_drawn(page, title)


def wait_until_drawn(page, title: str) -> None:
    """Until the page's last heading shows and its script run ends (Streamlit's status widget goes), or it
    shows an exception or an error instead of its heading (`problems` reads them)."""
    heading = page.get_by_role("heading", name=title)
    deadline = time.monotonic() + 60
    # The page before's elements stay on screen until the new run replaces them: wait for this page's heading
    # unless an exception or a store error shows first.
    while heading.count() == 0:
        if time.monotonic() > deadline or store_problems(page):
            return
        time.sleep(0.2)
    if title in LAST_HEADING:
        page.get_by_role("heading", name=LAST_HEADING[title]).wait_for(timeout=60_000)
    if title in LAST_SECTION:
        page.get_by_test_id("stExpander").filter(has_text=LAST_SECTION[title]).wait_for(timeout=60_000)
    time.sleep(1)
    page.get_by_test_id("stStatusWidget").wait_for(state="detached", timeout=60_000)


def csv_rows(page, key: str) -> list[dict[str, str]]:
    with page.expect_download() as download_info:
        page.locator(f".st-key-{key}").get_by_role("button", name="Download CSV").click()
    return list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text(encoding="utf-8"))))


def test_operator_viewer_and_tenant_user_sign_in_and_see_what_their_role_allows(settings, browser,
                                                                                  signed_in_dashboard):
    url = signed_in_dashboard
    seed(settings)

    visitor = browser.new_page()
    visitor.goto(url)
    visitor.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    assert visitor.get_by_test_id("stMetricValue").count() == 0  # nothing before signing in
    visitor.close()

    operator = sign_in(browser, url, "ana@example.com")
    operator.get_by_text("Signed in as ana@example.com (operator)").wait_for(timeout=30_000)
    wait_until_drawn(operator, "Overview")
    assert "Refresh" in buttons(operator)
    operator.get_by_role("button", name="Refresh").click()
    operator.get_by_text("Ingested:").wait_for(timeout=60_000)
    ingests = [e for e in audit.entries(audit.audit_path_for(settings.control_db)) if e["action"] == "ingest"]
    assert [e["by"] for e in ingests] == ["ana@example.com"]
    open_page(operator, "Budgets and alerts")
    operator.get_by_text("Disable or enable a use case").click()  # the forms are drawn once it is opened
    operator.get_by_role("button", name="Enable", exact=True).wait_for(timeout=30_000)
    assert {"Disable", "Enable"} <= buttons(operator)
    operator.get_by_role("button", name="Sign out").click()
    operator.get_by_role("button", name="End session").click(timeout=30_000)  # the provider's own sign-out
    operator.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    operator.reload()
    operator.get_by_role("button", name="Sign in").wait_for(timeout=30_000)  # the cookie is gone too
    assert operator.get_by_test_id("stMetricValue").count() == 0

    viewer = sign_in(browser, url, "vic@example.com")
    viewer.get_by_text("Signed in as vic@example.com (viewer)").wait_for(timeout=30_000)
    wait_until_drawn(viewer, "Overview")
    assert "Budgets and alerts" in menu(viewer) and "Integrity" in menu(viewer)
    assert not buttons(viewer) & set(OPERATOR_BUTTONS)
    open_page(viewer, "Failed logs")
    assert not buttons(viewer) & set(OPERATOR_BUTTONS)
    assert viewer.get_by_text("Dismiss failed logs that need nothing more").count() == 0
    open_page(viewer, "Budgets and alerts")
    assert not buttons(viewer) & set(OPERATOR_BUTTONS)
    assert viewer.get_by_text("Disable or enable a use case").count() == 0

    tenant = sign_in(browser, url, "tess@client.example")
    tenant.get_by_text("Signed in as tess@client.example (viewer of tenant-b)").wait_for(timeout=30_000)
    wait_until_drawn(tenant, "Overview")
    assert "Budgets and alerts" not in menu(tenant) and "Integrity" not in menu(tenant)
    # tenant-b's calls only; waited for, not read at once: on a loaded machine a slot can still hold another
    # figure of the run before (seen once as "2") when the page's last heading is already drawn
    expect(tenant.get_by_test_id("stMetricValue").first).to_have_text("$3.25", timeout=30_000)
    assert tenant.get_by_text("System-wide spend today").count() == 0
    open_page(tenant, "Users and tenants")
    assert {row["tenant_id"] for row in csv_rows(tenant, "users_tenants")} == {"tenant-b"}
    assert {(row["user_id"], row["tenant_id"]) for row in csv_rows(tenant, "users_top")} == {
        ("bert", "tenant-b"), ("bea", "tenant-b")}
    open_page(tenant, "Failed logs")
    assert {row["tenant_id"] for row in csv_rows(tenant, "failed_table")} == {"tenant-b"}
    tenant.goto(f"{url}/budgets")  # a link to a system-wide page does not open it
    tenant.get_by_role("heading", name="Overview").wait_for(timeout=30_000)
    assert tenant.get_by_role("heading", name="Budgets and alerts").count() == 0

    stranger = sign_in(browser, url, "mallory@elsewhere.org")
    stranger.get_by_role("heading", name="No access").wait_for(timeout=30_000)
    # the heading is drawn before the message below it: wait for the message rather than count it at once
    stranger.get_by_text("Ask an admin to add you to [dashboard.roles]").wait_for(timeout=30_000)
    assert stranger.get_by_test_id("stMetricValue").count() == 0


@pytest.fixture
def local_dashboard(settings, tmp_path):
    server, url, _ = serve(tmp_path, settings.home)
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        stop(server)


PAGE_TITLES = ("Overview", "Use cases", "Users and tenants", "Failed logs", "Integrity", "Budgets and alerts")


def store_problems(page) -> list[str]:
    """Exceptions, and errors about the store, that a page shows."""
    shown = page.get_by_test_id("stException").all_inner_texts()
    return shown + [text for text in page.get_by_test_id("stAlertContentError").all_inner_texts()
                    if "store" in text or "failed" in text.lower() and "Ingest" in text]


def problems(page, title: str) -> list[str]:
    """What `store_problems` finds, or that the page shows no heading of its own."""
    shown = store_problems(page)
    if page.get_by_role("heading", name=title).count() == 0:
        shown.append("the page did not draw its heading")
    return shown


def test_pages_load_in_one_session_while_another_refreshes_a_million_lines(settings, browser, local_dashboard):
    url = local_dashboard
    seed(settings)
    write_events(settings.inbox_dir / "million.jsonl", 1_000_000)

    refresher = browser.new_page(viewport={"width": 1400, "height": 1600})
    refresher.goto(url)
    wait_until_drawn(refresher, "Overview")
    reader = browser.new_page(viewport={"width": 1400, "height": 1600})
    reader.goto(url)
    wait_until_drawn(reader, "Overview")

    refresher.get_by_role("button", name="Refresh").click()
    time.sleep(2)  # the child process has started ingesting
    seen, rounds = [], 0
    while refresher.get_by_text("Ingested:").count() == 0 and rounds < 20:
        for title in PAGE_TITLES:
            open_page(reader, title)
            seen += [f"{title}: {text}" for text in problems(reader, title)]
        rounds += 1
    refresher.get_by_text("Ingested:").wait_for(timeout=300_000)
    assert refresher.get_by_text("stored 1,000,000").count() == 1
    assert rounds >= 1 and seen == []

    # A second session's Refresh while one runs is told so, not failed.
    write_events(settings.inbox_dir / "more.jsonl", 300_000)
    open_page(reader, "Overview")  # before the first Refresh: a slow page load must not outlast the ingest
    refresher.get_by_role("button", name="Refresh").click()
    time.sleep(2)
    reader.get_by_role("button", name="Refresh").click()
    reader.get_by_text("a refresh is running").wait_for(timeout=60_000)
    refresher.get_by_text("stored 300,000").wait_for(timeout=300_000)
    with store.reading(settings.db_path) as db:
        assert db.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 1_300_003
