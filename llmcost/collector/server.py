"""Running the collector: `llmcost serve` checks the binding is safe, then hands the app to uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

from llmcost.collector.app import KEYS_FILE_ENV, MAX_BODY_ENV
from llmcost.collector.auth import ServiceKeys, is_loopback
from llmcost.config import Settings
from llmcost.errors import ConfigError


def serve(settings: Settings, *, host: str, port: int, workers: int, keys_file: Path | None,
          allow_unauthenticated: bool, max_body_bytes: int) -> None:
    """Run the collector until interrupted. Without service keys it binds loopback addresses only."""
    import uvicorn

    keys = ServiceKeys.load(keys_file)  # read now, so a bad entry fails before any worker starts
    if not keys.required and not is_loopback(host) and not allow_unauthenticated:
        raise ConfigError(
            f"refusing to listen on {host} without service keys: anyone who can reach it could write usage. "
            "Set LLMCOST_COLLECTOR_KEYS or --keys-file (hashes from `llmcost serve --hash-key`), "
            "or pass --allow-unauthenticated on a trusted network"
        )
    # Workers are separate processes that build the app from the environment: hand them the same settings.
    os.environ["LLMCOST_HOME"] = str(settings.home)
    os.environ["LLMCOST_DB"] = str(settings.db_path)
    if settings.config_file is not None:
        os.environ["LLMCOST_CONFIG"] = str(settings.config_file)
    if keys_file is not None:
        os.environ[KEYS_FILE_ENV] = str(Path(keys_file).resolve())
    os.environ[MAX_BODY_ENV] = str(max_body_bytes)
    settings.ensure_dirs()
    uvicorn.run("llmcost.collector.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="warning", timeout_keep_alive=5, timeout_graceful_shutdown=10, access_log=False)
