"""What the settings are: every field, its default, and the choices a setting allows."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from llmcost.errors import ConfigError

ACCOUNT_ACTIONS = ("soft", "hard", "alert", "unlimited")
ALERT_LEVELS = ("info", "warning", "critical", "shutdown")
CONTROL_ERROR_POLICIES = ("refuse", "allow")
CONTROL_BACKENDS = ("sqlite", "redis")
BUDGET_ACTIONS = ("soft", "hard", "alert")
BUDGET_PERIODS = ("day", "month")
# The budget tables of the config file, by the scope they limit.
BUDGET_SCOPES = {"tenant": "tenant_budgets", "use_case": "use_case_budgets", "key": "key_budgets"}
DEFAULT_USE_CASES = ("content_analyzer", "auto_populate", "chat_tutor", "scaffolder", "interaction_generator")


@dataclass(frozen=True)
class AccountLimit:
    """A per-user daily limit for one account type, and optionally a calendar-month one (same action).

    action: `soft` warns and allows, `hard` refuses the call, `alert` only alerts,
    `unlimited` has no limit but alerts above `alert_above_usd` when set.
    """

    account_type: str
    tokens: int | None
    cost_usd: Decimal | None
    action: str
    alert_above_usd: Decimal | None = None
    monthly_tokens: int | None = None
    monthly_cost_usd: Decimal | None = None


DEFAULT_LIMITS = {
    "student": AccountLimit("student", 10_000, Decimal("0.05"), "soft"),
    "lesson_builder": AccountLimit("lesson_builder", 100_000, Decimal("0.50"), "hard"),
    "admin": AccountLimit("admin", 500_000, Decimal("2.50"), "alert"),
    "super_admin": AccountLimit("super_admin", None, None, "unlimited", Decimal("50")),
}


@dataclass(frozen=True)
class Budget:
    """A spend limit of one tenant, use case or service key over a day or a calendar month (configured time zone).

    action: `soft` warns and allows, `hard` refuses the call, `alert` only alerts. A service key is named by
    its hash as configured (`sha256:<hex>`), never by the key itself.
    """

    scope: str
    name: str
    tokens: int | None = None
    cost_usd: Decimal | None = None
    period: str = "day"
    action: str = "hard"


@dataclass(frozen=True)
class SystemLevels:
    """System-wide daily spend levels in USD."""

    warning_usd: Decimal = Decimal("10")
    critical_usd: Decimal = Decimal("50")
    shutdown_usd: Decimal = Decimal("200")


@dataclass(frozen=True)
class EmailSettings:
    host: str | None = None
    port: int = 587
    security: str = "starttls"  # starttls | ssl | none
    username: str | None = None
    password: str | None = None
    sender: str = "llmcost@localhost"
    recipients: tuple[str, ...] = ()
    min_level: str = "critical"

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.recipients)


@dataclass(frozen=True)
class SlackSettings:
    webhook_url: str | None = None
    min_level: str = "warning"

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)


@dataclass(frozen=True)
class DashboardRoles:
    """Who gets which role once signed in: an email, "@domain" for a whole domain, or "group:NAME" for a
    value of the groups claim."""

    operator: tuple[str, ...] = ()
    viewer: tuple[str, ...] = ()


@dataclass(frozen=True)
class DashboardSettings:
    """Sign-in to the dashboard (`[dashboard]`): roles from the identity's claims, and tenant-scoped viewers."""

    # Served on a non-loopback address without sign-in ([auth] in .streamlit/secrets.toml), show data anyway
    # (read only) instead of refusing.
    allow_anonymous: bool = False
    roles: DashboardRoles = field(default_factory=DashboardRoles)
    # Tenants a viewer is limited to, by who they are (same entries as the roles): "@client.example" = ["t1"].
    tenants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    groups_claim: str = "groups"
    # A claim naming the identity's tenant(s); when set, an identity carrying it sees only those tenants.
    tenant_claim: str | None = None


@dataclass(frozen=True)
class Settings:
    home: Path
    db_path: Path
    journal_dir: Path
    fallback_log: Path
    inbox_dir: Path
    control_db: Path
    timezone: str = "UTC"
    fsync: bool = False  # a written line survives a process crash; fsync also survives power loss
    default_rate_per_mtok: Decimal = Decimal("5.00")
    price_overrides_file: Path | None = None
    limits: dict[str, AccountLimit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    default_account_type: str = "student"
    system: SystemLevels = field(default_factory=SystemLevels)
    use_cases: tuple[str, ...] = DEFAULT_USE_CASES
    silent_use_case_days: int = 2
    stale_attempt_seconds: int = 60
    inbox_settle_seconds: float = 10.0  # an inbox file unchanged this long is finished (its last line counts)
    # A reservation whose process is gone, or older than this, stops counting (checked every maintenance interval).
    reservation_ttl_seconds: int = 3600
    control_maintenance_seconds: int = 30
    # When the control file cannot be used before a call: refuse it, or allow it unchecked (noted in its metadata).
    on_control_error: str = "refuse"
    # Where the live control state lives: one SQLite file per host, or Redis shared by every host.
    control_backend: str = "sqlite"
    redis_url: str | None = None
    # Spend limits per tenant, use case and service key, by day or calendar month (see `Budget`).
    tenant_budgets: dict[str, Budget] = field(default_factory=dict)
    use_case_budgets: dict[str, Budget] = field(default_factory=dict)
    key_budgets: dict[str, Budget] = field(default_factory=dict)
    estimate_mismatch_ratio: Decimal = Decimal("0.20")
    email: EmailSettings = field(default_factory=EmailSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)
    notifier_retries: int = 3
    # Daily spend (USD) above which a tenant or a use case raises a warning; "*" applies to every one.
    tenant_daily_usd: dict[str, Decimal] = field(default_factory=dict)
    use_case_daily_usd: dict[str, Decimal] = field(default_factory=dict)
    # An app host's collector (`llmcost serve` URL): `llmcost watch` forwards the journals there instead of ingesting.
    forward_to: str | None = None
    forward_key: str | None = None  # the collector's service key
    # Delete journal files forwarded in whole and unchanged for this many days (never unforwarded ones).
    forward_retention_days: int | None = None
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    config_file: Path | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def limit_for(self, account_type: str | None) -> AccountLimit:
        """The limit of an account type; unknown or missing types get the default account type's limit."""
        if account_type and account_type in self.limits:
            return self.limits[account_type]
        return self.limits[self.default_account_type]

    def budgets(self) -> list[Budget]:
        """Every tenant, use case and service key budget, in that order."""
        return [*self.tenant_budgets.values(), *self.use_case_budgets.values(), *self.key_budgets.values()]

    def ensure_dirs(self, strict: bool = True) -> list[str]:
        """Create the data folders. With strict=False, return the problems instead of raising
        (a tracker must still start when one folder is unusable: its records go to the fallback log)."""
        problems = []
        for folder in (self.home, self.journal_dir, self.inbox_dir, self.db_path.parent,
                       self.fallback_log.parent, self.control_db.parent):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                if strict:
                    raise ConfigError(f"cannot create folder {folder}: {error.strerror}") from None
                problems.append(f"{folder}: {error.strerror}")
        return problems
