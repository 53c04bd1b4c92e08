"""An application that only tracks calls never loads the store's or the dashboard's heavy libraries."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("duckdb", "pandas", "pyarrow", "numpy", "streamlit", "altair")


def loaded_after(code: str, tmp_path) -> list[str]:
    probe = textwrap.dedent(code) + f"\nimport sys\nprint('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"LLMCOST_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    marker = [line for line in done.stdout.splitlines() if line.startswith("heavy:")][-1]
    return [name for name in marker.removeprefix("heavy:").split(",") if name]


def test_a_tracked_call_loads_no_heavy_library(tmp_path):
    loaded = loaded_after("""
        from llmcost import Tracker
        tracker = Tracker()
        with tracker.call(use_case="chat_tutor", user_id="u1", tenant_id="t1", provider="openai",
                          model="gpt-4o-mini", estimated_tokens=100) as call:
            call.record(input_tokens=120, output_tokens=30)
        tracker.close()
        lines = b"".join(p.read_bytes() for p in tracker.settings.journal_dir.glob("*.jsonl"))
        assert lines.count(b"\\n") == 2, lines  # the attempt and the event
    """, tmp_path)
    assert loaded == []


def test_import_llmcost_and_the_cli_help_load_no_heavy_library(tmp_path):
    assert loaded_after("import llmcost; llmcost.Settings; llmcost.LLMCostError", tmp_path) == []
    assert loaded_after("""
        from llmcost.cli import cli
        cli(["--help"], standalone_mode=False)
    """, tmp_path) == []


def test_the_public_api_resolves_every_name_it_lists():
    import llmcost

    for name in llmcost.__all__:
        assert getattr(llmcost, name) is not None, name
    assert callable(llmcost.ingest) and llmcost.IngestResult.__name__ == "IngestResult"
