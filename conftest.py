"""Keep the two suites apart: `pytest` runs tests/ only, `pytest --benchmark-only` runs bench/ only."""


def pytest_collection_modifyitems(config, items):
    benchmarks = bool(config.getoption("benchmark_only", False))
    selected, deselected = [], []
    for item in items:
        (selected if (item.path.parent.name == "bench") == benchmarks else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
