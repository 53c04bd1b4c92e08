"""Many dashboard sessions at once: they all share the server's process, where DuckDB refuses a read-only and
a read-write connection to one file. A Refresh (or any store write) must not break another session's page,
another session's reads must not break a Refresh, and two Refreshes at once run one after the other's refusal."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
import threading
import time
from pathlib import Path

import pytest
import streamlit as st

from llmcost.control import audit
from llmcost.dashboard import failed as fq
from llmcost.dashboard import queries as dq
from llmcost.dashboard import ui
from llmcost.dashboard.access import OPERATOR, Access
from llmcost.store import connection as store

BENCH = Path(__file__).resolve().parent.parent / "bench"


def write_events(path: Path, count: int) -> None:
    """`count` realistic usage events as JSON Lines, from the ingest benchmark's generator."""
    sys.path.insert(0, str(BENCH))
    try:
        generator = importlib.import_module("ingest")
    finally:
        sys.path.remove(str(BENCH))
    generator.write_jsonl(generator.generate_events(count), path)


def every_page_bundle(settings) -> None:
    today = dt.datetime.now(settings.tz).date()
    filters = dq.Filters(today - dt.timedelta(days=29), today)
    dq.sidebar(settings.db_path)
    dq.overview(settings.db_path, today, filters)
    dq.use_cases(settings.db_path, today, filters)
    dq.models(settings.db_path, filters)
    dq.users(settings.db_path, today, filters)
    fq.failed(settings.db_path, filters, settings.timezone, fq.FailedLogQuery())
    dq.budgets(settings.db_path, today, filters)


def refresh_in_thread(settings, message_key: str) -> threading.Thread:
    thread = threading.Thread(target=ui.ingest_now, args=(settings, message_key), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def stored(settings):
    """A store that already holds events, and 100,000 more waiting in the inbox; the session is an operator's."""
    today = dt.date.today()
    st.session_state[ui.CONTEXT_KEY] = ui.PageContext(settings, dq.Filters(today, today), today,
                                                      Access(OPERATOR, "ana@example.com", signed_in=True))
    write_events(settings.inbox_dir / "first.jsonl", 1_000)
    st.session_state["seed"] = None
    ui.ingest_now(settings, "seed")
    assert st.session_state["seed"][0] == "success", st.session_state["seed"]
    write_events(settings.inbox_dir / "more.jsonl", 100_000)
    return settings


@pytest.mark.slow
def test_pages_load_while_another_session_refreshes(stored):
    refresh = refresh_in_thread(stored, "refresh_a")
    loads, errors = 0, []
    while refresh.is_alive():
        try:
            every_page_bundle(stored)
            loads += 1
        except Exception as error:  # noqa: BLE001 - every failure is the finding
            errors.append(repr(error))
    refresh.join()
    assert errors == []
    assert loads >= 1
    assert st.session_state["refresh_a"][0] == "success", st.session_state["refresh_a"]
    with store.reading(stored.db_path) as db:
        assert db.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 101_000
    ingests = [entry for entry in audit.entries(audit.audit_path_for(stored.control_db)) if entry["action"] == "ingest"]
    assert [entry["by"] for entry in ingests] == ["ana@example.com"] * 2  # the seeding refresh, then this one


@pytest.mark.slow
def test_refresh_waits_for_another_session_reading(stored):
    with store.reading(stored.db_path) as db:
        refresh = refresh_in_thread(stored, "refresh_b")
        time.sleep(1.0)  # another session's query still running when the Refresh starts
        assert db.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 1_000
    refresh.join()
    assert st.session_state["refresh_b"][0] == "success", st.session_state["refresh_b"]


@pytest.mark.slow
def test_two_refreshes_at_once_one_runs_and_the_other_is_told(stored):
    first = refresh_in_thread(stored, "refresh_c")
    time.sleep(0.2)
    second = refresh_in_thread(stored, "refresh_d")
    first.join()
    second.join()
    outcomes = sorted([st.session_state["refresh_c"], st.session_state["refresh_d"]])
    assert outcomes[0][0] == "info" and "a refresh is running" in outcomes[0][1], outcomes
    assert outcomes[1][0] == "success", outcomes
    with store.reading(stored.db_path) as db:
        assert db.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 101_000


def test_mixing_read_only_and_write_connections_in_one_process_names_the_problem(settings):
    from llmcost.errors import StoreError

    with store.writing(settings.db_path):
        with pytest.raises(StoreError, match="this process already has it open the other way"):
            with store.reading(settings.db_path):
                pass


WRITER = """
import sys, time
from pathlib import Path
from llmcost.store import connection as store
path, rounds, polite = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "yield"
for _ in range(rounds):
    with store.writing(path):  # a writer that reopens the store at once, as ingestion does between batches
        print("holding", flush=True)
        time.sleep(0.5)
    if polite:
        store.let_readers_in(path)
"""


def test_readers_get_in_between_a_writers_connections(settings):
    """Without `let_readers_in` between its connections, the writer below keeps every reader out (each fails
    with StoreLockedError after its 1.5 s): a reader polling with backoff misses the instant between two."""
    import subprocess

    store.connect(settings.db_path).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(settings.db_path), "12", "yield"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "holding"
        for _ in range(5):
            with store.reading(settings.db_path, timeout=1.5) as db:  # 3 of the writer's holds
                assert db.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
    finally:
        writer.kill()
        writer.wait()


HOLDER = """
import sys
from pathlib import Path
from llmcost.store import connection as store
with store.writing(Path(sys.argv[1])):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_run_holds_the_store_open_once_and_lets_it_go(settings):
    """`held_open` (a page run's one opening of the store): reads inside it share it, it is held until the end
    (this process could not write meanwhile), then released; with no store, or a store another process is
    writing, it holds nothing and does not wait."""
    import subprocess

    from llmcost.errors import StoreError

    with store.held_open(settings.db_path):  # no store yet
        with store.reading(settings.db_path) as db:
            assert db is None
    store.connect(settings.db_path).close()
    with store.held_open(settings.db_path):
        with store.reading(settings.db_path) as db:
            assert db.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
        with pytest.raises(StoreError, match="this process already has it open the other way"):
            with store.writing(settings.db_path):
                pass  # still held after the read above closed
    with store.writing(settings.db_path) as db:  # released
        db.execute("SELECT 1")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(settings.db_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with store.held_open(settings.db_path):
            # Did not wait for the writer, who holds the store until told (a reader gives up after 30 s).
            assert time.monotonic() - started < 10
            holder.stdin.write("done\n")
            holder.stdin.flush()
            with store.reading(settings.db_path, timeout=10) as db:  # waits for the writer, as without it
                assert db.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
    finally:
        holder.kill()
        holder.wait()
