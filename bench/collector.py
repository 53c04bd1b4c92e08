"""Collector throughput: events/s that `llmcost serve` accepts (validated, journaled, fsynced before the 202)
against a bare Starlette endpoint that only parses the same bodies, in the same run, batches of 1 and 100.

Both servers run as one uvicorn process on 127.0.0.1 with the same uvicorn settings; the load comes from a
minimal asyncio HTTP/1.1 client (keep-alive connections, pre-encoded requests) so the client is not what is
measured, in one-second turns taken alternately so both see the same machine. Every collector reply is
checked to be a 202 accepting the whole batch.

Both servers get the same 128 connections: a collector takes many senders' requests at once, and its
replies wait for the fsync covering them, which one fsync shares among every request that arrived while the
previous one ran (group commit). With 32, at batch 1, the collector sat waiting for fsyncs with its CPU
partly idle while the bare endpoint, which waits for nothing, ran at its CPU's limit. The collector's requests
per fsync are printed, from its /metrics; the servers' CPU time per request is the figure least moved by the
connections' count and by other load on the machine.

    python bench/collector.py [--seconds 5] [--connections 128] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.5


def baseline_app():
    """The floor: read the body, parse it as JSON, answer 202. No validation, no journal, no fsync."""
    import pydantic_core
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def usage(request):
        records = pydantic_core.from_json(await request.body())
        count = len(records) if isinstance(records, list) else 1
        return JSONResponse({"accepted": count, "rejected": []}, status_code=202)

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/usage", usage, methods=["POST"]), Route("/healthz", healthz)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(kind: str, port: int, home: Path) -> subprocess.Popen:
    env = {**os.environ, "LLMCOST_HOME": str(home)}
    env.pop("LLMCOST_CONFIG", None)
    if kind == "collector":
        command = [sys.executable, "-m", "llmcost", "serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = [sys.executable, "-m", "uvicorn", "--factory", "collector:baseline_app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning", "--no-access-log", "--app-dir", str(Path(__file__).parent)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} did not start: {process.stderr.read().decode()[-2000:]}")


def body_for(batch: int) -> bytes:
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    records = [{"ts": now, "user_id": f"u{i % 50}", "tenant_id": "t1", "use_case": "chat_tutor", "provider": "openai",
                "model": "gpt-4o-mini", "input_tokens": 120 + i, "output_tokens": 30} for i in range(batch)]
    return json.dumps(records[0] if batch == 1 else records).encode()


async def _connection(port: int, request: bytes, batch: int, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    expected = f'"accepted":{batch},'.encode()
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            reply = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 202") or expected not in reply:
                raise RuntimeError(f"unexpected reply: {head[:40]!r} {reply[:200]!r}")
            counts[0] += 1
    finally:
        writer.close()


def load(port: int, batch: int, seconds: float, connections: int) -> dict:
    body = body_for(batch)
    request = (f"POST /v1/usage HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    counts = [0]

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(_connection(port, request, batch, started + seconds, counts)
                               for _ in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return {"requests": counts[0], "seconds": round(elapsed, 3), "events_per_s": round(counts[0] * batch / elapsed, 1)}


def journal_figures(port: int) -> tuple[float, float]:
    """(batches journaled, fsyncs) so far, from the collector's /metrics: how many batches each fsync covered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return (float(values["llmcost_collector_journal_write_seconds_count"]),
            float(values["llmcost_collector_journal_syncs_total"]))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux), or None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleaved(servers: dict[str, tuple[subprocess.Popen, int]], batch: int, seconds: float,
                connections: int) -> dict[str, dict]:
    """Each server loaded for `seconds` in all, in one-second turns taken alternately, so a change in the
    machine's load (other processes share its cores) weighs on both alike. The servers' CPU time per
    request is the figure such load disturbs least."""
    turns = max(1, round(seconds))
    totals = {kind: {"requests": 0, "seconds": 0.0, "cpu": 0.0} for kind in servers}
    for turn in range(turns):
        for kind in (list(servers) if turn % 2 == 0 else list(servers)[::-1]):
            process, port = servers[kind]
            cpu_before = cpu_seconds(process.pid)
            figure = load(port, batch, seconds / turns, connections)
            cpu_after = cpu_seconds(process.pid)
            totals[kind]["requests"] += figure["requests"]
            totals[kind]["seconds"] += figure["seconds"]
            totals[kind]["cpu"] += (cpu_after - cpu_before) if cpu_before is not None else float("nan")
    return {kind: {"requests": total["requests"], "seconds": round(total["seconds"], 3),
                   "events_per_s": round(total["requests"] * batch / total["seconds"], 1),
                   "server_cpu_us_per_request": round(total["cpu"] / max(total["requests"], 1) * 1e6, 1)}
            for kind, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--batches", default="1,100")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "collector.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmcost-bench-collector-") as tmp:
        servers = {}
        try:
            for kind in ("baseline", "collector"):
                port = free_port()
                servers[kind] = (start(kind, port, Path(tmp) / kind), port)
            for batch in (int(b) for b in args.batches.split(",")):
                load(servers["collector"][1], batch, 0.5, args.connections)  # warm both up
                load(servers["baseline"][1], batch, 0.5, args.connections)
                batches_before, syncs_before = journal_figures(servers["collector"][1])
                figures = interleaved(servers, batch, args.seconds, args.connections)
                batches_after, syncs_after = journal_figures(servers["collector"][1])
                figures["collector"]["requests_per_fsync"] = round(
                    (batches_after - batches_before) / max(syncs_after - syncs_before, 1), 1)
                ratio = figures["baseline"]["events_per_s"] / figures["collector"]["events_per_s"]
                cpu_ratio = (figures["collector"]["server_cpu_us_per_request"]
                             / max(figures["baseline"]["server_cpu_us_per_request"], 0.1))
                rows.append({"batch": batch, "baseline": figures["baseline"], "collector": figures["collector"],
                             "ratio": round(ratio, 2), "cpu_ratio": round(cpu_ratio, 2)})
            journaled = sum(1 for path in (Path(tmp) / "collector" / "journal").glob("*-collector.jsonl")
                            for _ in path.open("rb"))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=20)
    acknowledged = sum(row["collector"]["requests"] * row["batch"] for row in rows)
    print(f"{'batch':>6} {'bare Starlette ev/s':>20} {'collector ev/s':>15} {'ratio':>6}   server CPU µs/request "
          "(bare, collector)   requests per fsync")
    for row in rows:
        print(f"{row['batch']:>6} {row['baseline']['events_per_s']:>20,.0f} {row['collector']['events_per_s']:>15,.0f} "
              f"{row['ratio']:>6.2f}   {row['baseline']['server_cpu_us_per_request']:,.0f}, "
              f"{row['collector']['server_cpu_us_per_request']:,.0f}{row['collector']['requests_per_fsync']:>24}")
    targets = [{"target": f"collector within {TARGET_RATIO}x of the bare endpoint, batch {row['batch']}",
                "figure": f"{row['ratio']:.2f}x (server CPU per request {row['cpu_ratio']:.2f}x)",
                "met": row["ratio"] <= TARGET_RATIO} for row in rows]
    # The warm-up requests were acknowledged too: the journal holds at least every measured one.
    targets.append({"target": "every acknowledged event in the journal", "figure": f"{journaled:,} lines for "
                    f"{acknowledged:,} measured events", "met": journaled >= acknowledged})
    for target in targets:
        print(f"{'met' if target['met'] else 'MISSED':>6}  {target['target']}: {target['figure']}")
    result = {"benchmark": "collector", "python": platform.python_version(), "cpus": os.cpu_count(),
              "seconds": args.seconds, "connections": args.connections, "fsync": True, "rows": rows,
              "targets": targets}
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
