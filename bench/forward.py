"""Forwarding end to end: events/s from host A's journal to host B's store (`llmcost forward` to a real
`llmcost serve`, then `llmcost ingest` on B) against local ingestion of the same journal, in the same run.

The journal is the tracker's (a write-ahead call attempt before each event, see bench/ingest.py). Each step
runs as the CLI in its own process, as an operator runs it, so both sides pay one interpreter start per
command (the end-to-end side two). B's collector is started before the clock starts. Both stores are then
checked to hold every event and every call attempt exactly once.

    python bench/forward.py [--events 50000] [--out bench-forward.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ingest import generate_events, write_journal

TARGET_RATIO = 3.0  # forward + collector + ingest on B, against ingest alone


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_for(home: Path) -> dict[str, str]:
    env = {**os.environ, "LLMCOST_HOME": str(home)}
    for name in ("LLMCOST_CONFIG", "LLMCOST_DB", "LLMCOST_FORWARD_TO", "LLMCOST_FORWARD_KEY"):
        env.pop(name, None)
    return env


def timed(command: list[str], home: Path, cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llmcost", *command], env=env_for(home), cwd=cwd,
                          capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"llmcost {' '.join(command)} failed: {done.stderr[-2000:]}")
    return elapsed


def start_collector(home: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llmcost", "serve", "--host", "127.0.0.1", "--port", str(port)],
                               env=env_for(home), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("llmcost serve did not start within 60 s")


def counts(home: Path) -> dict:
    import duckdb

    with duckdb.connect(str(home / "llmcost.duckdb"), read_only=True) as db:
        events, distinct_events = db.execute("SELECT count(*), count(DISTINCT event_id) FROM usage_events").fetchone()
        attempts, distinct_attempts = db.execute(
            "SELECT count(*), count(DISTINCT attempt_id) FROM call_attempts").fetchone()
    return {"events": events, "distinct_events": distinct_events, "attempts": attempts,
            "distinct_attempts": distinct_attempts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="tracker calls in the journal")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "forward.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-forward-") as tmp:
        root = Path(tmp)
        homes = {name: root / name for name in ("local", "a", "b")}
        for home in homes.values():
            (home / "journal").mkdir(parents=True)
        journal = homes["a"] / "journal" / "2026-01-01-app-1.jsonl"
        write_journal(generate_events(args.events), journal)
        shutil.copy(journal, homes["local"] / "journal" / journal.name)
        lines = sum(1 for _ in journal.open("rb"))

        local_s = timed(["ingest"], homes["local"], root)
        collector, url = start_collector(homes["b"], root)
        try:
            forward_s = timed(["forward", "--to", url, "--once"], homes["a"], root)
        finally:
            collector.send_signal(signal.SIGTERM)
            collector.wait(timeout=60)
        ingest_b_s = timed(["ingest"], homes["b"], root)
        local, remote = counts(homes["local"]), counts(homes["b"])
        row = {
            "events": args.events, "journal_lines": lines, "file_mb": round(journal.stat().st_size / 1e6, 1),
            "local_ingest_s": round(local_s, 3), "local_events_per_s": round(args.events / local_s),
            "forward_s": round(forward_s, 3), "collector_ingest_s": round(ingest_b_s, 3),
            "end_to_end_s": round(forward_s + ingest_b_s, 3),
            "forward_events_per_s": round(args.events / forward_s),
            "end_to_end_events_per_s": round(args.events / (forward_s + ingest_b_s)),
            "ratio": round((forward_s + ingest_b_s) / local_s, 2), "local": local, "remote": remote,
        }
        expected = {"events": args.events, "distinct_events": args.events, "attempts": args.events,
                    "distinct_attempts": args.events}
        row["exactly_once"] = local == remote == expected
    print(f"{'events':>8} {'local ingest ev/s':>18} {'forward ev/s':>13} {'A journal to B store ev/s':>26} {'ratio':>6}")
    print(f"{row['events']:>8,} {row['local_events_per_s']:>18,} {row['forward_events_per_s']:>13,} "
          f"{row['end_to_end_events_per_s']:>26,} {row['ratio']:>6.2f}")
    targets = [
        {"target": f"A's journal to B's store within {TARGET_RATIO}x of local ingestion",
         "figure": f"{row['ratio']:.2f}x", "met": row["ratio"] <= TARGET_RATIO},
        {"target": "every event and call attempt in B's store exactly once",
         "figure": f"{remote['distinct_events']:,} events, {remote['distinct_attempts']:,} attempts of "
                   f"{args.events:,} each", "met": row["exactly_once"]},
    ]
    for target in targets:
        print(f"{'met' if target['met'] else 'MISSED':>6}  {target['target']}: {target['figure']}")
    result = {"benchmark": "forward", "python": platform.python_version(), "cpus": os.cpu_count(),
              "rows": [row], "targets": targets}
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
