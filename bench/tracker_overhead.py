"""Tracker overhead per call: p50 and p99 of a tracked call against the same call untracked.

The "LLM call" is building a real openai ChatCompletion from a dict (no network), so the difference
is the tracker's own work: identity, kill switch, shutdown and budget checks in SQLite, the write-ahead
attempt record, pricing, and the usage record. Run with fsync off (a record survives a process crash
once written) and on (it also survives power loss), for each control backend: the SQLite file, and Redis
(a local `redis-server` started for the run on a free loopback port; skipped with a note when absent).

    python bench/tracker_overhead.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from openai.types.chat import ChatCompletion

from llmcost.config import load_settings
from llmcost.sdk.tracker import Tracker

RESPONSE = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764400000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
}
PROMPT = [{"role": "user", "content": "Explain photosynthesis to a ten year old. " * 5}]


def fake_llm_call() -> ChatCompletion:
    return ChatCompletion.model_validate(RESPONSE)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_untracked(calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fake_llm_call()
        samples.append(time.perf_counter() - start)
    return samples


def measure_tracked(calls: int, fsync: bool, redis_url: str | None = None) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="llmcost-bench-"))
    settings = replace(load_settings(home=home), fsync=fsync)
    if redis_url:
        settings = replace(settings, control_backend="redis", redis_url=redis_url)
    tracker = Tracker(settings)
    samples = []
    for n in range(calls):
        start = time.perf_counter()
        with tracker.call(use_case="chat_tutor", user_id=f"user-{n % 50}", tenant_id="bench", account_type="admin",
                          provider="openai", model="gpt-4o-mini", prompt=PROMPT) as call:
            call.record(fake_llm_call())
        samples.append(time.perf_counter() - start)
    tracker.close()
    return samples


def start_redis() -> tuple[subprocess.Popen | None, str | None]:
    """A throwaway redis-server on a free loopback port (no persistence), or (None, None) without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="llmcost-bench-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tracker_overhead.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    measure_tracked(200, fsync=False)  # warm-up: imports, price-table load
    baseline = measure_untracked(args.calls)
    rows = []
    redis_process, redis_url = start_redis()
    backends = [("sqlite", None)] + ([("redis", redis_url)] if redis_url else [])
    if not redis_url:
        print("redis-server not found: the Redis backend is not measured (apt-get install redis-server)")
    try:
        runs = [(backend, fsync, measure_tracked(args.calls, fsync, url)) for backend, url in backends
                for fsync in (False, True)]
    finally:
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait()
    for backend, fsync, tracked in runs:
        base_p50, base_p99 = percentile(baseline, 0.5), percentile(baseline, 0.99)
        rows.append({
            "backend": backend,
            "fsync": fsync,
            "calls": args.calls,
            "untracked_p50_ms": base_p50 * 1e3,
            "tracked_p50_ms": percentile(tracked, 0.5) * 1e3,
            "overhead_p50_ms": (percentile(tracked, 0.5) - base_p50) * 1e3,
            "overhead_p99_ms": (percentile(tracked, 0.99) - base_p99) * 1e3,
            "overhead_mean_ms": (statistics.fmean(tracked) - statistics.fmean(baseline)) * 1e3,
        })
    print(f"{'backend':<8} {'fsync':<6} {'calls':>6} {'untracked p50':>14} {'tracked p50':>12} "
          f"{'overhead p50':>13} {'overhead p99':>13}")
    for r in rows:
        print(f"{r['backend']:<8} {str(r['fsync']):<6} {r['calls']:>6} {r['untracked_p50_ms']:>11.3f} ms "
              f"{r['tracked_p50_ms']:>9.3f} ms {r['overhead_p50_ms']:>10.3f} ms {r['overhead_p99_ms']:>10.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "tracker_overhead", "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "rows": rows,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
