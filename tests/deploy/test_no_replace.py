"""export never replaces an earlier export: a new folder each time, or --force (evaluate:
tests/evaluation/test_no_replace.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
)


@pytest.fixture
def run(live_run: Path) -> Path:
    return live_run


def test_second_export_does_not_replace_the_first(run):
    invoke(["export", "--format", "onnx", "--checkpoint", run], 0)
    first = run / "export" / "model.onnx"
    stamp = first.stat().st_mtime_ns
    res = invoke(["export", "--format", "onnx", "--checkpoint", run], 0)
    assert first.stat().st_mtime_ns == stamp
    assert (run / "export-2" / "model.onnx").is_file() and "export-2" in res.stdout
    res = invoke(["export", "--format", "onnx", "--checkpoint", run, "--out", first], 2)
    assert "--force" in res.stderr and first.stat().st_mtime_ns == stamp
    invoke(["export", "--format", "onnx", "--checkpoint", run, "--out", first, "--force"], 0)
    assert first.stat().st_mtime_ns != stamp
