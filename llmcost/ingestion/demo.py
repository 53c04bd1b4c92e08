"""A realistic demo store for a first look, written through the real path: journal files and the
fallback log on disk, then ingestion."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from pathlib import Path

from llmcost.config import Settings
from llmcost.ingestion.run import IngestResult, ingest
from llmcost.lines import encode_line
from llmcost.sdk import fallback
from llmcost.store import connection as store

TENANTS = ("northside-high", "riverdale-academy", "oak-park-district", "summit-charter")
USE_CASES = ("content_analyzer", "auto_populate", "chat_tutor", "scaffolder")
# (provider, model, weight): real model names that the bundled price table knows, and one it does not.
MODELS = (
    ("openai", "gpt-4o-mini", 30),
    ("openai", "gpt-4o", 8),
    ("anthropic", "claude-3-5-haiku-latest", 12),
    ("anthropic", "claude-sonnet-4-5", 6),
    ("x-ai", "grok-2", 10),
    ("x-ai", "grok-3-mini", 10),
    ("google", "gemini-2.0-flash", 12),
    ("self-hosted", "tutor-ft-llama-70b", 2),
)
ACCOUNTS = (("student", 40), ("lesson_builder", 10), ("admin", 4), ("super_admin", 1))
SPIKE_DAYS_AGO = 3  # one day above the $10 warning level


def _users(rng: random.Random) -> list[tuple[str, str, str]]:
    users = []
    for account_type, count in ACCOUNTS:
        for n in range(count):
            users.append((f"{account_type.replace('_', '-')}-{n + 1:03d}", rng.choice(TENANTS), account_type))
    return users


def _event(rng: random.Random, when: dt.datetime, user, use_case: str, model_row, big: bool = False) -> dict:
    provider, model, _ = model_row
    user_id, tenant_id, account_type = user
    input_tokens = rng.randint(40_000, 90_000) if big else int(rng.lognormvariate(6.8, 0.7))
    output_tokens = rng.randint(1_500, 4_000) if big else int(rng.lognormvariate(5.6, 0.6))
    cache_read = int(input_tokens * rng.choice((0, 0, 0.3, 0.6))) if provider in ("openai", "anthropic") else 0
    reasoning = int(output_tokens * 0.4) if model == "grok-3-mini" else 0
    failed = rng.random() < 0.015
    event = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "ts": when.isoformat(),
        "user_id": user_id,
        "tenant_id": tenant_id,
        "use_case": use_case,
        "account_type": account_type,
        "provider": provider,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "reasoning_tokens": reasoning,
        "estimated_tokens": int((input_tokens + output_tokens) * rng.uniform(0.85, 1.3)),
        "latency_ms": round(rng.uniform(300, 9000), 1),
        "status": "error" if failed else "ok",
        "source": "demo",
    }
    if failed:
        event["error"] = rng.choice(("APITimeoutError: Request timed out.", "RateLimitError: 429 Too Many Requests"))
        event["usage_estimated"] = True
    event["attempt_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
    return event


def _attempt(event: dict) -> dict:
    return {
        "record": "attempt",
        "attempt_id": event["attempt_id"],
        "ts": event["ts"],
        **{k: event[k] for k in ("user_id", "tenant_id", "use_case", "account_type", "provider", "model",
                                 "estimated_tokens")},
        "source": "demo",
    }


def demo_records(days: int, seed: int, now: dt.datetime) -> tuple[list[dict], list[dict], list[dict]]:
    """(journal records, fallback events that will be recovered, fallback events that cannot be)."""
    rng = random.Random(seed)
    users = _users(rng)
    weights = [w for _, _, w in MODELS]
    user_weights = [8 if a == "student" else 3 for _, _, a in users]
    journal, recovered, broken = [], [], []
    start = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    for day_index in range(days):
        day_start = start + dt.timedelta(days=day_index)
        weekend = day_start.weekday() >= 5
        calls = rng.randint(60, 110) if weekend else rng.randint(180, 320)
        for _ in range(calls):
            when = day_start + dt.timedelta(seconds=rng.randint(7 * 3600, 22 * 3600))
            if when > now:
                continue
            user = rng.choices(users, user_weights)[0]
            event = _event(rng, when, user, rng.choice(USE_CASES), rng.choices(MODELS, weights)[0])
            journal.extend((_attempt(event), event))
        if day_index == days - 1 - SPIKE_DAYS_AGO:
            builder = next(u for u in users if u[2] == "lesson_builder")
            for _ in range(90):
                when = day_start + dt.timedelta(seconds=rng.randint(9 * 3600, 17 * 3600))
                event = _event(rng, when, builder, "content_analyzer", MODELS[3], big=True)
                journal.extend((_attempt(event), event))
    # The fallback log: calls whose journal write failed. Most carry a whole event and are recovered
    # by ingestion; two are damaged (a truncated token figure) and stay visible as failed logs.
    events = [r for r in journal if "record" not in r]  # few or none on a first day before 07:00
    for event in rng.sample(events, min(6, len(events))):
        journal.remove(event)
        recovered.append(event)
    events = [r for r in journal if "record" not in r]
    for event in rng.sample(events, min(2, len(events))):
        journal.remove(event)
        damaged = dict(event, input_tokens="12\u2026", output_tokens=None)
        broken.append(damaged)
    # Two attempts that never completed: the integrity page lists them as potentially unlogged.
    for _ in range(2):
        when = now - dt.timedelta(minutes=rng.randint(5, 90))
        user = rng.choice(users)
        journal.append({"record": "attempt", "attempt_id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "ts": when.isoformat(), "user_id": user[0], "tenant_id": user[1],
                        "use_case": "chat_tutor", "account_type": user[2], "provider": "openai",
                        "model": "gpt-4o-mini", "estimated_tokens": 1_200, "source": "demo"})
    return journal, recovered, broken


def event_count(settings: Settings) -> int:
    """Events in the store (0 when there is no store yet)."""
    with store.reading(settings.db_path) as db:
        if db is None:
            return 0
        return db.execute("SELECT count(*) FROM usage_events").fetchall()[0][0]


def store_is_empty(settings: Settings) -> bool:
    return event_count(settings) == 0


def load_demo(settings: Settings, days: int = 30, seed: int = 7, now: dt.datetime | None = None) -> IngestResult:
    """Write demo journal and fallback-log files under the data folder and ingest them."""
    if days < 1:
        raise ValueError("days must be at least 1")
    settings.ensure_dirs()
    now = now or dt.datetime.now(dt.timezone.utc)
    journal, recovered, broken = demo_records(days, seed, now)
    demo_file = Path(settings.journal_dir) / f"demo-seed{seed}-{days}d.jsonl"
    if not demo_file.exists():
        demo_file.write_bytes(b"".join(encode_line(r) for r in journal))
        for event in recovered:
            fallback.append(settings.fallback_log, event, "OSError: [Errno 28] No space left on device", fsync=False)
        for event in broken:
            fallback.append(settings.fallback_log, event, "OSError: [Errno 5] Input/output error (journal disk)",
                            fsync=False)
    return ingest(settings, [demo_file] + ([settings.fallback_log] if settings.fallback_log.exists() else []))
