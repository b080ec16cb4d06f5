"""Keep the two suites apart: `pytest` runs tests/ only, `pytest --benchmark-only` runs bench/ only."""


def pytest_ignore_collect(collection_path, config):
    benchmarks = bool(config.getoption("benchmark_only", False))
    if collection_path.name == "bench":
        return not benchmarks
    if collection_path.name == "tests":
        return benchmarks
    return None
