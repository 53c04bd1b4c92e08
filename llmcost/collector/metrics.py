"""Prometheus metrics of one collector process (each worker reports its own; sum them in Prometheus).

Today's spend by use case is priced at scrape time from the token counts accepted today, with the same
pricer ingestion uses, so the request path does no pricing: it sums each batch's counts (`BatchSpend`).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import partial
from itertools import repeat
from operator import add, attrgetter
from typing import Any

from msgspec import UNSET
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import TypeAdapter

from llmcost.events import TOKEN_FIELDS, UNATTRIBUTED, Count
from llmcost.money import day_start_utc, today_in
from llmcost.pricing.rates import Pricer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # the *_created series only double what a scraper sees


class BatchSpend:
    """One batch's token counts by (use case, provider, model), and the costs it gave by use case: what the
    spend metric takes of a batch, worked out before the batch is made durable and added once it is, so the
    records themselves need not wait for the fsync."""

    __slots__ = ("tokens", "given_cost")

    COLUMNS_FROM = 16  # records in a batch from which its columns are summed at once, when it has one key

    def __init__(self, records: list[Any]):
        self.tokens: dict[tuple, list[int]] = {}
        self.given_cost: dict[str, Decimal] = {}
        if len(records) >= self.COLUMNS_FROM and self._by_column(records):
            return
        typed = bool(records) and type(records[0]) is not dict
        for record in records:
            self._add(partial(getattr, record) if typed else record.get)

    def _add(self, value: Callable[[str], Any]) -> None:
        """One record's spend (`value` gives a field's value, None or UNSET where absent)."""
        use_case = value("use_case") or UNATTRIBUTED
        cost = _given(value("cost_usd"))
        if cost is not None:  # the record gave its cost: that is its spend
            self.given_cost[use_case] = self.given_cost.get(use_case, Decimal(0)) + Decimal(str(cost))
            return
        totals = self.tokens.setdefault((use_case, _given(value("provider")), _given(value("model"))),
                                        [0] * len(TOKEN_FIELDS))
        for i, name in enumerate(TOKEN_FIELDS):
            count = value(name)
            if count:
                totals[i] += count if type(count) is int else _COUNT.validate_python(count)

    def _by_column(self, records: list[Any]) -> bool:
        """The usual large batch, one use case and model and no cost given, summed column by column (what
        `_add` would sum record by record); False for any other batch."""
        column = _columns_of(records)
        costs = list(column("cost_usd"))
        if costs.count(None) + costs.count(UNSET) != len(costs):
            return False
        use_cases, providers, models = list(column("use_case")), list(column("provider")), list(column("model"))
        count = len(use_cases)
        if (use_cases.count(use_cases[0]) != count or providers.count(providers[0]) != count
                or models.count(models[0]) != count):
            return False
        self.tokens[_spend_key((use_cases[0], providers[0], models[0]))] = [
            _token_sum(column, name) for name in TOKEN_FIELDS]
        return True


def _columns_of(records: list[Any]) -> Callable[[str], Iterable[Any]]:
    """A field's values over records: dicts (a field absent reads None) or `typedread`'s records (UNSET)."""
    if type(records[0]) is dict:
        return lambda name: map(dict.get, records, repeat(name))
    return lambda name: map(attrgetter(name), records)


def _given(value: Any) -> Any:
    return None if value is UNSET else value


def _spend_key(key: tuple) -> tuple:
    use_case, provider, model = key
    return use_case or UNATTRIBUTED, _given(provider), _given(model)


def _token_sum(column: Callable[[str], Iterable[Any]], name: str) -> int:
    """The sum of one token count over a batch, summed in C when every value is an int (as most are)."""
    try:
        total = sum(filter(None, column(name)))
    except TypeError:
        total = None
    if type(total) is int:
        return total
    # Validated by the exact path, a count may still be "12", " 12 " or 12.0: read as UsageEvent reads it.
    return sum(_COUNT.validate_python(value) for value in map(_given, column(name)) if value is not None)


_COUNT = TypeAdapter(Count)


class _TodaySpend:
    """Token counts accepted today per (use case, provider, model), priced when scraped."""

    def __init__(self, pricer: Pricer, tz):
        self.pricer = pricer
        self.tz = tz
        self._lock = threading.Lock()
        self._day: dt.date | None = None
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

    def add(self, spend: BatchSpend) -> None:
        today = self._today_in_zone()
        with self._lock:
            self._start_day_locked(today)
            for key, counts in spend.tokens.items():
                totals = self._tokens.get(key)
                if totals is None:
                    self._tokens[key] = list(counts)
                else:
                    totals[:] = map(add, totals, counts)
            for use_case, amount in spend.given_cost.items():
                self._given_cost[use_case] += amount

    def _start_day_locked(self, today: dt.date) -> None:
        if today != self._day:
            self._day, self._tokens, self._given_cost = today, {}, defaultdict(Decimal)

    def collect(self):
        family = GaugeMetricFamily("llmcost_collector_spend_today_usd",
                                   "Spend accepted by this collector process today, by use case", labels=["use_case"])
        today = today_in(self.tz)
        with self._lock:
            self._start_day_locked(today)  # yesterday's spend is not today's, even before today's first record
            groups = {key: list(value) for key, value in self._tokens.items()}
            totals: dict[str, Decimal] = defaultdict(Decimal, self._given_cost)
        now = dt.datetime.now(dt.timezone.utc)
        for (use_case, provider, model), counts in groups.items():
            totals[use_case] += self.pricer.price(provider=provider, model=model, ts=now,
                                                  **dict(zip(TOKEN_FIELDS, counts))).cost_usd
        for use_case, amount in sorted(totals.items()):
            family.add_metric([use_case], float(amount))
        yield family


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
