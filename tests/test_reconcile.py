"""Reconciliation of provider usage exports against a seeded store: a sample export with one day off."""

from __future__ import annotations

import calendar
import csv
import dataclasses
import datetime as dt
import json
from collections import defaultdict
from decimal import Decimal

import pytest
from click.testing import CliRunner

from llmcost.cli import monitor as cli_monitor
from llmcost.monitor.reconcile import ReconcileError, read_export, reconcile
from tests.monitoring_seed import event, insert

DAYS = [dt.date(2025, 3, 1), dt.date(2025, 3, 2), dt.date(2025, 3, 3)]
MINI, FOUR_O, CLAUDE = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022"
OFF_DAY = DAYS[1]
OPENAI_HEADER = ("start_time,end_time,start_time_iso,end_time_iso,project_id,num_model_requests,user_id,api_key_id,"
                 "model,batch,service_tier,input_tokens,output_tokens,input_cached_tokens,input_uncached_tokens,"
                 "input_text_tokens,output_text_tokens,input_cached_text_tokens,input_audio_tokens,"
                 "input_cached_audio_tokens,output_audio_tokens,input_image_tokens,input_cached_image_tokens,"
                 "output_image_tokens").split(",")


@pytest.fixture
def logged(settings):
    """Calls on three days for two OpenAI models and one Anthropic model; returns our totals per (day, model)."""
    rows = []
    for d, day in enumerate(DAYS):
        for m, (provider, model) in enumerate((("openai", MINI), ("openai", FOUR_O), ("anthropic", CLAUDE))):
            for i in range(3 + d + m):
                ts = dt.datetime.combine(day, dt.time(1 + i * 2, 15))
                rows.append(event(ts, Decimal("0.000123") * (i + 1), provider=provider, model=model,
                                  input_tokens=1000 + 10 * i, output_tokens=200 + i, cache_read_tokens=100 * (i % 2),
                                  status="error" if i == 2 else "ok"))
    insert(settings.db_path, "usage_events", rows)
    totals = defaultdict(lambda: {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
                                  "cost_usd": Decimal(0)})
    for r in rows:
        t = totals[(r["day"], r["model"])]
        t["requests"] += 1
        t["input_tokens"] += r["input_tokens"]
        t["output_tokens"] += r["output_tokens"]
        t["cached_tokens"] += r["cache_read_tokens"]
        t["cost_usd"] += Decimal(r["cost_usd"])
    return totals


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def generic_export(tmp_path, totals, models=(MINI, FOUR_O), tweak=None):
    rows = []
    for (day, model), t in sorted(totals.items()):
        if model not in models:
            continue
        figures = dict(t)
        if tweak:
            tweak(day, model, figures)
        rows.append([day.isoformat(), model, figures["requests"], figures["input_tokens"], figures["output_tokens"],
                     figures["cost_usd"]])
    return write_csv(tmp_path / "usage.csv", ["date", "model", "requests", "input_tokens", "output_tokens",
                                              "cost_usd"], rows)


def one_day_off(day, model, figures):
    if (day, model) == (OFF_DAY, MINI):
        figures["requests"] += 2
        figures["cost_usd"] += Decimal("0.50")


def test_generic_export_with_one_day_off(settings, logged, tmp_path):
    result = reconcile(settings, generic_export(tmp_path, logged, tweak=one_day_off))
    assert result.figures == ("requests", "input_tokens", "output_tokens", "cost_usd")
    assert len(result.rows) == 6  # three days x the export's two models; Anthropic's calls are not compared
    assert not result.ok
    differing = result.differences
    assert list(zip(differing["day"], differing["model"])) == [(OFF_DAY, MINI)]
    row = differing.iloc[0]
    ours = logged[(OFF_DAY, MINI)]
    assert (row["export_requests"], row["ours_requests"]) == (ours["requests"] + 2, ours["requests"])
    assert row["ours_cost_usd"] == ours["cost_usd"]
    assert row["export_cost_usd"] == ours["cost_usd"] + Decimal("0.50")
    assert row["ours_failed_calls"] == 1
    assert row["difference"].startswith(f"requests {ours['requests'] + 2} vs {ours['requests']} (-")
    assert "cost_usd $0.50" in row["difference"]
    assert "input_tokens" not in row["difference"]
    text = result.to_text()
    assert "1 differ:" in text and OFF_DAY.isoformat() in text


def openai_rows(totals, tweak=None):
    """OpenAI's usage export grouped by model: one row per hourly bucket and API key, so several per day."""
    rows = []
    for (day, model), t in sorted(totals.items()):
        if not model.startswith("gpt"):
            continue
        figures = dict(t)
        if tweak:
            tweak(day, model, figures)
        # Split the day's figures over two buckets and two keys.
        first = {k: v // 2 for k, v in figures.items() if k != "cost_usd"}
        second = {k: figures[k] - first[k] for k in first}
        for hour, part, key in ((3, first, "key_A"), (17, second, "key_B")):
            start = dt.datetime.combine(day, dt.time(hour), tzinfo=dt.timezone.utc)
            end = start + dt.timedelta(hours=1)
            values = {
                "start_time": calendar.timegm(start.utctimetuple()), "end_time": calendar.timegm(end.utctimetuple()),
                "start_time_iso": start.isoformat(), "end_time_iso": end.isoformat(), "project_id": "proj_1",
                "num_model_requests": f"{part['requests']}.0", "user_id": "", "api_key_id": key, "model": model,
                "batch": "", "service_tier": "", "input_tokens": part["input_tokens"],
                "output_tokens": part["output_tokens"], "input_cached_tokens": part["cached_tokens"],
                "input_uncached_tokens": part["input_tokens"] - part["cached_tokens"],
                "input_text_tokens": part["input_tokens"], "output_text_tokens": part["output_tokens"],
            }
            rows.append([values.get(column, 0) for column in OPENAI_HEADER])
    return rows


def test_openai_usage_export_shape(settings, logged, tmp_path):
    def off(day, model, figures):
        if (day, model) == (DAYS[2], FOUR_O):
            figures["output_tokens"] -= 40
    export = write_csv(tmp_path / "completions_usage_2025-03-01_2025-03-03.csv", OPENAI_HEADER,
                       openai_rows(logged, off))
    theirs, figures = read_export(export)
    assert figures == ("requests", "input_tokens", "output_tokens", "cached_tokens")
    assert theirs[(DAYS[0], MINI.lower())]["requests"] == logged[(DAYS[0], MINI)]["requests"]

    result = reconcile(settings, export, provider="openai")
    assert len(result.rows) == 6
    differing = result.differences
    assert list(zip(differing["day"], differing["model"])) == [(DAYS[2], FOUR_O)]
    expected = logged[(DAYS[2], FOUR_O)]["output_tokens"]
    assert differing.iloc[0]["difference"] == (
        f"output_tokens {expected - 40:,} vs {expected:,} (+{Decimal(40) * 100 / (expected - 40):.1f}%)")


def test_legacy_openai_export_with_unix_timestamps(settings, logged, tmp_path):
    rows = []
    for (day, model), t in sorted(logged.items()):
        if model == MINI:
            noon = calendar.timegm(dt.datetime.combine(day, dt.time(12)).timetuple())
            rows.append([noon, t["requests"], "completion", model, t["input_tokens"], t["output_tokens"]])
    export = write_csv(tmp_path / "legacy.csv", ["aggregation_timestamp", "n_requests", "operation", "snapshot_id",
                                                 "n_context_tokens_total", "n_generated_tokens_total"], rows)
    result = reconcile(settings, export)
    assert len(result.rows) == 3 and result.ok


def test_tolerance(settings, logged, tmp_path):
    def half_percent(day, model, figures):
        if (day, model) == (OFF_DAY, FOUR_O):
            figures["input_tokens"] = round(figures["input_tokens"] * 1.005)
    export = generic_export(tmp_path, logged, tweak=half_percent)
    assert reconcile(settings, export).ok
    assert reconcile(settings, export, tolerance=Decimal("0.001")).differences["model"].tolist() == [FOUR_O]
    assert reconcile(settings, generic_export(tmp_path, logged), tolerance=Decimal(0)).ok


def test_provider_filter_reports_models_missing_from_the_export(settings, logged, tmp_path):
    export = generic_export(tmp_path, logged, models=(MINI,))
    assert reconcile(settings, export).ok  # without a provider, only the export's models are compared
    result = reconcile(settings, export, provider="openai")
    differing = result.differences
    assert set(differing["model"]) == {FOUR_O}
    assert len(differing) == 3
    assert all(text.startswith("not in the export: requests 0 vs") for text in differing["difference"])
    assert CLAUDE not in set(result.rows["model"])


def test_days_follow_the_export_time_zone_not_ours(settings, tmp_path):
    berlin = dataclasses.replace(settings, timezone="Europe/Berlin")
    late = dt.datetime(2025, 3, 5, 23, 30)  # UTC; 00:30 on 6 March in Berlin
    insert(berlin.db_path, "usage_events", [event(late, "0.01", day=dt.date(2025, 3, 6), model="gpt-4o")])
    export = write_csv(tmp_path / "u.csv", ["date", "model", "requests"], [["2025-03-05", "GPT-4o", 1]])
    result = reconcile(berlin, export)
    assert result.ok and result.rows.iloc[0]["ours_requests"] == 1
    in_berlin = reconcile(berlin, export, export_timezone="Europe/Berlin")
    assert not in_berlin.ok and in_berlin.rows.iloc[0]["ours_requests"] == 0


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["date", "requests"], ["2025-03-01", "1"], "no model column (export the usage grouped by model)"),
        (["model", "requests"], ["gpt-4o", "1"], "no day column; expected one of: date, day"),
        (["date", "model", "notes"], ["2025-03-01", "gpt-4o", "x"], "no figure to compare"),
        (["date", "model", "requests"], ["yesterday", "gpt-4o", "1"], "line 2: 'yesterday' is not a date"),
        (["date", "model", "requests"], ["2025-03-01", "gpt-4o", "1.5"],
         "line 2: requests '1.5' is not a whole number"),
        (["date", "model", "cost_usd"], ["2025-03-01", "gpt-4o", "-2"], "line 2: cost_usd '-2' is not a number >= 0"),
    ],
)
def test_unreadable_exports_name_the_problem(settings, tmp_path, header, row, message):
    export = write_csv(tmp_path / "bad.csv", header, [row])
    with pytest.raises(ReconcileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        reconcile(settings, export)


def test_cli_reconcile_exit_codes(settings, logged, tmp_path):
    runner = CliRunner()
    matching = generic_export(tmp_path, logged)
    ok = runner.invoke(cli_monitor.reconcile, [str(matching), "--db", str(settings.db_path)])
    assert ok.exit_code == 0, ok.output
    assert "Every day and model matches within the tolerance." in ok.stdout

    off = generic_export(tmp_path, logged, tweak=one_day_off)
    bad = runner.invoke(cli_monitor.reconcile, [str(off), "--tolerance", "1%", "--format", "json"],
                        obj={"db": str(settings.db_path)})
    assert bad.exit_code == 1, bad.output
    data = json.loads(bad.stdout)
    assert (data["differing"], data["tolerance"]) == (1, "0.01")
    assert [r["day"] for r in data["rows"] if r["differs"]] == [OFF_DAY.isoformat()]

    wrong = runner.invoke(cli_monitor.reconcile, [str(off), "--tolerance", "lots"])
    assert wrong.exit_code == 2 and "not a fraction" in wrong.output
    unreadable = runner.invoke(cli_monitor.reconcile, [str(write_csv(tmp_path / "x.csv", ["a"], [["1"]]))])
    assert unreadable.exit_code == 2 and "no day column" in unreadable.output


@pytest.mark.parametrize("export_model", ["gpt-4o-mini-2024-07-18", "gpt-4o-mini"])
def test_tracker_calls_match_an_export_naming_the_snapshot_or_the_requested_model(settings, tmp_path, export_model):
    """Issue 11 item 16: the tracker stores the requested `gpt-4o-mini`, the export names what served it."""
    import openai

    from llmcost.ingestion.run import ingest
    from llmcost.sdk.tracker import Tracker
    from tests.fake_provider import FakeProvider, chat_completion

    server = FakeProvider()
    server.chat = chat_completion(model="gpt-4o-mini-2024-07-18", prompt_tokens=1000, completion_tokens=500, cached=0)
    tracker = Tracker(settings)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
        for _ in range(7):
            with tracker.call(use_case="chat_tutor", user_id="u", tenant_id="t", provider="openai",
                              model="gpt-4o-mini") as call:
                call.record(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user",
                                                                                          "content": "hi"}]))
    finally:
        tracker.close()
        server.close()
    ingest(settings)
    today = dt.datetime.now(dt.timezone.utc).date()
    export = write_csv(tmp_path / "completions_usage.csv", ["date", "model", "requests", "input_tokens",
                                                           "output_tokens", "cost_usd"],
                       # gpt-4o-mini list prices $0.15 / $0.60: 7 x (1,000 x $0.15 + 500 x $0.60) = $0.00315
                       [[today.isoformat(), export_model, 7, 7000, 3500, "0.00315"]])
    result = reconcile(settings, export, provider="openai")
    assert result.ok, result.to_text()
    assert result.rows[["model", "export_requests", "ours_requests"]].values.tolist() == [[export_model, 7, 7]]
    assert result.rows.iloc[0]["ours_cost_usd"] == Decimal("0.00315")
