"""The test suite. tests/<folder>/ tests mobiletune/<folder>/; the tests of the root
utilities and of the whole (layers, the first steps, the real-data run) sit here, beside the
shared fixtures (conftest.py) and helpers (helpers_robust.py, helpers_runs.py)."""
