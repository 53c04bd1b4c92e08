"""The CLI as a new user meets it: a mistyped --db, a mistyped config, and messages that must be true."""

import csv
import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal

import pytest
from click.testing import CliRunner

from llmcost.cli import cli
from llmcost.config import load_settings
from llmcost.control.state import ControlState
from llmcost.errors import ConfigError
from llmcost.lines import encode_line
from llmcost.store import connection as store


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def llmcost(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llmcost", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def one_event_file(path, day="2026-11-20"):
    path.write_bytes(encode_line({
        "event_id": "e1", "ts": f"{day}T10:00:00Z", "user_id": "u", "tenant_id": "t", "use_case": "chat_tutor",
        "provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100}))
    return path


# -- 17: a mistyped --db ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_readers_given_a_mistyped_db_say_no_store_and_exit_2_or_3_creating_nothing(settings, tmp_path):
    assert run("ingest", one_event_file(tmp_path / "events.jsonl")).exit_code == 0
    typo = tmp_path / "dta" / "llmcost.duckdb"
    export = tmp_path / "provider.csv"
    export.write_text("date,model,requests\n2026-11-20,gpt-4o,1\n")
    expected_codes = {
        ("check", "--db", typo): 3,
        ("report", "daily", "--date", "2026-11-20", "--db", typo): 2,
        ("report", "weekly", "--date", "2026-11-20", "--db", typo): 2,
        ("export", "--out", tmp_path / "out.csv", "--db", typo): 2,
        ("reconcile", export, "--db", typo): 2,
    }
    for args, code in expected_codes.items():
        result = llmcost(*args, cwd=tmp_path)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert f"no store at {typo}" in result.stderr and "Traceback" not in result.stderr
        assert "$0.00" not in result.stdout
    assert not typo.parent.exists()
    assert not (tmp_path / "out.csv").exists()
    # the real store is untouched and still read
    daily = llmcost("report", "daily", "--date", "2026-11-20", "--format", "json", cwd=tmp_path)
    assert daily.returncode == 0 and json.loads(daily.stdout)["totals"]["calls"] == 1


def test_only_ingest_demo_and_rebuild_create_a_store_and_they_say_so(settings, tmp_path):
    new = tmp_path / "nonexistent" / "x.duckdb"
    first = run("ingest", one_event_file(tmp_path / "events.jsonl"), "--db", new)
    assert first.exit_code == 0 and f"Created a new store at {new}" in first.output
    assert store.store_exists(new)
    again = run("ingest", one_event_file(tmp_path / "more.jsonl", "2026-11-21"), "--db", new)
    assert again.exit_code == 0 and "Created" not in again.output
    with store.reading(new) as db:
        assert db.execute("SELECT count(*) FROM usage_events").fetchall() == [(1,)]

    demo_db = tmp_path / "demo" / "demo.duckdb"
    demo = run("demo", "--days", "1", "--db", demo_db)
    assert demo.exit_code == 0 and f"Created a new store at {demo_db}" in demo.output

    rebuilt = run("rebuild", "--yes")
    assert rebuilt.exit_code == 0 and f"Created a new store at {settings.db_path}" in rebuilt.output


# -- 18: configuration -------------------------------------------------------------------------------------------

def write_config(tmp_path, text):
    path = tmp_path / "llmcost.toml"
    path.write_text(text)
    return path


def test_a_single_use_case_given_as_a_string_is_one_use_case_not_letters(tmp_path):
    config = write_config(tmp_path, 'use_cases = "chat_tutor"\n')
    assert load_settings(config=config).use_cases == ("chat_tutor",)


@pytest.mark.parametrize("text, key, closest", [
    ('timezon = "Europe/Berlin"\n', "timezon", "timezone"),
    ('[limit.student]\ntokens = 5\n', "limit", "limits"),
    ('[limits.student]\ntokns = 5\n', "limits.student.tokns", "tokens"),
    ('[email]\nprot = 25\n', "email.prot", "port"),
    ('[system]\nshutdown = 100\n', "system.shutdown", "shutdown_usd"),
])
def test_an_unknown_key_names_itself_the_closest_valid_key_and_the_file(tmp_path, text, key, closest):
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(config=config)
    message = str(error.value)
    assert str(config) in message and repr(key) in message and f"did you mean {closest!r}" in message


@pytest.mark.parametrize("text, key", [
    ('silent_use_case_days = "two"\n', "silent_use_case_days"),
    ("notifier_retries = 2.5\n", "notifier_retries"),
    ("stale_attempt_seconds = true\n", "stale_attempt_seconds"),
    ('[email]\nport = "smtp"\n', "email.port"),
    ('fsync = "no"\n', "fsync"),
    ("use_cases = [1, 2]\n", "use_cases"),
    ('[limits.student]\ntokens = "many"\n', "limits.student.tokens"),
    ("system = 5\n", "system"),
])
def test_a_value_of_the_wrong_type_is_a_clean_error_naming_key_and_file(tmp_path, text, key):
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(config=config)
    assert str(config) in str(error.value) and key in str(error.value)
    check = llmcost("check", cwd=tmp_path)  # ./llmcost.toml is read by default
    assert check.returncode == 3 and "Traceback" not in check.stderr
    assert key in check.stderr and str(config) in check.stderr


def test_a_bad_smtp_port_variable_names_the_variable_not_the_file(tmp_path, monkeypatch):
    config = write_config(tmp_path, 'timezone = "UTC"\n')
    monkeypatch.setenv("LLMCOST_SMTP_PORT", "twenty-five")
    with pytest.raises(ConfigError, match="LLMCOST_SMTP_PORT") as error:
        load_settings(config=config)
    assert str(config) not in str(error.value)


def test_every_key_the_readme_documents_is_accepted(tmp_path):
    config = write_config(tmp_path, """
home = "data"
db = "data/llmcost.duckdb"
journal_dir = "data/journal"
fallback_log = "data/emergency.jsonl"
inbox_dir = "data/inbox"
control_db = "data/control.sqlite"
timezone = "Europe/Berlin"
fsync = true
default_rate_per_mtok = "5.00"
default_account_type = "student"
use_cases = ["chat_tutor", "scaffolder"]
silent_use_case_days = 3
stale_attempt_seconds = 90
estimate_mismatch_ratio = 0.25
notifier_retries = 2
tenant_daily_usd = { "*" = 20 }
use_case_daily_usd = { chat_tutor = 5 }

[system]
warning_usd = 10
critical_usd = 50
shutdown_usd = 200

[limits.student]
tokens = 10000
cost_usd = "0.05"
action = "soft"

[limits.super_admin]
action = "unlimited"
alert_above_usd = 50

[email]
host = "smtp.example.com"
port = 465
security = "ssl"
username = "u"
password = "p"
sender = "a@example.com"
recipients = ["ops@example.com"]
min_level = "critical"

[slack]
webhook_url = "https://hooks.slack.com/services/x"
min_level = "warning"
""")
    settings = load_settings(config=config)
    assert (settings.timezone, settings.silent_use_case_days, settings.email.port) == ("Europe/Berlin", 3, 465)
    assert settings.limits["student"].tokens == 10_000 and settings.fsync is True


# -- 19: messages that must be true ------------------------------------------------------------------------------

def test_enable_of_a_use_case_that_is_not_disabled_says_so(settings):
    result = run("enable", "chat_tutor")
    assert result.exit_code == 0 and "Enabled" not in result.output
    assert "chat_tutor was not disabled" in result.output
    run("disable", "chat_tutor", "--reason", "runaway loop")
    assert "Enabled chat_tutor" in run("enable", "chat_tutor").output
    assert ControlState(settings.control_db).disabled() == {}


def test_resume_when_nothing_is_halted_says_so_and_leaves_the_automatic_shutdown_armed(settings):
    today = dt.datetime.now(settings.tz).date()
    result = run("resume")
    assert result.exit_code == 0 and "resumed" not in result.output.lower()
    assert f"Spending is not halted for {today}" in result.output
    # the automatic shutdown still fires (a resume would have lifted it for the rest of the day)
    assert ControlState(settings.control_db).halt_reason(today, Decimal("0")) is not None

    ControlState(settings.control_db).halt(today, "operator test")
    assert f"Spending resumed for {today}" in run("resume").output
    assert ControlState(settings.control_db).halt_reason(today, None) is None


def test_demo_on_a_store_that_has_it_says_it_is_already_loaded(settings):
    assert "stored" in run("demo", "--days", "2").output
    with store.reading(settings.db_path) as db:
        events = db.execute("SELECT count(*) FROM usage_events").fetchall()[0][0]
    again = run("demo", "--days", "2")
    assert again.exit_code == 0 and "read 0" not in again.output
    assert f"already loaded in {settings.db_path} ({events:,} events)" in again.output


def test_export_with_from_after_to_is_an_error_not_an_empty_file(settings, tmp_path):
    run("ingest", one_event_file(tmp_path / "events.jsonl"))
    out = tmp_path / "out.csv"
    result = run("export", "--out", out, "--from", "2026-11-21", "--to", "2026-11-19")
    assert result.exit_code == 2 and "--from 2026-11-21 is after --to 2026-11-19" in result.output
    assert not out.exists()
    assert run("export", "--out", out, "--from", "2026-11-20", "--to", "2026-11-20").exit_code == 0
    with out.open(newline="") as f:
        assert [r["event_id"] for r in csv.DictReader(f)] == ["e1"]


def test_check_does_not_advise_ingest_for_failed_logs_that_can_never_be_stored(settings, tmp_path):
    run("demo", "--days", "2")  # keeps two damaged fallback entries that cannot be stored
    result = llmcost("check", cwd=tmp_path)
    failed_line = next(line for line in result.stdout.splitlines() if "failed to log (fallback" in line)
    assert "llmcost ingest" not in failed_line
    assert "cannot be stored" in failed_line and "llmcost export --table failed_logs" in failed_line


@pytest.mark.parametrize("text, key", [
    ('timezone = "Europe/Berln"\n', "timezone"),
    ("[system]\nwarning_usd = 100\ncritical_usd = 50\n", "system"),
    ('default_account_type = "teacher"\n', "default_account_type"),
])
def test_rules_across_keys_name_the_file_too(tmp_path, text, key):
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{config}: {key}"):
        load_settings(config=config)
