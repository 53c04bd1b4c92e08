"""Screenshots of every dashboard page on the demo data, for the README and docs/dashboard.md.

Loads `llmcost demo` into a temporary folder, serves `app.py` with `streamlit run` and saves a PNG of each page,
fully rendered (the test `bench/dashboard_load.py` uses), with headless Chromium into docs/screenshots/.

    python bench/screenshots.py [--out docs/screenshots] [--width 1280]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dashboard_load import CHROMIUM, CHROMIUM_ARGS, PAGES, RENDERED, ROOT, start_server, stop

SLUGS = {"": "overview"}
MAX_HEIGHT = 6000
CONTENT_HEIGHT = """() => Math.max(...[...document.querySelectorAll(
    '[data-testid=stMain], [data-testid=stMainBlockContainer]')].map(e => e.scrollHeight))"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmcost-screens-") as folder:
        work = Path(folder)
        env = {**os.environ, "LLMCOST_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
        env.pop("LLMCOST_DB", None)
        subprocess.run([sys.executable, "-m", "llmcost", "demo"], env=env, cwd=work, check=True, capture_output=True)
        server, url = start_server(ROOT / "app.py", ROOT, env)  # from the checkout: its .streamlit/config.toml
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                for title, path in PAGES:
                    page.set_viewport_size({"width": args.width, "height": 900})
                    page.goto(f"{url}/{path}")
                    page.wait_for_function(RENDERED, arg=title, timeout=90_000, polling=50)
                    # Streamlit scrolls its main block, not the document: grow the window to the whole page.
                    height = page.evaluate(CONTENT_HEIGHT)
                    page.set_viewport_size({"width": args.width, "height": min(height + 80, MAX_HEIGHT)})
                    page.wait_for_function(RENDERED, arg=title, timeout=90_000, polling=50)
                    page.wait_for_timeout(800)  # charts finish redrawing at the new size
                    target = args.out / f"{SLUGS.get(path, path)}.png"
                    page.screenshot(path=str(target), full_page=True)
                    print(f"{title:<20} {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
                browser.close()
        finally:
            stop(server)


if __name__ == "__main__":
    main()
