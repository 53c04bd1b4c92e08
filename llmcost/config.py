"""One place that decides where things live and what the limits are.

Resolution order, first match wins, for every setting:
1. an explicit argument (`load_settings(home=..., db=...)`, the CLI's `--db`);
2. environment variables: `LLMCOST_HOME` (data folder), `LLMCOST_DB` (store path alone),
   `LLMCOST_CONFIG` (config file), `LLMCOST_TIMEZONE`, `LLMCOST_SMTP_HOST`, `LLMCOST_SMTP_PORT`,
   `LLMCOST_SMTP_USER`, `LLMCOST_SMTP_PASSWORD`, `LLMCOST_SLACK_WEBHOOK`, `LLMCOST_FORWARD_TO`, `LLMCOST_FORWARD_KEY`,
   `LLMCOST_CONTROL_BACKEND`, `LLMCOST_REDIS_URL`;
3. the config file: `LLMCOST_CONFIG`, else `llmcost.toml` in the working folder (see README for keys);
4. defaults: everything under `./data`, UTC, the limits below.

Paths in the config file are relative to the file's folder; `home` defaults to `./data`.
The file's keys are the fields of `Settings` (and tables those of its nested settings), so a new setting is a
new field; an unknown key or a value of the wrong type is a `ConfigError` naming the key, the closest valid
key and the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


def _decimal(value: Any, key: str) -> Decimal | None:
    if value is None:
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{key}: {value!r} is not a number") from None
    if not result.is_finite() or result < 0:
        raise ConfigError(f"{key}: {value!r} must be a finite number >= 0")
    return result


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None


# Settings fields spelled differently in the file, and fields that are not settings a file gives.
_FILE_NAMES = {"db_path": "db", "price_overrides_file": "price_overrides"}
_NOT_IN_FILE = {"config_file", "account_type", "scope", "name"}
_CHOICES = {"action": ACCOUNT_ACTIONS, "min_level": ALERT_LEVELS, "security": ("starttls", "ssl", "none"),
            "on_control_error": CONTROL_ERROR_POLICIES, "control_backend": CONTROL_BACKENDS,
            "period": BUDGET_PERIODS}


def _file_keys(settings_class: type) -> dict[str, Any]:
    """{key in the config file: its type} for a settings dataclass."""
    hints = typing.get_type_hints(settings_class)
    return {_FILE_NAMES.get(f.name, f.name): hints[f.name] for f in dataclasses.fields(settings_class)
            if f.name not in _NOT_IN_FILE}


def validate_config(raw: dict[str, Any], path: Path) -> None:
    """Raise ConfigError, naming the key, the closest valid key and the file, for an unknown key or a bad value."""
    _check_table(raw, _file_keys(Settings), "", path)


def _check_table(table: dict[str, Any], keys: dict[str, Any], prefix: str, path: Path) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in keys:
            closest = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            hint = f"did you mean {closest[0]!r}?" if closest else f"valid keys here: {', '.join(sorted(keys))}"
            raise ConfigError(f"{path}: unknown key {name!r} ({hint})")
        _check_value(value, keys[key], name, path)


def _check_value(value: Any, kind: Any, name: str, path: Path) -> None:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{path}: {name} = {value!r}: expected {expected}")

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # TOML has no null: an optional setting is its other type
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise wrong(f"a table [{name}]")
        _check_table(value, _file_keys(kind), f"{name}.", path)
    elif origin is dict:
        if not isinstance(value, dict):
            raise wrong(f"a table [{name}] of name = value")
        for key, item in value.items():
            _check_value(item, args[1], f"{name}.{key}", path)
    elif origin is tuple:
        if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise wrong('a list of names, such as ["a", "b"]')
    elif kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("a whole number >= 0")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise wrong("a number >= 0")
    elif kind is Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise wrong("a number >= 0")
        try:
            _decimal(value, name)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    elif not isinstance(value, str):
        raise wrong("a text value in quotes")
    choices = _CHOICES.get(name.rsplit(".", 1)[-1])
    if choices and value not in choices:
        raise wrong(f"one of {', '.join(choices)}")


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A list of names; a single name given as a string is one name, not its letters."""
    return (value,) if isinstance(value, str) else tuple(value)


def _env_whole_number(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number (unset it or give a port such as 587)") from None


def _amounts(raw: Any, key: str) -> dict[str, Decimal]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a table of name = amount in USD (\"*\" for every one)")
    return {str(name): _decimal(value, f"{key}.{name}") for name, value in raw.items()}


def _budgets(raw: dict[str, Any], scope: str) -> dict[str, Budget]:
    key = BUDGET_SCOPES[scope]
    budgets = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}.{name} must be a table, e.g. [{key}.\"{name}\"] cost_usd = \"300\" "
                              'period = "month" action = "hard"')
        action, period = spec.get("action", "hard"), spec.get("period", "day")
        if action not in BUDGET_ACTIONS:
            raise ConfigError(f"{key}.{name}.action: {action!r} is not one of {', '.join(BUDGET_ACTIONS)}")
        if period not in BUDGET_PERIODS:
            raise ConfigError(f"{key}.{name}.period: {period!r} is not one of {', '.join(BUDGET_PERIODS)}")
        tokens = spec.get("tokens")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
            raise ConfigError(f"{key}.{name}.tokens: {tokens!r} must be a whole number >= 0")
        cost = _decimal(spec.get("cost_usd"), f"{key}.{name}.cost_usd")
        if tokens is None and cost is None:
            raise ConfigError(f"{key}.{name}: give cost_usd and/or tokens (a budget without either limits nothing)")
        if scope == "key" and not name.startswith("sha256:"):
            raise ConfigError(f"{key}.{name}: name a service key by its hash 'sha256:<hex>' "
                              "(`llmcost serve --hash-key` prints it), never the key itself")
        budgets[name] = Budget(scope, name, tokens, cost, period, action)
    return budgets


def _limits(raw: dict[str, Any]) -> dict[str, AccountLimit]:
    limits = dict(DEFAULT_LIMITS)
    for account_type, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"limits.{account_type} must be a table")
        base = limits.get(account_type, AccountLimit(account_type, None, None, "alert"))
        action = spec.get("action", base.action)
        if action not in ACCOUNT_ACTIONS:
            raise ConfigError(f"limits.{account_type}.action: {action!r} is not one of {', '.join(ACCOUNT_ACTIONS)}")
        tokens, monthly_tokens = spec.get("tokens", base.tokens), spec.get("monthly_tokens", base.monthly_tokens)
        for key, value in (("tokens", tokens), ("monthly_tokens", monthly_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"limits.{account_type}.{key}: {value!r} must be a whole number >= 0")
        limits[account_type] = AccountLimit(
            account_type,
            tokens,
            _decimal(spec.get("cost_usd", base.cost_usd), f"limits.{account_type}.cost_usd"),
            action,
            _decimal(spec.get("alert_above_usd", base.alert_above_usd), f"limits.{account_type}.alert_above_usd"),
            monthly_tokens,
            _decimal(spec.get("monthly_cost_usd", base.monthly_cost_usd), f"limits.{account_type}.monthly_cost_usd"),
        )
    return limits


def _identity_entries(entries: tuple[str, ...], key: str) -> tuple[str, ...]:
    for entry in entries:
        if not (entry.startswith("group:") and len(entry) > 6 or "@" in entry[:-1]):
            raise ConfigError(f"{key}: {entry!r} is not an email, an \"@domain\" or a \"group:NAME\" "
                              "(for example \"ana@example.com\", \"@example.com\" or \"group:llm-ops\")")
    return tuple(entry.strip() for entry in entries)


def _dashboard(raw: dict[str, Any], in_file: str) -> DashboardSettings:
    roles = raw.get("roles", {})
    tenants = {who: _names(names) for who, names in raw.get("tenants", {}).items()}
    _identity_entries(tuple(tenants), f"{in_file}dashboard.tenants")
    return DashboardSettings(
        allow_anonymous=raw.get("allow_anonymous", False),
        roles=DashboardRoles(**{role: _identity_entries(_names(roles.get(role, ())), f"{in_file}dashboard.roles.{role}")
                                for role in ("operator", "viewer")}),
        tenants=tenants,
        groups_claim=raw.get("groups_claim", "groups"),
        tenant_claim=raw.get("tenant_claim") or None,
    )


def load_settings(
    home: str | Path | None = None,
    db: str | Path | None = None,
    config: str | Path | None = None,
) -> Settings:
    """Resolve settings from arguments, environment, config file and defaults (see module docstring)."""
    env = os.environ
    config_path = Path(config) if config else Path(env["LLMCOST_CONFIG"]) if env.get("LLMCOST_CONFIG") else None
    if config_path is None and Path("llmcost.toml").is_file():
        config_path = Path("llmcost.toml")
    if config_path is not None and not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path}")
    raw = _read_config_file(config_path) if config_path else {}
    in_file = f"{config_path.resolve()}: " if config_path else ""  # names the file in errors about its values
    if config_path:
        validate_config(raw, config_path.resolve())
    base = config_path.parent.resolve() if config_path else Path.cwd()

    def path_of(value: Any) -> Path:
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else base / p

    if home is not None:
        home_path = Path(home)
    elif env.get("LLMCOST_HOME"):
        home_path = Path(env["LLMCOST_HOME"])
    elif "home" in raw:
        home_path = path_of(raw["home"])
    else:
        home_path = Path("data")
    home_path = home_path.expanduser().resolve()

    def located(key: str, default: str) -> Path:
        return path_of(raw[key]) if key in raw else home_path / default

    if db is not None:
        db_path = Path(db)
    elif env.get("LLMCOST_DB"):
        db_path = Path(env["LLMCOST_DB"])
    else:
        db_path = located("db", "llmcost.duckdb")

    timezone = env.get("LLMCOST_TIMEZONE") or raw.get("timezone", "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        source = "LLMCOST_TIMEZONE" if env.get("LLMCOST_TIMEZONE") else f"{in_file}timezone"
        raise ConfigError(
            f"{source}: unknown time zone {timezone!r} (use an IANA name such as 'Europe/Berlin')") from None

    system_raw = raw.get("system", {})
    system = SystemLevels(
        *(
            _decimal(system_raw.get(k, getattr(SystemLevels, k)), f"system.{k}")
            for k in ("warning_usd", "critical_usd", "shutdown_usd")
        )
    )
    if not system.warning_usd <= system.critical_usd <= system.shutdown_usd:
        raise ConfigError(f"{in_file}system: warning_usd <= critical_usd <= shutdown_usd must hold")

    email_raw = raw.get("email", {})
    recipients = email_raw.get("recipients", ())
    email = EmailSettings(
        host=env.get("LLMCOST_SMTP_HOST") or email_raw.get("host"),
        port=_env_whole_number("LLMCOST_SMTP_PORT") or email_raw.get("port", 587),
        security=email_raw.get("security", "starttls"),
        username=env.get("LLMCOST_SMTP_USER") or email_raw.get("username"),
        password=env.get("LLMCOST_SMTP_PASSWORD") or email_raw.get("password"),
        sender=email_raw.get("sender", "llmcost@localhost"),
        recipients=_names(recipients),
        min_level=email_raw.get("min_level", "critical"),
    )
    slack_raw = raw.get("slack", {})
    slack = SlackSettings(
        webhook_url=env.get("LLMCOST_SLACK_WEBHOOK") or slack_raw.get("webhook_url"),
        min_level=slack_raw.get("min_level", "warning"),
    )
    for name, level in (("email.min_level", email.min_level), ("slack.min_level", slack.min_level)):
        if level not in ALERT_LEVELS:
            raise ConfigError(f"{name}: {level!r} is not one of {', '.join(ALERT_LEVELS)}")

    on_control_error = raw.get("on_control_error", "refuse")
    if on_control_error not in CONTROL_ERROR_POLICIES:
        raise ConfigError(f"on_control_error: {on_control_error!r} is not one of {', '.join(CONTROL_ERROR_POLICIES)}")
    control_backend = env.get("LLMCOST_CONTROL_BACKEND") or raw.get("control_backend", "sqlite")
    if control_backend not in CONTROL_BACKENDS:
        source = "LLMCOST_CONTROL_BACKEND" if env.get("LLMCOST_CONTROL_BACKEND") else f"{in_file}control_backend"
        raise ConfigError(f"{source}: {control_backend!r} is not one of {', '.join(CONTROL_BACKENDS)}")
    redis_url = env.get("LLMCOST_REDIS_URL") or raw.get("redis_url") or None
    if control_backend == "redis" and not redis_url:
        raise ConfigError(f"{in_file}control_backend = \"redis\" needs redis_url (e.g. redis_url = "
                          "\"redis://127.0.0.1:6379/0\", or set LLMCOST_REDIS_URL)")
    control_seconds = {}
    for key, default in (("reservation_ttl_seconds", 3600), ("control_maintenance_seconds", 30)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: {value!r} must be a whole number of seconds >= 1")
        control_seconds[key] = value

    limits = _limits(raw.get("limits", {}))
    default_account_type = raw.get("default_account_type", "student")
    if default_account_type not in limits:
        raise ConfigError(f"{in_file}default_account_type: {default_account_type!r} has no entry under [limits]")

    return Settings(
        home=home_path,
        db_path=db_path.expanduser().resolve(),
        journal_dir=located("journal_dir", "journal"),
        fallback_log=located("fallback_log", "emergency-token-usage.jsonl"),
        inbox_dir=located("inbox_dir", "inbox"),
        control_db=located("control_db", "control.sqlite"),
        timezone=timezone,
        fsync=bool(raw.get("fsync", False)),
        default_rate_per_mtok=_decimal(raw.get("default_rate_per_mtok", "5.00"), "default_rate_per_mtok"),
        price_overrides_file=path_of(raw["price_overrides"]) if "price_overrides" in raw else None,
        limits=limits,
        default_account_type=default_account_type,
        system=system,
        use_cases=_names(raw.get("use_cases", DEFAULT_USE_CASES)),
        silent_use_case_days=int(raw.get("silent_use_case_days", 2)),
        stale_attempt_seconds=int(raw.get("stale_attempt_seconds", 60)),
        inbox_settle_seconds=float(raw.get("inbox_settle_seconds", 10)),
        on_control_error=on_control_error,
        control_backend=control_backend,
        redis_url=redis_url,
        **{BUDGET_SCOPES[scope]: _budgets(raw.get(BUDGET_SCOPES[scope], {}), scope) for scope in BUDGET_SCOPES},
        **control_seconds,
        estimate_mismatch_ratio=_decimal(raw.get("estimate_mismatch_ratio", "0.20"), "estimate_mismatch_ratio"),
        email=email,
        slack=slack,
        notifier_retries=int(raw.get("notifier_retries", 3)),
        tenant_daily_usd=_amounts(raw.get("tenant_daily_usd", {}), "tenant_daily_usd"),
        use_case_daily_usd=_amounts(raw.get("use_case_daily_usd", {}), "use_case_daily_usd"),
        forward_to=env.get("LLMCOST_FORWARD_TO") or raw.get("forward_to") or None,
        forward_key=env.get("LLMCOST_FORWARD_KEY") or raw.get("forward_key") or None,
        forward_retention_days=raw.get("forward_retention_days"),
        dashboard=_dashboard(raw.get("dashboard", {}), in_file),
        config_file=config_path.resolve() if config_path else None,
    )
