"""The DuckDB store: connections and migrations (`connection`), the SQL several places share (`queries`),
failed logs (`failed_logs`) and CSV export (`export`).

This file holds only what needs no database driver, so a command can tell a missing store cheaply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmcost.errors import StoreMissingError


def store_exists(path: Path) -> bool:
    return Path(path).is_file() and Path(path).stat().st_size > 0


def require_store(path: Path) -> None:
    """Raise StoreMissingError unless a store exists at `path`, so a reader never shows a mistyped path as empty."""
    if not store_exists(path):
        raise StoreMissingError(
            f"no store at {path} (check --db, LLMCOST_DB and `db` in llmcost.toml; `llmcost ingest`, "
            "`llmcost demo` or `llmcost rebuild` creates one)"
        )


@contextlib.contextmanager
def transaction(db: Any) -> Iterator[Any]:
    """One DuckDB transaction: committed when the block ends, rolled back when it raises (every write that
    must land whole goes through here)."""
    db.execute("BEGIN TRANSACTION")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
