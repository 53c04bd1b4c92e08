"""The control audit log: every kill switch, halt, resume and dashboard ingest (and a corrupt control file set
aside), one JSON line each.

An append-only file of its own next to the control file (`control.sqlite` -> `control-audit.jsonl`), never
the usage journal that ingestion reads. It is the trail of who did what, when and why, and the source from
which a new control file gets its kill switches and halts back when the old one was deleted or corrupt.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmcost.lines import append_line, encode_line

log = logging.getLogger("llmcost")

# "ingest": an operator ran an ingest from the dashboard (restoring a control file skips it)
ACTIONS = ("disable", "enable", "halt", "resume", "control_file_set_aside", "ingest")


def audit_path_for(control_path: Path) -> Path:
    """The audit log that belongs to a control file: `control.sqlite` -> `control-audit.jsonl` beside it."""
    return control_path.with_name(f"{control_path.stem}-audit.jsonl")


def default_actor() -> str:
    """Who acts when no one is named: the OS user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid may have no name
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def append(path: Path, action: str, **fields: Any) -> dict[str, Any]:
    """Append one entry (fsynced, under an advisory lock); raise OSError when the file cannot take it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), "action": action,
             **fields, "host": socket.gethostname(), "pid": os.getpid()}
    entry["by"] = fields.get("by") or default_actor()
    path.parent.mkdir(parents=True, exist_ok=True)
    append_line(path, encode_line(entry), fsync=True, lock=True)
    return entry


def entries(path: Path) -> Iterator[dict[str, Any]]:
    """The log's entries in order; a line that is not a JSON object (a torn last write) is skipped with a warning."""
    try:
        with path.open("rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and entry.get("action") in ACTIONS:
            yield entry
        elif line.strip():
            log.warning("llmcost: control audit log %s line %d is not an audit entry; skipped", path, number)
