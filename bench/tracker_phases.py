"""Where a tracked call's time goes: a per-phase breakdown of the benchmark's call (`tracker_overhead.py`).

Each phase is a function on the tracked call's path, timed with `perf_counter_ns` by a wrapper that subtracts
the phases it calls (so the rows add up to the whole call); "rest" is what no phase covers (the context
manager, attribute work, the wrappers' own cost, about 0.1 µs each). The control state's rows (admit, settle)
are the SQLite or Redis work; the others are the Python work around it, also measured whole by the same calls
with a control state that admits everything at no cost. Medians of 3,000 calls, fsync off (`--fsync`: on, where
the journal write holds both fsyncs and every other phase runs after a wait for the disk).

    python bench/tracker_phases.py [--calls 3000] [--backend sqlite|redis] [--fsync] [--cprofile] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tracker_overhead import PROMPT, fake_llm_call, start_redis  # noqa: E402

from llmcost.config import load_settings  # noqa: E402
from llmcost.sdk.tracker import Tracker  # noqa: E402

_stack: list[list[int]] = []
_totals: dict[str, list[int]] = {}


def timed(owner, name: str, label: str) -> None:
    """Replace `owner.name` by a wrapper adding its own time (without the timed phases it calls) to `label`."""
    original = getattr(owner, name)
    samples = _totals.setdefault(label, [0])

    def wrapper(*args, **kwargs):
        frame = [0]
        _stack.append(frame)
        start = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = time.perf_counter_ns() - start
            _stack.pop()
            samples[-1] += elapsed - frame[0]
            if _stack:
                _stack[-1][0] += elapsed

    setattr(owner, name, wrapper)


def instrument() -> None:
    """The phases: every function of the tracked call's path whose name says what it does."""
    from llmcost.pricing import rates
    from llmcost.sdk import call, journal, tracker

    timed(call.TrackedCall, "__init__", "call object (estimate, attempt id)")
    timed(tracker.Tracker, "admit", "control: admit")
    timed(tracker.Tracker, "settle", "control: settle")
    timed(rates.Pricer, "price", "pricer.price (estimate and cost)")
    timed(call, "built_event", "event built")
    timed(call, "extract_usage", "usage read")
    timed(call, "local_day", "local day")
    timed(tracker, "journal_line", "event journal line encoded")
    timed(call, "attempt_line", "attempt line encoded") if hasattr(call, "attempt_line") else None
    timed(journal.Journal, "append", "attempt line encoded")
    timed(journal.Journal, "append_lines", "journal write")
    timed(tracker.Tracker, "_register", "register/unregister")
    timed(tracker.Tracker, "_unregister", "register/unregister")


def run(calls: int, tracker: Tracker, record: bool, cpu: list[int] | None = None) -> list[int]:
    whole = []
    for n in range(calls):
        if record:
            for samples in _totals.values():
                samples.append(0)
        response = fake_llm_call()
        cpu_start, start = time.thread_time_ns(), time.perf_counter_ns()
        with tracker.call(use_case="chat_tutor", user_id=f"user-{n % 50}", tenant_id="bench", account_type="admin",
                          provider="openai", model="gpt-4o-mini", prompt=PROMPT) as tracked:
            tracked.record(response)
        whole.append(time.perf_counter_ns() - start)
        if cpu is not None:
            cpu.append(time.thread_time_ns() - cpu_start)
    return whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--fsync", action="store_true", help="each journal line fsynced, as with fsync = true")
    parser.add_argument("--cprofile", action="store_true", help="also print cProfile's top functions")
    parser.add_argument("--tracemalloc", action="store_true", help="also print the allocations per call")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    home = Path(tempfile.mkdtemp(prefix="llmcost-phases-"))
    settings = replace(load_settings(home=home), fsync=args.fsync)
    redis_process = None
    if args.backend == "redis":  # (a throwaway local redis-server, as tracker_overhead.py starts)
        redis_process, redis_url = start_redis()
        if redis_process is None:
            sys.exit("redis-server not found (apt-get install redis-server)")
        settings = replace(settings, control_backend="redis", redis_url=redis_url)
    tracker = Tracker(settings)
    print(f"control backend: {args.backend}")
    try:
        run(300, tracker, record=False)  # warm-up
        cpu: list[int] = []
        plain = run(args.calls, tracker, record=False, cpu=cpu)
        # the same calls with a control state that admits everything at no cost: the Python work around it
        admit, Tracker.admit = Tracker.admit, lambda self, **kwargs: None
        without_control_cpu: list[int] = []
        without_control = run(args.calls, tracker, record=False, cpu=without_control_cpu)
        Tracker.admit = admit
        print(f"whole call p50: {statistics.median(plain) / 1e3:.1f} µs (CPU {statistics.median(cpu) / 1e3:.1f} µs); "
              f"without the control state: {statistics.median(without_control) / 1e3:.1f} µs "
              f"(CPU {statistics.median(without_control_cpu) / 1e3:.1f} µs)")
        instrument()
        for samples in _totals.values():
            samples.clear()
        whole = run(args.calls, tracker, record=True)
        print(f"instrumented: {statistics.median(whole) / 1e3:.1f} µs")
        print(f"{'phase':<40} {'p50 µs':>8} {'mean µs':>8}")
        covered = [0] * args.calls
        for label, samples in _totals.items():
            covered = [c + s for c, s in zip(covered, samples)]
            print(f"{label:<40} {statistics.median(samples) / 1e3:>8.1f} {statistics.fmean(samples) / 1e3:>8.1f}")
        rest = [w - c for w, c in zip(whole, covered)]
        print(f"{'rest (not in a phase)':<40} {statistics.median(rest) / 1e3:>8.1f} {statistics.fmean(rest) / 1e3:>8.1f}")
        if args.cprofile:
            profile = cProfile.Profile()
            profile.runcall(run, args.calls, tracker, False)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        if args.tracemalloc:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            run(args.calls, tracker, record=False)
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            stats = after.compare_to(before, "lineno")
            print("allocations per call (count), top lines:")
            for stat in sorted(stats, key=lambda s: -s.count_diff)[:15]:
                print(f"  {stat.count_diff / args.calls:8.2f}  {stat.traceback}")
    finally:
        tracker.close()
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
