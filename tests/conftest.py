"""Every test runs against its own data folder, so none touches real data."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest

from llmcost.config import load_settings
from llmcost.sdk.tracker import Tracker

from .fake_provider import FakeProvider

ENV_VARS = ("LLMCOST_HOME", "LLMCOST_DB", "LLMCOST_CONFIG", "LLMCOST_TIMEZONE", "LLMCOST_SMTP_HOST",
            "LLMCOST_SMTP_PORT", "LLMCOST_SMTP_USER", "LLMCOST_SMTP_PASSWORD", "LLMCOST_SLACK_WEBHOOK", "LLMCOST_FORWARD_TO",
            "LLMCOST_FORWARD_KEY", "LLMCOST_CONTROL_BACKEND", "LLMCOST_REDIS_URL")


def pytest_report_header(config):
    """The versions that decide stored figures: DuckDB writes the store, genai-prices holds every price."""
    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"duckdb {installed('duckdb')}, genai-prices {installed('genai-prices')}"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LLMCOST_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture
def settings(isolated_home):
    s = load_settings()
    s.ensure_dirs()
    return s


@pytest.fixture
def provider():
    """A local server speaking the OpenAI and Anthropic APIs, for the real SDK clients."""
    server = FakeProvider()
    yield server
    server.close()


@pytest.fixture
def tracker(settings):
    t = Tracker(settings)
    yield t
    t.close()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server for this test (Debian's `redis-server`; CI installs it in `.ci/run`)."""
    from . import redis_server as server

    if not server.available():
        pytest.skip(f"redis-server not installed at {server.REDIS_SERVER} (apt-get install redis-server)")
    running = server.RedisServer(tmp_path / "redis")
    yield running
    running.stop()
