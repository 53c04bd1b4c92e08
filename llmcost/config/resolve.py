"""The one resolver: explicit argument, then environment, then the config file, then defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmcost.config.file import _read_config_file, validate_config
from llmcost.config.settings import (
    ALERT_LEVELS,
    BUDGET_SCOPES,
    CONTROL_BACKENDS,
    CONTROL_ERROR_POLICIES,
    DEFAULT_USE_CASES,
    EmailSettings,
    Settings,
    SlackSettings,
    SystemLevels,
)
from llmcost.config.tables import _amounts, _budgets, _dashboard, _decimal, _limits, _names
from llmcost.errors import ConfigError


def _env_whole_number(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number (unset it or give a port such as 587)") from None


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
