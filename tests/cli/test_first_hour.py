"""What a new user met in their first hour (issue 18), each kept fixed: output that survives
a pipe, `latest` after an early Ctrl-C, check-data agreeing with train, one option name and
one vocabulary for results, honest calibration, and the small things that confused them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mobiletune.cli.train_cmd import summary
from mobiletune.evaluation.report import _short
from tests.conftest import make_folder, tiny_config
from tests.helpers_robust import invoke, write_config
from tests.helpers_runs import make_live_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data", per_class=6, size=40)


def test_piped_output_keeps_long_paths_on_one_line(tmp_path):
    run = make_live_run(tmp_path)
    deep = tmp_path / ("a-folder-with-a-rather-long-name-" * 3) / "holiday-photos-2026"
    deep.mkdir(parents=True)
    image = sorted((tmp_path / "data" / "val").rglob("*.jpg"))[0]
    copy = deep / "a-photo-with-a-long-descriptive-file-name.jpg"
    copy.write_bytes(image.read_bytes())
    res = subprocess.run([sys.executable, "-m", "mobiletune", "predict", str(deep),
                          "--checkpoint", str(run)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(str(copy)) > 120
    assert any(str(copy) in line for line in res.stdout.splitlines()), res.stdout


def test_piped_training_output_has_no_blank_lines_between_epochs(tmp_path, folder):
    cfg = tiny_config(tmp_path, folder, train={"epochs": 3})  # cached, as by default
    res = subprocess.run([sys.executable, "-m", "mobiletune", "train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("head ")]
    assert len(epochs) == 3 and epochs == list(range(epochs[0], epochs[0] + 3)), res.stderr
    assert sum(line.startswith("stage: head") for line in lines) == 1  # one table per stage


def test_ctrl_c_before_the_first_epoch_leaves_latest_on_the_last_good_run(tmp_path, folder,
                                                                            monkeypatch):
    cfg = write_config(tmp_path, folder)
    invoke(["train", "--config", cfg], 0)
    latest = tmp_path / "runs" / "latest"
    assert latest.resolve() == (tmp_path / "runs" / "t").resolve()
    from mobiletune.training import run as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit_stage", interrupted)
    invoke(["train", "--config", cfg], 130)
    assert (tmp_path / "runs" / "t-2").is_dir()  # kept: its last.pt resumes it
    assert latest.resolve() == (tmp_path / "runs" / "t").resolve()
    monkeypatch.undo()
    res = invoke(["predict", str(folder), "--checkpoint", latest], 0)
    assert "model: " in res.stderr and "best.pt (pytorch)" in res.stderr  # predict says so


def test_check_data_refuses_what_train_refuses(tmp_path):
    one = make_folder(tmp_path / "one", classes=("cats",), per_class=4, size=40)
    res = invoke(["check-data", one], 1)
    assert "at least 2" in res.output and "clean" not in res.output


def test_one_option_name_for_which_run(tmp_path, folder):
    cfg = write_config(tmp_path, folder)
    invoke(["train", "--config", cfg], 0)
    run = tmp_path / "runs" / "t"
    invoke(["predict", str(folder), "--from", run], 0)  # --checkpoint's other name
    invoke(["finetune", "--checkpoint", run, "--unfreeze", "1", "--epochs", "1"], 0)
    invoke(["evaluate", "--from", run, "--out", tmp_path / "ev"], 0)
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_predict_json_explain_json_and_the_api_share_names(tmp_path):
    import mobiletune

    run = make_live_run(tmp_path)
    image = sorted((tmp_path / "data" / "val").rglob("*.jpg"))[0]
    line = json.loads(invoke(["predict", str(image), "--checkpoint", run, "--json"],
                             0).stdout.splitlines()[0])
    api = mobiletune.load(run).predict(str(image))[0]
    assert line["label"] == api.label and line["score"] == pytest.approx(api.score, abs=1e-6)
    assert line["top_k"][0]["score"] == line["score"]
    assert line["confidence"] == line["score"] and line["top_k"][0]["prob"] == line["score"]
    assert api.confidence == api.score  # the old name, for one release
    cam = json.loads(invoke(["explain", str(image), "--checkpoint", run, "--json", "--out",
                             tmp_path / "cams"], 0).stdout.splitlines()[0])
    assert cam["label"] == line["label"] and cam["score"] == pytest.approx(line["score"], abs=1e-4)


def test_calibration_says_what_it_kept_with_three_digits():
    best = {"stage": "head", "epoch": 3, "metrics": {"val_acc": 0.9, "val_loss": 0.3,
                                                     "ece": 0.05, "ece_uncalibrated": 0.06}}
    assert "kept T = 1" in summary({**best, "temperature": 1.0})
    assert "temperature 1.19" in summary({**best, "temperature": 1.1857920608576331})
    assert _short(1.1857920608576331) == "1.19" and _short("x") == "x"


def test_config_yaml_says_auto_and_resume_says_where(tmp_path, folder, monkeypatch):
    cfg = write_config(tmp_path, folder, train={"epochs": None})
    cfg.write_text(cfg.read_text().replace("epochs: null", "epochs: auto"))
    from mobiletune.training import stage

    monkeypatch.setitem(stage.AUTO_HEAD, "cap", 2)
    invoke(["train", "--config", cfg], 0)
    stored = yaml.safe_load((tmp_path / "runs" / "t" / "config.yaml").read_text())
    assert stored["train"]["epochs"] == "auto"
    last = tmp_path / "runs" / "t" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["resume"]["stage_index"] = 0  # as if stopped after its first epoch
    ckpt["resume"]["state"]["epochs_done"] = 1
    torch.save(ckpt, last)
    res = invoke(["train", "--resume", tmp_path / "runs" / "t"], 0)
    assert "resuming" in res.stderr and "after epoch 1" in res.stderr


def test_help_lists_every_command_in_one_whole_sentence():
    res = subprocess.run([sys.executable, "-m", "mobiletune", "--help"], capture_output=True,
                         text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    rows = [line.strip("│ ").strip() for line in res.stdout.splitlines()
            if line.startswith("│ ") and not line.startswith("│ --")]
    assert len(rows) >= 8, res.stdout
    assert all(row.endswith(".") for row in rows), rows


def test_a_decompression_bomb_is_skipped_without_a_warning(tmp_path):
    """The skip reason says it; PIL's warning on stderr (once per such file) said it again."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (100, 80)).save(big)
    code = ("from pathlib import Path; from PIL import Image; Image.MAX_IMAGE_PIXELS = 5000\n"
            "from mobiletune.data.images import probe\n"
            f"print(probe(Path({str(big)!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert "decompression-bomb" in res.stdout, res.stderr
    assert "Warning" not in res.stderr, res.stderr
