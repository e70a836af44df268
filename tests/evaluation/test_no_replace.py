"""evaluate never replaces earlier results: a new folder each time, or --force (export:
tests/deploy/test_no_replace.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
)


@pytest.fixture
def run(live_run: Path) -> Path:
    return live_run


def test_evaluate_twice_keeps_the_first_results(run):
    invoke(["evaluate", "--checkpoint", run], 0)
    first = (run / "eval" / "metrics.json").read_bytes()
    (run / "eval" / "metrics.json").write_text('{"mine": 1}')  # stands for "earlier results"
    res = invoke(["evaluate", "--checkpoint", run], 0)
    assert json.loads((run / "eval" / "metrics.json").read_text()) == {"mine": 1}
    assert (run / "eval-2" / "metrics.json").read_bytes() == first
    assert "eval-2" in res.stdout


def test_evaluate_out_with_results_is_refused_unless_forced(run, tmp_path):
    out = tmp_path / "mine"
    invoke(["evaluate", "--checkpoint", run, "--out", out], 0)
    (out / "metrics.json").write_text("{}")
    res = invoke(["evaluate", "--checkpoint", run, "--out", out], 2)
    assert "--force" in res.stderr and (out / "metrics.json").read_text() == "{}"
    invoke(["evaluate", "--checkpoint", run, "--out", out, "--force"], 0)
    assert "accuracy" in json.loads((out / "metrics.json").read_text())


def test_evaluating_an_export_writes_beside_not_over(run):
    invoke(["evaluate", "--checkpoint", run], 0)
    invoke(["export", "--format", "onnx", "--checkpoint", run], 0)
    invoke(["evaluate", "--checkpoint", run / "export" / "model.onnx"], 0)
    assert (run / "eval" / "report.html").is_file() and (run / "eval-2" / "report.html").is_file()
    info = json.loads((run / "eval-2" / "metrics.json").read_text())
    assert info["source"].startswith(str(run / "splits.csv"))  # the run was found from export/
