"""llmcost: every LLM API call accounted for — tokens, exact cost, who and which feature."""

from .config import Settings, load_settings
from .errors import (
    BudgetExceededError,
    ControlStateError,
    LLMCostError,
    MissingIdentityError,
    SpendingHaltedError,
    StoreCorruptError,
    StoreLockedError,
    TrackingUnavailableError,
    UsageNotRecordedError,
    UseCaseDisabledError,
)
from .events import UsageEvent
from .ingest import IngestResult
from .pricing import Price, Pricer
from .tracker import TrackedCall, Tracker

__all__ = [
    "BudgetExceededError",
    "ControlStateError",
    "IngestResult",
    "Price",
    "Pricer",
    "TrackedCall",
    "Tracker",
    "LLMCostError",
    "MissingIdentityError",
    "Settings",
    "SpendingHaltedError",
    "StoreCorruptError",
    "StoreLockedError",
    "TrackingUnavailableError",
    "UsageEvent",
    "UsageNotRecordedError",
    "UseCaseDisabledError",
    "load_settings",
]
