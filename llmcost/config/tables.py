"""Settings built from the config file's tables: account types (`[limits]`), budgets, amounts per name, the dashboard.

Values here were type-checked by `llmcost.config.file` already; these add the rules a type cannot say.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from llmcost.config.settings import (
    ACCOUNT_ACTIONS,
    BUDGET_ACTIONS,
    BUDGET_PERIODS,
    BUDGET_SCOPES,
    DEFAULT_LIMITS,
    AccountLimit,
    Budget,
    DashboardRoles,
    DashboardSettings,
)
from llmcost.errors import ConfigError


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


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A list of names; a single name given as a string is one name, not its letters."""
    return (value,) if isinstance(value, str) else tuple(value)


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

