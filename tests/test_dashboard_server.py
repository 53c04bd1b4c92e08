"""`llmcost dashboard`: the server does the first page's one-time work before the first visitor arrives.

The first run of the Overview, in a fresh process with AppTest against a demo store, imports pandas, pyarrow,
Altair and the rest when nothing prepared it (as under `streamlit run app.py`), and nothing heavy after
`server.warm()`; `llmcost dashboard` then serves the Overview and a deep link on the server's first request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmcost.dashboard import server
from tests.test_dashboard_browser import chromium, free_port, wait_until_healthy  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "pyarrow", "numpy", "altair", "duckdb", "jsonschema", "narwhals", "streamlit.emojis",
         "streamlit.material_icon_names", "llmcost")
FIRST_RUN = """
import json, sys
from streamlit import config
from streamlit.testing.v1 import AppTest
config.set_option("server.address", "127.0.0.1")  # local mode, as `make run` serves it
if sys.argv[1] == "warm":
    from llmcost.dashboard import server
    server.warm()
before = set(sys.modules)
app = AppTest.from_file(sys.argv[2], default_timeout=60).run()
print(json.dumps({"exceptions": [e.value for e in app.exception], "titles": [t.value for t in app.title],
                  "imported": sorted(set(sys.modules) - before)}))
"""


@pytest.fixture
def demo_home(isolated_home):
    subprocess.run([sys.executable, "-m", "llmcost", "demo", "--days", "3"], check=True, capture_output=True)
    return isolated_home


def first_overview_run(how: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FIRST_RUN, how, str(ROOT / "app.py")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["exceptions"] == [] and found["titles"] == ["Overview"], found
    return found


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in HEAVY)]


@pytest.mark.slow
def test_after_warm_the_first_overview_run_imports_nothing_heavy(demo_home):
    cold = heavy(first_overview_run("cold")["imported"])
    assert {"pandas", "pyarrow", "altair", "duckdb", "llmcost.dashboard.ui", "streamlit.emojis"} <= set(cold)
    warmed = first_overview_run("warm")
    assert heavy(warmed["imported"]) == [], heavy(warmed["imported"])


def test_warm_leaves_the_collector_only_what_later_runs_make():
    done = subprocess.run([sys.executable, "-c", "import gc; from llmcost.dashboard import server; server.warm(); "
                           "print(gc.get_freeze_count(), len(gc.get_objects()))"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    frozen, scanned = map(int, done.stdout.split())
    # Streamlit's collection after each script run scanned every object of pandas, Altair, DuckDB and Streamlit.
    assert frozen > 100_000 and scanned < frozen / 50, (frozen, scanned)


@pytest.mark.parametrize("config", ["[dashboard]\nno_such_key = 1\n", None], ids=["bad config", "no store yet"])
def test_warm_leaves_a_config_or_store_problem_to_the_page(tmp_path, config):
    """The server still starts: the page then shows the error, or the command that fills the store."""
    if config:
        (tmp_path / "llmcost.toml").write_text(config)
    done = subprocess.run([sys.executable, "-c", "from llmcost.dashboard import server; server.warm(); print('warm')"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["warm"], done.stderr
    assert not list((tmp_path / "home").glob("*.duckdb"))  # nothing created


def test_page_imports_names_the_modules_behind_from_imports(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("import streamlit as st\nfrom llmcost.dashboard import legacy_pages, ui\n")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "01_a.py").write_text("import datetime as dt\nfrom llmcost.money import money\n"
                                                "from . import nothing_relative\n")
    assert server.page_imports(app) == ["streamlit", "llmcost.dashboard", "llmcost.dashboard.legacy_pages",
                                        "llmcost.dashboard.ui", "datetime", "llmcost.money"]


def test_dashboard_without_app_py_names_the_fix(tmp_path):
    with pytest.raises(server.AppMissingError, match="streamlit run path/to/app.py"):
        server.serve([], app=tmp_path / "app.py")


@pytest.mark.slow
@pytest.mark.browser
def test_llmcost_dashboard_serves_the_overview_and_a_deep_link_on_its_first_request(demo_home, request):
    browser = request.getfixturevalue("chromium")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "llmcost", "dashboard", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, dashboard, timeout=120)
        page = browser.new_page()
        # The server's first request is a deep link: it runs app.py's navigation, not the page alone.
        page.goto(f"{url}/users")
        page.get_by_role("heading", name="Users and tenants", exact=True).wait_for(timeout=60_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Overview").wait_for(timeout=30_000)
        page.goto(url)
        page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=60_000)
        page.locator("[data-testid=stVegaLiteChart] canvas, [data-testid=stVegaLiteChart] svg").first.wait_for(
            timeout=60_000)
        assert page.get_by_test_id("stException").count() == 0
    finally:
        dashboard.terminate()
        output, _ = dashboard.communicate(timeout=20)
    assert "No runtime found" not in output  # the warm-up's imports before the runtime say nothing
    assert "Traceback" not in output, output
