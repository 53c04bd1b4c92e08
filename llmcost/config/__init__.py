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

from llmcost.config.file import validate_config
from llmcost.config.resolve import load_settings
from llmcost.config.settings import (
    ACCOUNT_ACTIONS,
    ALERT_LEVELS,
    BUDGET_ACTIONS,
    BUDGET_PERIODS,
    BUDGET_SCOPES,
    CONTROL_BACKENDS,
    CONTROL_ERROR_POLICIES,
    DEFAULT_LIMITS,
    DEFAULT_USE_CASES,
    AccountLimit,
    Budget,
    DashboardRoles,
    DashboardSettings,
    EmailSettings,
    Settings,
    SlackSettings,
    SystemLevels,
)

__all__ = [
    "ACCOUNT_ACTIONS",
    "ALERT_LEVELS",
    "BUDGET_ACTIONS",
    "BUDGET_PERIODS",
    "BUDGET_SCOPES",
    "CONTROL_BACKENDS",
    "CONTROL_ERROR_POLICIES",
    "DEFAULT_LIMITS",
    "DEFAULT_USE_CASES",
    "AccountLimit",
    "Budget",
    "DashboardRoles",
    "DashboardSettings",
    "EmailSettings",
    "Settings",
    "SlackSettings",
    "SystemLevels",
    "load_settings",
    "validate_config",
]
