"""Serving the dashboard: `llmcost dashboard` (what `make run` runs) starts Streamlit's server on `app.py`.

`streamlit run app.py` loads pandas, pyarrow, Altair and DuckDB, Streamlit's own lazily loaded parts, and makes the
process's first store connection while the first visitor waits for the first page: the server used 2.0-2.7 s of CPU
during the Overview's first load, 0.65-0.73 s after `warm` (bench/dashboard_load.py --first-only). `serve` does
that work before the server answers, in the same process, so the first visitor waits only for what every visitor
waits for: the page's queries and the browser drawing it.
"""

from __future__ import annotations

import ast
import gc
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from llmcost.errors import LLMCostError

APP = Path(__file__).resolve().parents[2] / "app.py"
# Loaded by Streamlit only when a page first uses them: the emoji catalogue (an icon such as "⚠️"), the
# Material icon names (the pages' icons), the dataframe adapters (the first table).
STREAMLIT_LAZY_MODULES = ("streamlit.emojis", "streamlit.material_icon_names", "streamlit.dataframe.lazy_df_adapters")
# Imported inside the functions that need them, to keep other commands light: the dashboard needs them all.
DASHBOARD_LAZY_MODULES = ("llmcost.control.rebuild", "llmcost.control.state")
# Streamlit says this once for each `st.cache_data` function imported before its runtime exists; the caches
# themselves are made when first called, by then inside the runtime.
_NO_RUNTIME_YET = "No runtime found"


class AppMissingError(LLMCostError):
    """The dashboard's `app.py` is not where this llmcost was installed from."""


def serve(streamlit_args: Sequence[str] = (), app: Path = APP) -> None:
    """Prepare the first page (`warm`), then run Streamlit's server on `app` in this process (blocks)."""
    if not app.is_file():
        raise AppMissingError(
            f"the dashboard's app.py is not at {app}: llmcost dashboard serves the app.py of the checkout llmcost "
            "is installed from (pip install -e .); from elsewhere run `streamlit run path/to/app.py`")
    warm(app)
    from streamlit.web import cli as streamlit_cli

    streamlit_cli.main(["run", str(app), *streamlit_args], prog_name="streamlit")


def warm(app: Path = APP) -> None:
    """Do, once per process, what every page's first run would otherwise do on the first visit."""
    from llmcost.dashboard import legacy_pages

    with _quiet_before_runtime():
        for module in (*page_imports(app), *STREAMLIT_LAZY_MODULES, *DASHBOARD_LAZY_MODULES):
            importlib.import_module(module)
    legacy_pages.start_in_navigation_mode()
    _warm_conversions()
    _warm_store()
    # Streamlit's first element in a process walks the call stack with `inspect`, which on first use maps the file
    # of every loaded module (some 1,500 here); made now, the map is there for the first visitor's run.
    inspect.stack()
    # Streamlit collects garbage after every script run. What is loaded by now lives as long as the process, so it
    # leaves the collector's sight, and each run's collection scans only the objects made since.
    gc.collect()
    gc.freeze()


def page_imports(app: Path = APP) -> list[str]:
    """Every module `app` and the scripts in its `pages/` folder import (`from package import module`
    included), in the order they name them."""
    found: dict[str, None] = {}
    for script in (app, *sorted((app.parent / "pages").glob("*.py"))):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"), filename=str(script))):
            if isinstance(node, ast.Import):
                found.update(dict.fromkeys(alias.name for alias in node.names))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found[node.module] = None
                importlib.import_module(node.module)
                found.update(dict.fromkeys(f"{node.module}.{alias.name}" for alias in node.names
                                           if _is_module(f"{node.module}.{alias.name}")))
    return list(found)


def _is_module(name: str) -> bool:
    parent = importlib.import_module(name.rpartition(".")[0])
    return hasattr(parent, "__path__") and importlib.util.find_spec(name) is not None


def _warm_conversions() -> None:
    # First calls build what later ones reuse: Altair's conversion of a chart (the validator its encodings are
    # checked with as they are built and, for layers sharing their data, its hashing of that data), pandas' CSV
    # writer, Arrow's pandas conversion in Streamlit's tables.
    import altair as alt
    import pandas as pd
    from streamlit import dataframe_util

    from llmcost.dashboard.charts import vega_lite
    from llmcost.store.export import frame_to_csv_bytes

    frame = pd.DataFrame({"day": ["2026-01-01"], "label": ["a"], "cost_usd": [1.0]})
    bars = alt.Chart(frame).mark_bar().encode(x="day:T", y="sum(cost_usd):Q", color="label:N")
    vega_lite(alt.layer(bars, bars.mark_text().encode(text="label:N")))
    frame_to_csv_bytes(frame)
    dataframe_util.convert_anything_to_arrow_bytes(frame)


def _warm_store() -> None:
    """The process's first read-only connection and a row of every column type through Arrow into pandas;
    nothing when the configuration or the store cannot be read (the page then says why)."""
    import duckdb

    from llmcost.config import load_settings
    from llmcost.dashboard.fetch import fetch_frame, run

    try:
        run(load_settings().db_path, fetch_frame, "SELECT * FROM usage_events LIMIT 1")
    except (LLMCostError, duckdb.Error):
        return


@contextmanager
def _quiet_before_runtime() -> Iterator[None]:
    logger = logging.getLogger("streamlit.runtime.caching.cache_data_api")
    drop = _DropMessage(_NO_RUNTIME_YET)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)
