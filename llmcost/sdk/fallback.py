"""The fallback log: where a record goes when its journal cannot take it.

One JSON object per line: `{"timestamp": "...", "error": "why the normal write failed", "event": {...}}`.
Several processes may append at once (single write under an advisory lock). Ingestion stores each
event in `usage_events` exactly once and lists it in `failed_logs`, marked recovered once stored.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from llmcost.lines import append_line, encode_line


def wrap(event: dict[str, Any], error: str, timestamp: dt.datetime | None = None) -> dict[str, Any]:
    stamp = timestamp or dt.datetime.now(dt.timezone.utc)
    return {"timestamp": stamp.isoformat(), "error": error, "event": event}


def append(path: Path, event: dict[str, Any], error: str, *, fsync: bool = True) -> None:
    """Append one wrapped record; raises OSError when the fallback log cannot take it either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    append_line(path, encode_line(wrap(event, error)), fsync=fsync, lock=True)
