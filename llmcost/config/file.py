"""Reading the config file, and checking every key and value in it against the fields of `Settings`."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmcost.config.settings import (
    ACCOUNT_ACTIONS,
    ALERT_LEVELS,
    BUDGET_PERIODS,
    CONTROL_BACKENDS,
    CONTROL_ERROR_POLICIES,
    Settings,
)
from llmcost.config.tables import _decimal
from llmcost.errors import ConfigError


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

