"""Benchmarks of the fastnn backends and the report that renders them.

    uv run pytest --benchmark-only --benchmark-autosave -q   # run bench/, save the run under .benchmarks/
    uv run python -m bench.report                            # markdown table + chart of the newest run
"""
