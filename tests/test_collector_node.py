"""The Node example (examples/nestjs) run with the machine's `node` against a real `llmcost serve`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .collector_server import free_port, ingest, rows, running_collector

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nestjs" / "example-server.js"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


@contextlib.contextmanager
def node_app(collector_url: str, fallback_file: Path):
    env = {**os.environ, "LLMCOST_URL": collector_url, "PORT": "0", "LLMCOST_FALLBACK_FILE": str(fallback_file)}
    process = subprocess.Popen(["node", str(EXAMPLE)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening "), process.stderr.read()
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow
def test_node_middleware_reserves_settles_and_falls_back(settings, isolated_home, tmp_path):
    fallback_file = tmp_path / "node-fallback.jsonl"
    ids = {"x-user-id": "teacher-1", "x-tenant-id": "school-7"}
    with running_collector(isolated_home) as c, node_app(c.url, fallback_file) as app:
        missing = httpx.post(app + "/generate", json={"prompt": "hi"}, headers={"x-user-id": "teacher-1"})
        attempts_after_400 = sum(1 for p in (isolated_home / "journal").glob("*.jsonl") for _ in p.open())
        ok = httpx.post(app + "/generate", json={"prompt": "three word prompt"}, headers=ids, timeout=30)
        refused = httpx.post(app + "/generate", json={"prompt": "x", "estimated_tokens": 500_000},
                             headers={**ids, "x-account-type": "lesson_builder"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["missing"] == ["x-tenant-id"]
    assert attempts_after_400 == 0  # refused before any reservation or LLM call
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 103
    assert refused.status_code == 429 and refused.json()["reason"] == "budget_exceeded"
    assert not fallback_file.exists()

    dead_collector = f"http://127.0.0.1:{free_port()}"
    with node_app(dead_collector, fallback_file) as app:
        offline = httpx.post(app + "/generate", json={"prompt": "four words right here"}, headers=ids, timeout=30)
    assert offline.status_code == 200  # fail open: the call went ahead, its usage went to the local file
    kept = [json.loads(line) for line in fallback_file.read_text().splitlines()]
    assert len(kept) == 1 and "unreachable" in kept[0]["error"]
    assert kept[0]["event"]["input_tokens"] == 104 and kept[0]["event"]["user_id"] == "teacher-1"

    ingest(isolated_home)
    subprocess.run([sys.executable, "-m", "llmcost", "ingest", str(fallback_file)], check=True, capture_output=True,
                   env={**os.environ, "LLMCOST_HOME": str(isolated_home)})
    stored = rows(settings, """SELECT user_id, tenant_id, use_case, model, input_tokens, output_tokens, attempt_id
                               FROM usage_events ORDER BY input_tokens""")
    assert [r[:6] for r in stored] == [("teacher-1", "school-7", "auto_populate", "gpt-4o", 103, 40),
                                       ("teacher-1", "school-7", "auto_populate", "gpt-4o", 104, 40)]
    assert stored[0][6] is not None
    assert rows(settings, "SELECT count(*) FROM call_attempts WHERE attempt_id = ?", [stored[0][6]]) == [(1,)]
    assert rows(settings, "SELECT kind FROM failed_logs") == [("fallback",)]
