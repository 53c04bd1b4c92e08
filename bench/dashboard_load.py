"""Dashboard page load in a real browser: each page's time to fully rendered against a bare Streamlit page.

Loads the demo data (`llmcost demo`) into a temporary folder, starts `streamlit run app.py` and, in the same run,
`streamlit run` of a bare page (a title and a line of text), each on a fresh server, and drives them with
headless Chromium (Playwright; Debian's /usr/bin/chromium). A page is fully rendered when Streamlit says its
script finished, its heading is there, every chart on show has drawn (a Plotly chart its SVG, a Vega-Lite chart
its canvas or SVG) and every table its canvas.

The dashboard's server is started as `make run` starts it, `llmcost dashboard` (`--launch streamlit`: `streamlit run
app.py`, for a checkout from before that command); the bare page's as Streamlit starts it, `streamlit run`.

For each page: the first load on the fresh server (the Overview, at /, nothing cached in the browser) and then
`--runs` loads, each in a new tab (a new Streamlit session) of one browser profile whose cache a first, uncounted
load filled: the median and the fastest, each as a ratio to the bare page's median measured the same way. Three
reference pages (the bare page plus one small Vega-Lite chart, one small Plotly chart when Plotly is installed, or
one small table) show what Streamlit's frontend alone costs to draw a chart or a table.

    python bench/dashboard_load.py [--runs 5] [--days 30] [--out bench/results/dashboard_load.json] [--app PATH]
        [--launch llmcost|streamlit] [--first-only [--repeats 5]]

`--first-only` measures the first load alone: `--repeats` times a fresh bare server and a fresh dashboard server,
alternately, each first load in a new browser profile; the medians and their ratio, and how long each server
took from its start to answering.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TARGET_RATIO = 2.0
VIEWPORT = {"width": 1400, "height": 1000}
PAGES = (("Overview", ""), ("Use cases", "use_cases"), ("Users and tenants", "users"),
         ("Failed logs", "failed_logs"), ("Integrity", "integrity"), ("Budgets and alerts", "budgets"))
BARE_PAGE = 'import streamlit as st\n\nst.title("Bare")\nst.write("A bare Streamlit page.")\n'
# Floors for reference: the bare page plus one small chart, or one small table. What Streamlit's frontend
# costs to draw them is a floor no page with a chart or a table can go under. The dashboard draws Vega-Lite;
# the Plotly one (when Plotly is installed) shows what it replaced.
REFERENCES = {
    "bare page + one Vega-Lite chart (reference)":
        BARE_PAGE + "import altair as alt\nimport pandas as pd\n\n"
        "st.altair_chart(alt.Chart(pd.DataFrame({'x': [1, 2], 'y': [2, 1]})).mark_bar().encode(x='x:O', y='y:Q'))\n",
    "bare page + one Plotly chart (reference)":
        BARE_PAGE + "import plotly.graph_objects as go\n\nst.plotly_chart(go.Figure(go.Bar(x=[1, 2], y=[2, 1])))\n",
    "bare page + one table (reference)":
        BARE_PAGE + "import pandas as pd\n\nst.dataframe(pd.DataFrame({'x': [1, 2], 'y': [2, 1]}))\n",
}
if importlib.util.find_spec("plotly") is None:
    del REFERENCES["bare page + one Plotly chart (reference)"]
CHARTS = "[data-testid=stPlotlyChart], [data-testid=stVegaLiteChart]"

COUNTS = """() => {
    const shown = (selector) => [...document.querySelectorAll(selector)].filter(e => e.checkVisibility()).length;
    return {charts: shown('CHARTS'), tables: shown('[data-testid=stDataFrame]')};
}""".replace("CHARTS", CHARTS)
# True once the script run finished and everything it drew is on screen.
RENDERED = """(heading) => {
    const app = document.querySelector('[data-testid=stApp]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    const titles = [...document.querySelectorAll('h1')].map(h => h.innerText.trim());
    if (!titles.includes(heading)) return false;
    if (document.querySelector('[data-testid=stSkeleton]')) return false;
    // Only what is on show: a table in a closed expander draws nothing until it is opened.
    const shown = (selector) => [...document.querySelectorAll(selector)].filter(e => e.checkVisibility());
    if (shown('CHARTS').some(c => !c.querySelector('.main-svg, .vega-embed canvas, .vega-embed svg'))) return false;
    return !shown('[data-testid=stDataFrame]').some(t => !t.querySelector('canvas'));
}""".replace("CHARTS", CHARTS)


STATE = """() => ({
    script: document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state'),
    titles: [...document.querySelectorAll('h1')].map(h => h.innerText),
    skeleton: !!document.querySelector('[data-testid=stSkeleton]'),
    charts: [...document.querySelectorAll('CHARTS')].map(c => !!c.querySelector('.main-svg, .vega-embed canvas')),
    tables: [...document.querySelectorAll('[data-testid=stDataFrame]')].map(t => !!t.querySelector('canvas')),
})""".replace("CHARTS", CHARTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(script: Path, cwd: Path, env: dict[str, str], launch: str = "streamlit"
                 ) -> tuple[subprocess.Popen, str]:
    server, url, _ = start_timed_server(script, cwd, env, launch)
    return server, url


def start_timed_server(script: Path, cwd: Path, env: dict[str, str], launch: str = "streamlit"
                       ) -> tuple[subprocess.Popen, str, float]:
    """The server, its URL and the seconds from its start to answering. `launch`: "streamlit" runs
    `streamlit run script`, "llmcost" `llmcost dashboard` (which serves the checkout's own app.py)."""
    port = free_port()
    command = ([sys.executable, "-m", "llmcost", "dashboard"] if launch == "llmcost"
               else [sys.executable, "-m", "streamlit", "run", str(script)])
    started = time.perf_counter()
    server = subprocess.Popen(
        [*command, "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{' '.join(command[2:])} exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return server, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise TimeoutError(f"{' '.join(command[2:])} did not answer within 90 s")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_once(browser, url: str, heading: str, context=None, server_pid: int | None = None) -> dict[str, float]:
    """Seconds from navigation to the heading, and to fully rendered, in a new Streamlit session (a new tab;
    in a new browser profile too, with nothing cached, unless `context` is given). With `server_pid`, also the
    CPU seconds the server and the page's renderer used until then: on a shared machine the wall clock moves
    with everyone else's load, the CPU time much less."""
    own = context is None
    context = context or browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    cdp = None
    if server_pid is not None:
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        server_cpu = cpu_seconds(server_pid)
    try:
        started = time.perf_counter()
        page.goto(url)
        page.get_by_role("heading", name=heading, exact=True).first.wait_for(timeout=60_000)
        heading_s = time.perf_counter() - started
        try:
            page.wait_for_function(RENDERED, arg=heading, timeout=60_000, polling=20)
        except Exception as error:
            raise RuntimeError(f"{url} did not finish rendering: {page.evaluate(STATE)}") from error
        rendered_s = time.perf_counter() - started
        errors = page.locator("[data-testid=stException]").count()
        if errors:
            raise RuntimeError(f"{url} shows {errors} exception(s)")
        found = {"heading_s": heading_s, "rendered_s": rendered_s, **page.evaluate(COUNTS)}
        if cdp is not None:
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            found.update(server_cpu_s=cpu_seconds(server_pid) - server_cpu,
                         renderer_main_thread_cpu_s=metrics["ThreadTime"], renderer_cpu_s=metrics["ProcessTime"])
        return found
    finally:
        page.close()
        if own:
            context.close()


def measure(browser, url: str, heading: str, runs: int) -> dict[str, float]:
    """`runs` loads, each in a new tab of one browser profile: a returning user, static files cached."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        load_once(browser, url, heading, context)  # fills the browser's cache; not counted
        loads = [load_once(browser, url, heading, context) for _ in range(runs)]
    finally:
        context.close()
    rendered = [load["rendered_s"] for load in loads]
    return {"median_s": statistics.median(rendered), "best_s": min(rendered),
            "heading_median_s": statistics.median(load["heading_s"] for load in loads),
            "charts": loads[-1]["charts"], "tables": loads[-1]["tables"]}


def first_loads(browser, work: Path, env: dict[str, str], app: Path, launch: str, repeats: int) -> dict[str, list]:
    """`repeats` first loads of the bare page and of the Overview, alternately, each on a fresh server and in a
    new browser profile, with the seconds each server took from its start to answering."""
    bare_script = work / "bare.py"
    loads: dict[str, list] = {"bare": [], "overview": []}
    for _ in range(repeats):
        for name, script, how, heading in (("bare", bare_script, "streamlit", "Bare"),
                                           ("overview", app, launch, PAGES[0][0])):
            server, url, start_s = start_timed_server(script, work, env, how)
            try:
                loads[name].append({**load_once(browser, url, heading, server_pid=server.pid),
                                    "server_start_s": start_s})
            finally:
                stop(server)
    return loads


def report_first_loads(loads: dict[str, list], args, app: Path) -> None:
    def median(name: str, figure: str) -> float:
        return statistics.median(load[figure] for load in loads[name])

    ratio = median("overview", "rendered_s") / median("bare", "rendered_s")
    print(f"{'first load on a fresh server':<34} {'server start':>13} {'heading':>9} {'rendered':>9}  (medians of "
          f"{args.repeats}; CPU used during the load)")
    for name, title in (("bare", "bare Streamlit page"), ("overview", f"Overview ({args.launch})")):
        print(f"{title:<34} {median(name, 'server_start_s') * 1000:>10.0f} ms {median(name, 'heading_s') * 1000:>6.0f} "
              f"ms {median(name, 'rendered_s') * 1000:>6.0f} ms  CPU: server {median(name, 'server_cpu_s') * 1000:.0f}"
              f" ms, renderer {median(name, 'renderer_cpu_s') * 1000:.0f} ms")
    pairs = [o["rendered_s"] / b["rendered_s"] for b, o in zip(loads["bare"], loads["overview"])]
    print(f"Overview / bare page: {ratio:.2f}x (each repeat: {', '.join(f'{r:.2f}' for r in pairs)}); "
          f"target {TARGET_RATIO:g}x {'met' if ratio <= TARGET_RATIO else 'not met'}")
    result = {"benchmark": "dashboard_first_load", "app": str(app), "launch": args.launch, "repeats": args.repeats,
              "days": args.days, "python": sys.version.split()[0], "cpus": os.cpu_count(), "loads": loads,
              "ratio": ratio, "ratios": pairs, "met": ratio <= TARGET_RATIO}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="loads per page after the first (new sessions)")
    parser.add_argument("--days", type=int, default=30, help="days of demo data")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/dashboard_load.json (dashboard_first_load.json with --first-only)")
    parser.add_argument("--app", type=Path, default=ROOT / "app.py",
                        help="the app.py to serve (another checkout's, to compare before and after)")
    parser.add_argument("--launch", choices=("llmcost", "streamlit"), default="llmcost",
                        help="start the dashboard with `llmcost dashboard` (as `make run` does) or `streamlit run`")
    parser.add_argument("--first-only", action="store_true", help="measure only the first load on a fresh server")
    parser.add_argument("--repeats", type=int, default=5, help="with --first-only: fresh servers of each kind")
    args = parser.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / (
        "dashboard_first_load.json" if args.first_only else "dashboard_load.json")
    app = args.app.resolve()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="llmcost-load-") as folder:
        work = Path(folder)
        # The served checkout's package, whichever one this interpreter has installed.
        env = {**os.environ, "LLMCOST_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(app.parent), os.environ.get("PYTHONPATH")]))}
        env.pop("LLMCOST_DB", None)
        subprocess.run([sys.executable, "-m", "llmcost", "demo", "--days", str(args.days)], env=env, cwd=work,
                       check=True, capture_output=True)
        bare_script = work / "bare.py"
        bare_script.write_text(BARE_PAGE)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            if args.first_only:
                try:
                    loads = first_loads(browser, work, env, app, args.launch, args.repeats)
                finally:
                    browser.close()
                report_first_loads(loads, args, app)
                return
            try:
                bare_server, bare_url = start_server(bare_script, work, env)
                try:
                    bare_first = load_once(browser, bare_url, "Bare")
                    bare = measure(browser, bare_url, "Bare", args.runs)
                finally:
                    stop(bare_server)
                references = {}
                for name, code in REFERENCES.items():
                    script = work / f"reference_{len(references)}.py"
                    script.write_text(code)
                    server, url = start_server(script, work, env)
                    try:
                        references[name] = measure(browser, url, "Bare", args.runs)
                    finally:
                        stop(server)
                app_server, app_url = start_server(app, work, env, args.launch)
                try:
                    first = load_once(browser, app_url, PAGES[0][0])
                    pages = {title: measure(browser, f"{app_url}/{path}", title, args.runs) for title, path in PAGES}
                finally:
                    stop(app_server)
            finally:
                browser.close()

    base = bare["median_s"]
    rows = [{"page": "bare Streamlit page (baseline)", "first_load_s": bare_first["rendered_s"], **bare,
             "ratio": 1.0}]
    rows.append({"page": "Overview, first load on a fresh server", "first_load_s": first["rendered_s"],
                 "median_s": first["rendered_s"], "best_s": first["rendered_s"],
                 "heading_median_s": first["heading_s"], "ratio": first["rendered_s"] / bare_first["rendered_s"]})
    rows += [{"page": title, "first_load_s": None, **figures, "ratio": figures["median_s"] / base}
             for title, figures in pages.items()]
    rows += [{"page": name, "first_load_s": None, **figures, "ratio": figures["median_s"] / base}
             for name, figures in references.items()]
    print(f"{'page':<42} {'heading':>9} {'rendered':>9} {'best':>8} {'vs bare':>8}  charts tables")
    for r in rows:
        print(f"{r['page']:<42} {r['heading_median_s'] * 1000:>6.0f} ms {r['median_s'] * 1000:>6.0f} ms "
              f"{r['best_s'] * 1000:>5.0f} ms {r['ratio']:>7.2f}x  {r.get('charts', '')!s:>6} {r.get('tables', '')!s:>6}")
    targets = [{"target": f"{r['page']} fully rendered within {TARGET_RATIO:g}x a bare Streamlit page",
                "figure": f"{r['median_s'] * 1000:.0f} ms ({r['ratio']:.2f}x of {base * 1000:.0f} ms)"
                if r["first_load_s"] is None else
                f"{r['median_s'] * 1000:.0f} ms ({r['ratio']:.2f}x of the bare page's first load, "
                f"{bare_first['rendered_s'] * 1000:.0f} ms)",
                "met": r["ratio"] <= TARGET_RATIO} for r in rows[1:] if r["page"] not in REFERENCES]
    result = {"benchmark": "dashboard_load", "app": str(app), "runs": args.runs, "days": args.days,
              "python": sys.version.split()[0], "cpus": os.cpu_count(), "rows": rows, "targets": targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
