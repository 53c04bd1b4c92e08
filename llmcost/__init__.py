"""llmcost: every LLM API call accounted for — tokens, exact cost, who and which feature.

The public API. `from llmcost import Tracker` loads only the SDK's write path (no duckdb, pandas, pyarrow
or numpy); the rest is imported on first use, so an application pays only for what it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmcost.errors import (
    BudgetExceededError,
    ConfigError,
    ControlStateError,
    DismissError,
    LLMCostError,
    MissingIdentityError,
    ReconcileError,
    SpendingHaltedError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMissingError,
    TrackingUnavailableError,
    UsageNotRecordedError,
    UseCaseDisabledError,
)

# name -> the module that defines it, imported when the name is first asked for
_LAZY = {
    "Settings": "llmcost.config",
    "load_settings": "llmcost.config",
    "UsageEvent": "llmcost.events",
    "Price": "llmcost.pricing.rates",
    "Pricer": "llmcost.pricing.rates",
    "Tracker": "llmcost.sdk.tracker",
    "TrackedCall": "llmcost.sdk.call",
    "IngestResult": "llmcost.ingestion.run",
    "ingest": "llmcost.ingestion.run",
}

if TYPE_CHECKING:
    from llmcost.config import Settings, load_settings
    from llmcost.events import UsageEvent
    from llmcost.ingestion.run import IngestResult, ingest
    from llmcost.pricing.rates import Price, Pricer
    from llmcost.sdk.call import TrackedCall
    from llmcost.sdk.tracker import Tracker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmcost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BudgetExceededError",
    "ConfigError",
    "ControlStateError",
    "DismissError",
    "IngestResult",
    "LLMCostError",
    "MissingIdentityError",
    "Price",
    "Pricer",
    "ReconcileError",
    "Settings",
    "SpendingHaltedError",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreMissingError",
    "TrackedCall",
    "Tracker",
    "TrackingUnavailableError",
    "UsageEvent",
    "UsageNotRecordedError",
    "UseCaseDisabledError",
    "ingest",
    "load_settings",
]
