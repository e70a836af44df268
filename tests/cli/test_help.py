"""`--help` teaches the tool: -h, choices, defaults (or the config key), panels, examples."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mobiletune.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "220", "TERMINAL_WIDTH": "220"}  # one line per option: easy to grep
COMMANDS = ("train", "finetune", "predict", "evaluate", "export", "profile", "check-data",
            "explain")


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "-h"], env=WIDE)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_h_and_shows_examples(command):
    text = _help(command)
    assert f"Usage: mobiletune {command}" in text
    assert "Examples" in text and f"mobiletune {command} " in text.split("Examples", 1)[1]
    assert "{" not in text.split("\n\n", 2)[1]  # the usage line: PATH..., not {paths}...


def test_root_takes_h():
    assert "train" in _help() and "check-data" in _help()


def test_choices_and_defaults_are_listed():
    text = _help("train")
    assert "mobilenet_v2|mobilenet_v3_small|mobilenet_v3_large" in text
    assert "auto|cpu|cuda|mps" in text
    for key in ("train.epochs", "train.lr", "data.batch_size", "model.arch", "device"):
        assert f"from config: {key}" in text
    for panel in ("Model", "Data", "Training", "Output"):
        assert f"─ {panel} " in text
    assert "onnx|torchscript" in _help("export")
    assert "default: 32" in _help("evaluate")  # --batch-size: a fixed default is shown


def test_a_wrong_choice_names_the_choices():
    res = runner.invoke(app, ["train", "--device", "gpu"], env=WIDE)
    assert res.exit_code == 2
    assert "'auto', 'cpu', 'cuda', 'mps'" in res.output
