"""The README's first command runs as written on a fresh clone: configs/example.yaml and the
sample photos it points at ship with the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobiletune.config.load import load_config
from mobiletune.data.checkdata import check_data
from tests.conftest import WEIGHTS, needs_shared
from tests.helpers_robust import invoke

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "example.yaml"


def test_the_sample_set_ships_small_licensed_and_clean(monkeypatch):
    monkeypatch.chdir(REPO)  # the config's paths are from the repo root, as the README runs it
    cfg = load_config(CONFIG, [])
    root = REPO / cfg.data.root
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 2 << 20
    assert "MIT" in (REPO / "examples" / "LICENSE").read_text()
    report = check_data(root)
    assert len(report.classes) >= 2 and report.problems == []
    assert cfg.model.arch == "mobilenet_v2"  # the offline weights file's arch


@needs_shared()
@pytest.mark.integration
def test_the_main_job_runs_as_written_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path / "cache"))
    invoke(["train", "--config", CONFIG, "--weights", WEIGHTS, "--out", tmp_path / "runs",
            "-q"], 0)
    assert (tmp_path / "runs" / "produce" / "best.pt").is_file()
