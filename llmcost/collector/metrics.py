"""Prometheus metrics of one collector process (each worker reports its own; sum them in Prometheus).

Today's spend by use case is priced at scrape time from the token counts accepted today, with the same
pricer ingestion uses, so the request path does no pricing.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from decimal import Decimal
from itertools import repeat
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from llmcost.events import TOKEN_FIELDS, UNATTRIBUTED
from llmcost.money import day_start_utc, today_in
from llmcost.pricing.rates import Pricer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # the *_created series only double what a scraper sees


class _TodaySpend:
    """Token counts accepted today per (use case, provider, model), priced when scraped.

    A request only files its records; they are summed a few thousand at a time (or when scraped), where
    grouping and summing in bulk costs a fraction of doing it per request."""

    FOLD_AT = 4096  # records held before they are summed: bounded memory, most requests do no summing

    def __init__(self, pricer: Pricer, tz):
        self.pricer = pricer
        self.tz = tz
        self._lock = threading.Lock()
        self._day: dt.date | None = None
        self._pending: list[dict[str, Any]] = []
        self._tokens: dict[tuple, list[int]] = {}
        self._given_cost: dict[str, Decimal] = defaultdict(Decimal)
        self._today: dt.date | None = None
        self._today_ends = 0.0  # the epoch second the local day ends

    def _today_in_zone(self) -> dt.date:
        """Today in the configured zone, worked out again only once it has ended (it is asked per request)."""
        if self._today is None or time.time() >= self._today_ends:
            self._today = today_in(self.tz)
            next_day = day_start_utc(self._today + dt.timedelta(days=1), self.tz)
            self._today_ends = next_day.replace(tzinfo=dt.timezone.utc).timestamp()
        return self._today

    def add(self, records: list[dict[str, Any]]) -> None:
        today = self._today_in_zone()
        with self._lock:
            self._start_day_locked(today)
            self._pending += records
            if len(self._pending) >= self.FOLD_AT:
                self._fold_locked()

    def _start_day_locked(self, today: dt.date) -> None:
        if today != self._day:
            self._day, self._pending, self._tokens, self._given_cost = today, [], {}, defaultdict(Decimal)

    def _fold_locked(self) -> None:
        records, self._pending = self._pending, []
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for record in records:
            if record.get("cost_usd") is not None:
                self._given_cost[record.get("use_case") or UNATTRIBUTED] += Decimal(str(record["cost_usd"]))
                continue
            key = (record.get("use_case") or UNATTRIBUTED, record.get("provider"), record.get("model"))
            group = groups.get(key)
            if group is None:
                groups[key] = [record]
            else:
                group.append(record)
        for key, group in groups.items():
            totals = self._tokens.setdefault(key, [0] * len(TOKEN_FIELDS))
            for i, name in enumerate(TOKEN_FIELDS):
                totals[i] += _token_sum(group, name)

    def collect(self):
        family = GaugeMetricFamily("llmcost_collector_spend_today_usd",
                                   "Spend accepted by this collector process today, by use case", labels=["use_case"])
        today = today_in(self.tz)
        with self._lock:
            self._start_day_locked(today)  # yesterday's spend is not today's, even before today's first record
            self._fold_locked()
            groups = {key: list(value) for key, value in self._tokens.items()}
            totals: dict[str, Decimal] = defaultdict(Decimal, self._given_cost)
        now = dt.datetime.now(dt.timezone.utc)
        for (use_case, provider, model), counts in groups.items():
            totals[use_case] += self.pricer.price(provider=provider, model=model, ts=now,
                                                  **dict(zip(TOKEN_FIELDS, counts))).cost_usd
        for use_case, amount in sorted(totals.items()):
            family.add_metric([use_case], float(amount))
        yield family


def _token_sum(records: list[dict[str, Any]], name: str) -> int:
    """The sum of one token count over records, summed in C when every value is an int (as most are)."""
    total = sum(filter(None, map(dict.get, records, repeat(name))))
    if type(total) is int:
        return total
    # Validated by the exact path, a count may still be "12" or 12.0.
    return sum(int(value) for value in map(dict.get, records, repeat(name)) if value)


class Metrics:
    def __init__(self, pricer: Pricer, tz):
        self.registry = CollectorRegistry()
        self.records = Counter("llmcost_collector_records", "Records received, by endpoint and outcome",
                               ["endpoint", "outcome"], registry=self.registry)
        self.ignored_spans = Counter("llmcost_collector_ignored_spans", "OTLP spans that were not GenAI calls",
                                     registry=self.registry)
        self.admissions = Counter("llmcost_collector_admissions", "Reserve and settle requests, by outcome",
                                  ["action", "outcome"], registry=self.registry)
        self.journal_seconds = Histogram("llmcost_collector_journal_write_seconds",
                                         "Time to make a batch durable (write and fsync)", registry=self.registry)
        self.journal_syncs = Counter("llmcost_collector_journal_syncs", "fsyncs of the journal; each covers every "
                                     "batch written since the one before (group commit)", registry=self.registry)
        self.spend = _TodaySpend(pricer, tz)
        self.registry.register(self.spend)
        self._record_counters: dict[tuple[str, str], Any] = {}  # labels() looks its child up under a lock each time

    def count(self, endpoint: str, accepted: int, rejected: int, unattributed: int) -> None:
        for outcome, number in (("accepted", accepted), ("rejected", rejected), ("unattributed", unattributed)):
            if number:
                counter = self._record_counters.get((endpoint, outcome))
                if counter is None:
                    counter = self._record_counters[(endpoint, outcome)] = self.records.labels(endpoint, outcome)
                counter.inc(number)

    def render(self) -> bytes:
        return generate_latest(self.registry)
