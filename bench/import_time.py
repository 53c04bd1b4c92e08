"""Import time of the SDK and the CLI against a bare interpreter, in the same run.

Each figure is the fastest of `--repeat` fresh processes (`python -X importtime` is not used: the wall clock of
the whole process is what an application pays at start). Heavy modules that an application importing only the
SDK must never load are listed per command.

    python bench/import_time.py [--repeat 7] [--out bench-import.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("duckdb", "pandas", "pyarrow", "numpy", "streamlit", "altair")
PROBE = "import sys; {code}; print('heavy:' + ','.join(m for m in {heavy!r} if m in sys.modules))"
CASES = {
    "python -c pass (baseline)": "pass",
    "import llmcost": "import llmcost",
    "from llmcost import Tracker": "from llmcost import Tracker",
    "llmcost --help": "from llmcost.cli import cli; cli(['--help'], standalone_mode=False)",
}


def time_case(code: str, repeat: int) -> tuple[float, list[str]]:
    best, heavy = float("inf"), []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
                              capture_output=True, text=True, check=True)
        best = min(best, time.perf_counter() - started)
        marker = [line for line in done.stdout.splitlines() if line.startswith("heavy:")][-1]
        heavy = [m for m in marker.removeprefix("heavy:").split(",") if m]
    return best, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "import_time.json")
    args = parser.parse_args()
    rows = []
    baseline = None
    for name, code in CASES.items():
        seconds, heavy = time_case(code, args.repeat)
        baseline = baseline or seconds
        rows.append({"case": name, "seconds": seconds, "ratio": seconds / baseline, "heavy_modules": heavy})
    print(f"{'case':<30} {'fastest':>9} {'vs pass':>8}  heavy modules loaded")
    for r in rows:
        print(f"{r['case']:<30} {r['seconds'] * 1000:>7.0f} ms {r['ratio']:>7.1f}x  {', '.join(r['heavy_modules']) or '-'}")
    if args.out:
        args.out.write_text(json.dumps({"repeat": args.repeat, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
