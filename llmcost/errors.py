"""Every error llmcost raises on purpose is an LLMCostError, so callers can catch them all at once."""


class LLMCostError(Exception):
    """Base class of llmcost's errors."""


class ConfigError(LLMCostError):
    """The configuration (llmcost.toml, LLMCOST_* variables, a price-override file) is invalid."""


class StoreError(LLMCostError):
    """The DuckDB store cannot be opened (a folder in its place, no permission, no space)."""


class StoreLockedError(StoreError):
    """The DuckDB store stayed locked by another process for longer than the bounded wait."""


class StoreMissingError(StoreError):
    """No store at the configured path (a mistyped --db or LLMCOST_DB, or nothing ingested yet)."""


class StoreCorruptError(StoreError):
    """The DuckDB store file cannot be opened as a database; `llmcost rebuild` recreates it from the files."""


class ControlStateError(LLMCostError):
    """The live control state (control.sqlite) cannot be read or written: locked too long, unreadable, or newer."""


class MissingIdentityError(LLMCostError):
    """A tracked call lacks user_id and/or tenant_id."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        fields = ", ".join(missing)
        super().__init__(
            f"Missing required identity: {fields} (pass {', '.join(f'{m}=...' for m in missing)} "
            "to the call, or wrap it in `with tracker.identity(user_id=..., tenant_id=...)`)"
        )


class UseCaseDisabledError(LLMCostError):
    """The call's use case is switched off by a kill switch."""


class SpendingHaltedError(LLMCostError):
    """System-wide spend reached the emergency shutdown level; every call is refused."""


class BudgetExceededError(LLMCostError):
    """A hard budget (the user's day or month, a tenant's, a use case's, a service key's) would be exceeded.

    `figures`: the refused budget's scope, name, period, limit, spend before the call and the call's estimate
    (what the collector's 429 reports), empty when the refusal came without them.
    """

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


class TrackingUnavailableError(LLMCostError):
    """The attempt record could be written neither to the journal nor to the fallback log."""


class UsageNotRecordedError(LLMCostError):
    """The call was made but its usage could be written neither to the journal nor to the fallback log."""

    def __init__(self, message: str, response=None, event=None):
        super().__init__(message)
        self.response = response
        self.event = event


class DismissError(LLMCostError):
    """A dismissal of failed logs that names nothing, or gives no reason."""


class ReconcileError(LLMCostError):
    """The provider export cannot be read as a usage export."""
