"""The collector's group commit: batches of concurrent requests share one write and one fsync, yet a batch the
disk cannot take fails alone. The disk is made to refuse with a real file size limit (RLIMIT_FSIZE) in a
subprocess, so the short write comes from the kernel."""

from __future__ import annotations

import json
import subprocess
import sys

LIMIT = 4096

SCRIPT = f"""
import asyncio, json, resource, signal, sys
from pathlib import Path
from llmcost.collector.intake import DurableWriter, NotDurable

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (short or EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))


async def main():
    writer = DurableWriter(Path(sys.argv[1]), Path(sys.argv[2]))
    big = [{{"event_id": "big", "pad": "x" * {LIMIT + 500}}}]
    small = [{{"event_id": "small-1"}}, {{"event_id": "small-2"}}]
    # Both batches queued before the writer thread may take them, so they form one group.
    with writer._commit._cond:
        tasks = [asyncio.ensure_future(writer.write(batch)) for batch in (big, small)]
        for _ in range(5):
            await asyncio.sleep(0)
        queued = len(writer._commit._waiting)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()
    print(json.dumps({{"queued": queued, "outcomes": [o if isinstance(o, str) else type(o).__name__ for o in outcomes]}}))


asyncio.run(main())
"""


def test_a_batch_the_disk_cannot_take_fails_alone_while_its_group_still_commits(tmp_path):
    journal_dir, fallback_log = tmp_path / "journal", tmp_path / "fallback.jsonl"
    journal_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(journal_dir), str(fallback_log)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["queued"] == 2  # one group: the joined write is tried first and comes up short
    # The big batch fits neither the journal nor the fallback log: not acknowledged. The small one is durable.
    assert result["outcomes"] == ["NotDurable", "journal"]
    lines = [json.loads(line) for path in journal_dir.glob("*-collector.jsonl") for line in path.open()]
    assert [line["event_id"] for line in lines] == ["small-1", "small-2"]  # no torn remains of the big batch
    assert not fallback_log.exists() or fallback_log.read_bytes() == b""
