"""A real `llmcost serve` subprocess on 127.0.0.1 and a free port, for the collector tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmcost.store import connection as store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningCollector:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve_command(port: int, *args: str, prelude: str = "") -> list[str]:
    """`llmcost serve` on a loopback port; a `prelude` (Python run first, e.g. a fault the test injects) makes it
    `python -c PRELUDE...` instead of `python -m llmcost`."""
    start = [sys.executable, "-c", f"{prelude}\nfrom llmcost.cli import cli\ncli(prog_name='llmcost')"] if prelude else [
        sys.executable, "-m", "llmcost"]
    return [*start, "serve", "--host", "127.0.0.1", "--port", str(port), *args]


@contextlib.contextmanager
def running_collector(home: Path, *args: str, env: dict[str, str] | None = None,
                      cwd: Path | None = None, prelude: str = "") -> Iterator[RunningCollector]:
    port = free_port()
    full_env = {**os.environ, "LLMCOST_HOME": str(home), **(env or {})}
    if "LLMCOST_COLLECTOR_KEYS" not in (env or {}):
        full_env.pop("LLMCOST_COLLECTOR_KEYS", None)  # the developer's own keys must not reach the test collector
    log_path = home.parent / f"collector-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(serve_command(port, *args, prelude=prelude), env=full_env, cwd=cwd, stdout=log,
                                   stderr=log)
    collector = RunningCollector(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llmcost serve exited with {process.returncode}: {collector.log()}")
            try:
                if httpx.get(collector.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmcost serve did not answer /healthz within 60 s: {collector.log()}")
            time.sleep(0.1)
        yield collector
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def ingest(home: Path, cwd: Path | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "llmcost", "ingest"], env={**os.environ, "LLMCOST_HOME": str(home)},
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def rows(settings, sql, params=()):
    """Rows of a query against the store (read-only)."""
    with store.reading(settings.db_path) as db:
        return db.execute(sql, list(params)).fetchall()
